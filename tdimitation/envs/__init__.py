"""Environments: ``make_env``, the lean vector env, fixed-horizon tasks."""

from tdimitation.envs.factory import as_env_id, make_env
from tdimitation.envs.fixed_horizon import (
    FIXED_HORIZON_ENVS,
    FixedHorizon,
    register_fixed_horizon_envs,
)
from tdimitation.envs.gym_vec import GymVecEnv
from tdimitation.envs.reward_replacement import RewardReplacement
from tdimitation.envs.specs import space_to_spec

register_fixed_horizon_envs()

__all__ = [
    "make_env",
    "as_env_id",
    "GymVecEnv",
    "RewardReplacement",
    "FixedHorizon",
    "FIXED_HORIZON_ENVS",
    "register_fixed_horizon_envs",
    "space_to_spec",
]
