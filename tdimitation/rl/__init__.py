"""Reinforcement learning that trains experts and generators, as LightningModules."""

from tdimitation.rl.base import (
    CollectorDataset,
    OnlineAlgorithm,
    buffer_state,
    episode_metrics,
    load_buffer_state,
)

__all__ = [
    "CollectorDataset",
    "OnlineAlgorithm",
    "buffer_state",
    "episode_metrics",
    "load_buffer_state",
]
