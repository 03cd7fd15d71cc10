"""A tiny image task for CNN policies: ``make_env("tests.rl.image_envs:CueImageEnv")``.

Each step shows a 1x10x10 ``uint8`` image (channels first, as Atari frame stacks) with a
bright 3x3 cue in the left or the right half; action 0 is rewarded when the cue is on the
left, action 1 when it is on the right. Episodes last ``length`` steps. A policy that
reads the image earns ``length`` per episode; one that ignores it earns half of that on
average.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np


class CueImageEnv(gym.Env):
    def __init__(self, length: int = 8, channels_last: bool = False) -> None:
        self.length = length
        self.channels_last = channels_last
        shape = (10, 10, 1) if channels_last else (1, 10, 10)
        self.observation_space = gym.spaces.Box(0, 255, shape, np.uint8)
        self.action_space = gym.spaces.Discrete(2)
        self._side = 0
        self._t = 0

    def _image(self) -> np.ndarray:
        image = np.zeros((10, 10), np.uint8)
        column = 1 if self._side == 0 else 6
        image[4:7, column : column + 3] = 255
        return image[:, :, None] if self.channels_last else image[None]

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self._t = 0
        self._side = int(self.np_random.integers(2))
        return self._image(), {}

    def step(self, action):
        reward = float(int(action) == self._side)
        self._t += 1
        self._side = int(self.np_random.integers(2))
        return self._image(), reward, False, self._t >= self.length, {}
