"""Trajectory data: the TED trajectory-set layout, collection, rollouts and storage."""

from __future__ import annotations

import importlib
from typing import Any

from tdimitation.data.collector import VecCollector
from tdimitation.data.rollout import rollout
from tdimitation.data.trajectory import (
    check_matches_env,
    check_trajectories,
    concat_trajectories,
    discounted_returns,
    episode_lengths,
    episode_returns,
    flatten_trajectories,
    num_episodes,
    pad_trajectories,
    rollout_stats,
    split_trajectories,
)

__all__ = [
    "VecCollector",
    "rollout",
    "check_matches_env",
    "check_trajectories",
    "concat_trajectories",
    "discounted_returns",
    "episode_lengths",
    "episode_returns",
    "flatten_trajectories",
    "num_episodes",
    "pad_trajectories",
    "rollout_stats",
    "split_trajectories",
    "load_trajectories",
    "save_trajectories",
    "load_minari",
    "save_minari",
]

# Storage is imported on first use: it pulls in pyarrow (~50 ms), which collection and
# training without files do not need.
_LAZY = {
    "load_trajectories": "tdimitation.data.storage",
    "save_trajectories": "tdimitation.data.storage",
    "load_minari": "tdimitation.data.minari",
    "save_minari": "tdimitation.data.minari",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
