"""Reinforcement learning that trains experts and generators, as LightningModules."""

from tdimitation.rl.base import (
    OnlineAlgorithm,
    buffer_state,
    episode_metrics,
    load_buffer_state,
)
from tdimitation.rl.dqn import DQN, QLearningLoss
from tdimitation.rl.ppo import PPO
from tdimitation.rl.sac import SAC, DiscreteSoftActorCriticLoss, SoftActorCriticLoss

__all__ = [
    "OnlineAlgorithm",
    "buffer_state",
    "episode_metrics",
    "load_buffer_state",
    "DQN",
    "QLearningLoss",
    "PPO",
    "SAC",
    "SoftActorCriticLoss",
    "DiscreteSoftActorCriticLoss",
]
