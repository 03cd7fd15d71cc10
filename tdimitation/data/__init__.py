"""Trajectory data: the TED trajectory-set layout, collection, rollouts and storage."""

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
]
