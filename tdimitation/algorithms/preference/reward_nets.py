"""The reward model preference comparisons trains: an MLP or CNN net, or an ensemble."""

from __future__ import annotations

from typing import Any

from tdimitation.envs import GymVecEnv
from tdimitation.errors import PreferenceError
from tdimitation.policies.actors import image_shape_of
from tdimitation.rewards import CNNRewardNet, MLPRewardNet, RewardEnsemble, RewardNet

#: Accepted ``reward_type`` values.
REWARD_TYPES = ("auto", "mlp", "cnn")


def check_reward_settings(reward_type: str, ensemble_size: int | None) -> None:
    """Refuse an unknown ``reward_type`` or an ensemble of fewer than two members."""
    if reward_type not in REWARD_TYPES:
        raise PreferenceError(
            f"unknown reward_type {reward_type!r}; choose one of {list(REWARD_TYPES)}"
        )
    if ensemble_size is not None and ensemble_size < 2:
        raise PreferenceError(
            f"a reward ensemble needs at least 2 members, got ensemble_size={ensemble_size}"
            " (None for a single reward net)"
        )


def build_reward_net(
    env: GymVecEnv, reward_type: str, kwargs: dict[str, Any], ensemble_size: int | None
) -> RewardNet:
    """The reward net for ``env``: ``"auto"`` is a CNN for image observations, else an MLP.

    An MLP net standardises its inputs (``normalize_input=True``) unless ``kwargs`` says
    otherwise; with ``ensemble_size`` the members are built one after another (their
    initial weights differ, drawn from the caller's seeded generator).
    """
    check_reward_settings(reward_type, ensemble_size)
    if reward_type == "auto":
        reward_type = "cnn" if image_shape_of(env) is not None else "mlp"
    if reward_type == "cnn":
        cls, options = CNNRewardNet, kwargs
    else:
        cls, options = MLPRewardNet, {"normalize_input": True} | kwargs
    if ensemble_size:
        return RewardEnsemble([cls.from_env(env, **options) for _ in range(ensemble_size)])
    return cls.from_env(env, **options)
