"""Environments written the way a user writes them, importable as entry points.

``make_env("tests.envs.user_envs:CounterEnv", env_kwargs={"length": 3})`` imports them.
Importing this module also registers ``tdimitation-test/UserCounter-v0`` (as a user's
package registering its envs on import would).
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np


class CounterEnv(gym.Env):
    """Episodes of ``length`` steps; the observation counts steps. No ``render_mode``."""

    def __init__(self, length: int = 5) -> None:
        self.length = int(length)
        self.observation_space = gym.spaces.Box(0, np.inf, (1,), np.float32)
        self.action_space = gym.spaces.Discrete(2)
        self.t = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.zeros(1, np.float32), {}

    def step(self, action):
        self.t += 1
        return np.array([self.t], np.float32), float(action), self.t >= self.length, False, {}


class NoArgsEnv(CounterEnv):
    """A constructor that takes no arguments at all: 3-step episodes."""

    def __init__(self) -> None:
        super().__init__(length=3)


class RenderingEnv(CounterEnv):
    """Accepts ``render_mode``; renders a 4x4 frame whose value is the step count."""

    metadata = {"render_modes": ["rgb_array"]}

    def __init__(self, length: int = 5, render_mode: str | None = None) -> None:
        super().__init__(length)
        self.render_mode = render_mode

    def render(self):
        return np.full((4, 4, 3), self.t, np.uint8)


def make_counter(length: int = 5) -> gym.Env:
    """A factory function returning an env."""
    return CounterEnv(length)


def not_an_env(length: int = 5):
    return {"length": length}


def broken(size: int = 1) -> gym.Env:
    raise ValueError(f"size must be at least 2,\ngot {size}")


NOT_CALLABLE = 42

gym.register("tdimitation-test/UserCounter-v0", entry_point=CounterEnv, kwargs={"length": 4})


class NoSpacesEnv(gym.Env):
    """Forgets to set its spaces (a common first mistake)."""

    def reset(self, *, seed=None, options=None):
        return np.zeros(1, np.float32), {}


class TextObsEnv(CounterEnv):
    """An observation space tdimitation cannot store."""

    def __init__(self) -> None:
        super().__init__()
        self.observation_space = gym.spaces.Text(5)


class TrackedEnv(CounterEnv):
    """Records whether it was closed."""

    instances: list[TrackedEnv] = []

    def __init__(self, length: int = 5) -> None:
        super().__init__(length)
        self.closed = False
        TrackedEnv.instances.append(self)

    def close(self) -> None:
        self.closed = True
