"""``make_env``: the one way tdimitation builds environments."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Sequence
from typing import Any

import gymnasium as gym
import torch

from tdimitation.envs.fixed_horizon import FixedHorizon, register_fixed_horizon_envs
from tdimitation.envs.gym_vec import GymVecEnv
from tdimitation.errors import EnvCreationError

EnvSource = str | Callable[[], gym.Env] | Sequence[Callable[[], gym.Env]]


def _check_env_id(env_id: str) -> None:
    register_fixed_horizon_envs()
    try:
        gym.spec(env_id)
    except gym.error.Error:
        close = difflib.get_close_matches(env_id, list(gym.registry.keys()), n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise EnvCreationError(
            f"unknown environment id {env_id!r}{hint} (ids are gymnasium registry ids such "
            "as 'CartPole-v1', or tdimitation's fixed-horizon ids such as "
            "'tdimitation/CartPoleFixed-v1')"
        ) from None


def _gym_factory(
    env_id: str,
    *,
    fixed_horizon: int | None,
    max_episode_steps: int | None,
    render_mode: str | None,
    env_kwargs: dict[str, Any],
) -> Callable[[], gym.Env]:
    def factory() -> gym.Env:
        if fixed_horizon is not None:
            # Drop the registered TimeLimit: the horizon wrapper sets the episode length.
            inner = gym.make(
                env_id,
                max_episode_steps=-1,
                render_mode=render_mode,
                disable_env_checker=True,
                **env_kwargs,
            )
            return FixedHorizon(inner, fixed_horizon)
        # Registered envs are trusted: the passive checker only adds a call per step.
        return gym.make(
            env_id,
            max_episode_steps=max_episode_steps,
            render_mode=render_mode,
            disable_env_checker=True,
            **env_kwargs,
        )

    return factory


def make_env(
    env_id: EnvSource,
    num_envs: int = 1,
    *,
    seed: int | None = None,
    fixed_horizon: int | None = None,
    max_episode_steps: int | None = None,
    render_mode: str | None = None,
    device: torch.device | str | None = None,
    env_kwargs: dict[str, Any] | None = None,
) -> GymVecEnv:
    """Build a batched torchrl environment of ``num_envs`` gymnasium sub-envs.

    Args:
        env_id: a gymnasium id (``"CartPole-v1"``), one of tdimitation's fixed-horizon ids
            (``"tdimitation/CartPoleFixed-v1"``, see :data:`FIXED_HORIZON_ENVS`), a factory
            returning a ``gymnasium.Env``, or a list of factories (one per sub-env, which
            sets ``num_envs``).
        num_envs: number of sub-envs stepped together (batch size ``[num_envs]``).
        seed: seed of the first reset; sub-env ``i`` gets ``seed + i``.
        fixed_horizon: if set, every episode lasts exactly this many steps (see
            :class:`FixedHorizon`); the env's own time limit is removed.
        max_episode_steps: override of the registered time limit (ignored with
            ``fixed_horizon``).
        render_mode: passed to ``gymnasium.make`` (``"rgb_array"`` for videos).
        device: device of the returned tensors.
        env_kwargs: extra keyword arguments for ``gymnasium.make``.

    Returns:
        A :class:`GymVecEnv` with batch size ``[num_envs]``.

    Raises:
        EnvCreationError: unknown id (with close matches), a missing optional dependency,
            or a bad option.
    """
    env_kwargs = dict(env_kwargs or {})
    if fixed_horizon is not None and int(fixed_horizon) <= 0:
        raise EnvCreationError(f"fixed_horizon must be a positive step count, got {fixed_horizon}")
    name: str | None = None
    if isinstance(env_id, str):
        _check_env_id(env_id)
        name = env_id
        if int(num_envs) < 1:
            raise EnvCreationError(f"num_envs must be at least 1, got {num_envs}")
        factory = _gym_factory(
            env_id,
            fixed_horizon=fixed_horizon,
            max_episode_steps=max_episode_steps,
            render_mode=render_mode,
            env_kwargs=env_kwargs,
        )
        env_fns = [factory] * int(num_envs)
    elif callable(env_id):
        if int(num_envs) < 1:
            raise EnvCreationError(f"num_envs must be at least 1, got {num_envs}")
        env_fns = [_wrap_factory(env_id, fixed_horizon)] * int(num_envs)
    else:
        env_fns = [_wrap_factory(fn, fixed_horizon) for fn in env_id]
        if not env_fns:
            raise EnvCreationError("an empty list of environment factories was given")
    try:
        return GymVecEnv(env_fns, env_id=name, device=device, seed=seed, env_kwargs=env_kwargs)
    except gym.error.DependencyNotInstalled as err:
        raise EnvCreationError(
            f"{name or 'the environment'} needs an optional dependency: {err} "
            "(install tdimitation's dependencies with the README's install command, or "
            "pip install 'gymnasium[box2d]' / 'gymnasium[mujoco]')"
        ) from None


def _wrap_factory(fn: Callable[[], gym.Env], fixed_horizon: int | None) -> Callable[[], gym.Env]:
    if fixed_horizon is None:
        return fn
    return lambda: FixedHorizon(fn(), fixed_horizon)
