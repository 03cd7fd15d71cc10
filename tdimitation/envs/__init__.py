"""Environments: ``make_env``, the lean vector env, fixed-horizon tasks, tabular models."""

from tdimitation.envs.factory import as_env_id, make_env
from tdimitation.envs.fixed_horizon import (
    FIXED_HORIZON_ENVS,
    FixedHorizon,
    register_fixed_horizon_envs,
)
from tdimitation.envs.gym_vec import GymVecEnv
from tdimitation.envs.reward_replacement import RewardReplacement
from tdimitation.envs.specs import space_to_spec
from tdimitation.envs.tabular import (
    TABULAR_ENVS,
    CliffWorld,
    TabularModel,
    random_mdp,
    register_tabular_envs,
    tabular_model,
)

register_fixed_horizon_envs()
register_tabular_envs()

__all__ = [
    "make_env",
    "as_env_id",
    "GymVecEnv",
    "RewardReplacement",
    "FixedHorizon",
    "FIXED_HORIZON_ENVS",
    "register_fixed_horizon_envs",
    "space_to_spec",
    "TabularModel",
    "CliffWorld",
    "random_mdp",
    "TABULAR_ENVS",
    "register_tabular_envs",
    "tabular_model",
]
