"""Shared fixtures: small real gymnasium environments with known behaviour."""

from __future__ import annotations

from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

torch.set_num_threads(1)

ANCHORS = Path(__file__).resolve().parents[2] / "shared" / "anchors" / "imitation_testdata"


class FixedLengthEnv(gym.Env):
    """Episodes of exactly ``length`` steps; the observation counts steps from 0.

    Reward is the action taken, so returns are easy to predict.
    """

    def __init__(self, length: int, obs_offset: float = 0.0) -> None:
        self.length = length
        self.obs_offset = obs_offset
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (1,), np.float32)
        self.action_space = gym.spaces.Discrete(2)
        self.t = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.array([self.obs_offset], np.float32), {}

    def step(self, action):
        self.t += 1
        obs = np.array([self.obs_offset + self.t], np.float32)
        return obs, float(action), self.t >= self.length, False, {}


class DictObsEnv(gym.Env):
    """Dict observations with two keys of different shapes and dtypes; 4-step episodes."""

    def __init__(self) -> None:
        self.observation_space = gym.spaces.Dict(
            {
                "position": gym.spaces.Box(-10, 10, (2,), np.float64),
                "counter": gym.spaces.Box(0, 100, (1,), np.int64),
            }
        )
        self.action_space = gym.spaces.MultiDiscrete([3, 2])
        self.t = 0

    def _obs(self):
        return {
            "position": np.array([self.t, -self.t], np.float64),
            "counter": np.array([self.t], np.int64),
        }

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self._obs(), {}

    def step(self, action):
        self.t += 1
        return self._obs(), float(np.sum(action)), self.t >= 4, False, {}


@pytest.fixture
def anchors() -> Path:
    if not ANCHORS.is_dir():
        pytest.skip("../shared/anchors is not present")
    return ANCHORS
