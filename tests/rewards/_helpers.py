"""Shared test helpers: a constant reward net, a constant potential, a tiny image env."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from tdimitation.rewards import RewardNet, register_reward_class


@register_reward_class
class ConstantRewardNet(RewardNet):
    """Reward ``value`` everywhere, plus a trainable offset starting at 0."""

    def __init__(self, value: float, observation_shape=(4,), action_dim=2, discrete_actions=True):
        super().__init__(observation_shape, action_dim, discrete_actions)
        self.value = float(value)
        self.offset = nn.Parameter(torch.zeros(()))
        self._config = {
            "value": self.value,
            "observation_shape": list(self.observation_shape),
            "action_dim": self.action_dim,
            "discrete_actions": self.discrete_actions,
        }

    def used_inputs(self):
        return frozenset({"observation"})

    def reward(self, observation, action, next_observation, done):
        batch = self._batch_shape(observation, None, None, None)
        return torch.full(batch, self.value) + self.offset


class ConstantPotential(nn.Module):
    """Φ ≡ value (not registered: it cannot be saved)."""

    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = value

    def forward(self, observation):
        return torch.full(observation.shape[:-1] + (1,), self.value)


class ImageEnv(gym.Env):
    """uint8 HWC images whose brightness is the step count; 5-step episodes; reward 1."""

    def __init__(self, size: int = 12, channels: int = 3) -> None:
        self.observation_space = gym.spaces.Box(0, 255, (size, size, channels), np.uint8)
        self.action_space = gym.spaces.Discrete(3)
        self.t = 0

    def _obs(self):
        return np.full(self.observation_space.shape, 40 * self.t, np.uint8)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self._obs(), {}

    def step(self, action):
        self.t += 1
        return self._obs(), 1.0, self.t >= 5, False, {}


SMALL_CNN = {
    "hidden_channels": (4, 8),
    "kernel_sizes": (4, 3),
    "strides": (2, 2),
    "hidden_sizes": (16,),
}
