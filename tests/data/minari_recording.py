"""Record real Minari datasets with ``minari.DataCollector`` and what was collected.

The expected trajectory set is built here step by step from what the env returned, with
no code of ``tdimitation.data``, so loading a dataset can be compared with it.
"""

from __future__ import annotations

import contextlib
import gc
import warnings
from collections.abc import Iterator

import gymnasium as gym
import numpy as np
import torch
from tensordict import TensorDict


@contextlib.contextmanager
def quiet_minari() -> Iterator[None]:
    """Silence Minari's warnings about metadata left empty (author, e-mail, ...)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning, module=r"minari\b")
        yield


class DictObsEnv(gym.Env):
    """A small env with a nested Dict observation (Box float, Discrete, uint8 Box).

    Episodes terminate when action 0 is taken after step 3 and are truncated at step 6
    by the env itself (and at 8 by a TimeLimit), so both endings occur.
    """

    observation_space = gym.spaces.Dict(
        {
            "pos": gym.spaces.Box(-1.0, 1.0, (2,), np.float32),
            "count": gym.spaces.Discrete(10),
            "inner": gym.spaces.Dict({"img": gym.spaces.Box(0, 255, (3, 3), np.uint8)}),
        }
    )
    action_space = gym.spaces.Discrete(3)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self._obs(), {}

    def _obs(self):
        return {
            "pos": self.np_random.uniform(-1, 1, 2).astype(np.float32),
            "count": self.t,
            "inner": {"img": self.np_random.integers(0, 255, (3, 3), dtype=np.uint8)},
        }

    def step(self, action):
        self.t += 1
        return self._obs(), float(action) - 0.5, self.t >= 4 and action == 0, self.t >= 6, {}


def _as_tensor(values: list, dtype: torch.dtype):
    if isinstance(values[0], dict):
        return {k: _as_tensor([v[k] for v in values], dtype_of(values[0][k])) for k in values[0]}
    return torch.as_tensor(np.stack([np.asarray(v) for v in values])).to(dtype)


def dtype_of(value) -> torch.dtype:
    if isinstance(value, dict):
        return torch.float32  # unused for dicts
    arr = np.asarray(value)
    if arr.dtype == np.uint8:
        return torch.uint8
    if np.issubdtype(arr.dtype, np.integer):
        return torch.int64
    return torch.float32


def record(env: gym.Env, dataset_id: str, episodes: int, seed: int = 0, **create_kwargs):
    """Collect ``episodes`` random episodes into a Minari dataset.

    Returns:
        ``(dataset, expected)``: the ``MinariDataset`` and the trajectory set built from
        what the env returned.
    """
    import minari

    collector = minari.DataCollector(env)
    collector.action_space.seed(seed)
    rows: dict[str, list] = {
        k: [] for k in ("obs", "next", "act", "rew", "term", "trunc", "episode")
    }
    for e in range(episodes):
        obs, _ = collector.reset(seed=seed + e)
        while True:
            action = collector.action_space.sample()
            nxt, reward, terminated, truncated, _ = collector.step(action)
            rows["obs"].append(obs)
            rows["next"].append(nxt)
            rows["act"].append(action)
            rows["rew"].append(reward)
            rows["term"].append(terminated)
            rows["trunc"].append(truncated)
            rows["episode"].append(e)
            obs = nxt
            if terminated or truncated:
                break
    # minari 0.5.4 drops its TemporaryDirectory objects without cleanup() (create_dataset
    # replaces the collector's one; close() deletes it with rmtree), so their finalizers
    # warn when they are collected: collect them here, where the warning is expected.
    with quiet_minari(), warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        try:
            dataset = collector.create_dataset(dataset_id, algorithm_name="random", **create_kwargs)
        finally:
            collector.close()
            del collector
            gc.collect()
    n = len(rows["act"])
    obs_dtype = dtype_of(rows["obs"][0])
    terminated = torch.tensor(rows["term"]).reshape(n, 1)
    truncated = torch.tensor(rows["trunc"]).reshape(n, 1)
    expected = TensorDict(
        {
            "observation": _as_tensor(rows["obs"], obs_dtype),
            "action": torch.tensor(np.array(rows["act"]), dtype=torch.int64),
            "next": {
                "observation": _as_tensor(rows["next"], obs_dtype),
                "reward": torch.tensor(rows["rew"], dtype=torch.float32).reshape(n, 1),
                "terminated": terminated,
                "truncated": truncated,
                "done": terminated | truncated,
            },
            "episode": torch.tensor(rows["episode"]),
        },
        batch_size=[n],
    )
    return dataset, expected
