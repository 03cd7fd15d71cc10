"""Atari games with the usual preprocessing, as one gymnasium env per sub-env.

``make_env("tdimitation.envs.atari:atari_env", env_kwargs={"game": "ALE/Pong-v5"})``
builds each sub-env as: the ALE game without its own frame skipping, then gymnasium's
``AtariPreprocessing`` (random no-op starts, max-pooled frame skip, grayscale, resize to
84x84) and ``FrameStackObservation`` (the last 4 frames). Observations are ``uint8``
``(4, 84, 84)`` (channels first), as the Nature-DQN and the image encoders expect. The
emulator and the game ROMs come with the ``ale-py`` package and the resize with OpenCV:
``pip install 'tdimitation[atari]'``.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym

from tdimitation.errors import EnvCreationError

_INSTALL_HINT = "install them with pip install 'tdimitation[atari]' (ale-py and OpenCV)"


def atari_env(
    game: str = "ALE/Pong-v5",
    frame_skip: int = 4,
    screen_size: int = 84,
    frame_stack: int = 4,
    noop_max: int = 30,
    terminal_on_life_loss: bool = False,
    render_mode: str | None = None,
    **game_kwargs: Any,
) -> gym.Env:
    """One preprocessed Atari game (see the module docstring).

    Args:
        game: an ALE id, e.g. ``"ALE/Pong-v5"`` (sticky actions, the v5 default) or
            ``"PongNoFrameskip-v4"``.
        frame_skip: emulator frames per agent step (the max of the last two is observed).
        screen_size: side of the square grayscale frame.
        frame_stack: frames stacked into one observation.
        noop_max: most no-op actions after a reset (random starts).
        terminal_on_life_loss: end the episode when a life is lost.
        render_mode: passed to the game (``"rgb_array"`` to record videos).
        **game_kwargs: other arguments of the game, e.g. ``repeat_action_probability``.

    Raises:
        EnvCreationError: ale-py or OpenCV is missing, or ``game`` is not an ALE id.
    """
    try:
        import ale_py
    except ImportError:
        raise EnvCreationError(f"Atari games need the ale-py package: {_INSTALL_HINT}") from None
    gym.register_envs(ale_py)  # registers the ALE/... ids (a no-op once done)
    try:
        spec = gym.spec(game)
    except gym.error.Error:
        raise EnvCreationError(
            f"unknown Atari game {game!r}: name an ALE id such as 'ALE/Pong-v5' or "
            "'PongNoFrameskip-v4'"
        ) from None
    if spec.entry_point != "ale_py.env:AtariEnv":
        raise EnvCreationError(f"{game!r} is not an Atari game of ale-py (ALE/<Game>-v5)")
    # AtariPreprocessing skips frames itself (max-pooling the last two): the game must not.
    env = gym.make(
        game,
        frameskip=1,
        render_mode=render_mode,
        disable_env_checker=True,
        **game_kwargs,
    )
    try:
        env = gym.wrappers.AtariPreprocessing(
            env,
            noop_max=noop_max,
            frame_skip=frame_skip,
            screen_size=screen_size,
            terminal_on_life_loss=terminal_on_life_loss,
            grayscale_obs=True,
            scale_obs=False,
        )
    except gym.error.DependencyNotInstalled:
        env.close()
        raise EnvCreationError(f"Atari preprocessing needs OpenCV: {_INSTALL_HINT}") from None
    return gym.wrappers.FrameStackObservation(env, frame_stack)


__all__ = ["atari_env"]
