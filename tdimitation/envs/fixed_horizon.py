"""Fixed-horizon episodes: every episode lasts exactly H steps.

Adversarial and preference-based algorithms leak information through episode length when
episodes end early (a discriminator learns "the episode is still going" and a learned
reward's sign decides whether the agent wants to live or die). The standard fix, from the
`seals` benchmark used by `imitation`, is a fixed horizon: after the underlying env
terminates, the episode *absorbs*: the final observation repeats with reward 0 until step
H, where the episode is truncated.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym


class FixedHorizon(gym.Wrapper):
    """Make every episode of ``env`` last exactly ``horizon`` steps.

    Until the underlying env ends, steps pass through unchanged (``terminated`` is masked
    to False). After it ends (terminated or truncated), each step returns the final
    observation again with reward 0, without stepping the underlying env; its ``info``
    holds ``{"absorbing": True}``. At step ``horizon`` the step reports ``truncated=True``.

    It wraps each sub-env inside the vector env (not a torchrl transform), so the fast
    collection path keeps its speed.

    Args:
        env: the environment; build it without a ``TimeLimit`` shorter than ``horizon``
            (``gymnasium.make(id, max_episode_steps=-1)``) unless absorbing at an earlier
            time limit is wanted.
        horizon: episode length H (> 0).
    """

    def __init__(self, env: gym.Env, horizon: int) -> None:
        super().__init__(env)
        if int(horizon) <= 0:
            raise ValueError(f"horizon must be a positive number of steps, got {horizon}")
        self.horizon = int(horizon)
        self._t = 0
        self._absorbing = False
        self._final_obs = None

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        self._t = 0
        self._absorbing = False
        self._final_obs = None
        return self.env.reset(seed=seed, options=options)

    def step(self, action):
        self._t += 1
        if self._absorbing:
            obs, reward, info = self._final_obs, 0.0, {"absorbing": True}
        else:
            obs, reward, terminated, truncated, info = self.env.step(action)
            if terminated or truncated:
                self._absorbing = True
                self._final_obs = obs
        return obs, reward, False, self._t >= self.horizon, info


# Registered fixed-horizon versions of standard tasks: id -> (base id, base kwargs, H).
FIXED_HORIZON_ENVS: dict[str, tuple[str, dict[str, Any], int]] = {
    "tdimitation/CartPoleFixed-v1": ("CartPole-v1", {}, 500),
    "tdimitation/MountainCarFixed-v0": ("MountainCar-v0", {}, 200),
    "tdimitation/MountainCarContinuousFixed-v0": ("MountainCarContinuous-v0", {}, 999),
    "tdimitation/LunarLanderFixed-v3": ("LunarLander-v3", {}, 500),
    "tdimitation/LunarLanderContinuousFixed-v3": ("LunarLander-v3", {"continuous": True}, 500),
    # The seals MuJoCo tasks on gymnasium's v5 models (the `mujoco` extra): the body's
    # position is part of the observation (a reward learned from observations can then see
    # progress), and falling does not end the episode, so all last 1,000 steps.
    **{
        f"tdimitation/{name}Fixed-v5": (
            f"{name}-v5",
            {"exclude_current_positions_from_observation": False}
            | (
                {"terminate_when_unhealthy": False} if name in ("Ant", "Hopper", "Walker2d") else {}
            ),
            1000,
        )
        for name in ("Ant", "HalfCheetah", "Hopper", "Swimmer", "Walker2d")
    },
}


def _make_fixed(base_id: str, base_kwargs: dict[str, Any], horizon: int, **kwargs) -> gym.Env:
    # max_episode_steps=-1 drops the registered TimeLimit; the wrapper sets the horizon.
    env = gym.make(base_id, max_episode_steps=-1, **{**base_kwargs, **kwargs})
    return FixedHorizon(env, horizon)


def register_fixed_horizon_envs() -> None:
    """Register the ids of :data:`FIXED_HORIZON_ENVS` with gymnasium (idempotent)."""
    for env_id, (base_id, base_kwargs, horizon) in FIXED_HORIZON_ENVS.items():
        if env_id in gym.registry:
            continue
        gym.register(
            id=env_id,
            entry_point=_make_fixed,
            kwargs={"base_id": base_id, "base_kwargs": base_kwargs, "horizon": horizon},
            disable_env_checker=True,
        )
