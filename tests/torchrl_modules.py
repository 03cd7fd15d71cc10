"""torchrl's own actor and critic modules, built the way a torchrl user builds them."""

from __future__ import annotations

import torch
from tensordict.nn import NormalParamExtractor, TensorDictModule
from torch import nn
from torch.distributions import Categorical
from torchrl.modules import MLP, OneHotCategorical, ProbabilisticActor, TanhNormal, ValueOperator


def discrete_actor(obs_dim: int, n_actions: int, one_hot: bool = False) -> ProbabilisticActor:
    """A categorical ``ProbabilisticActor`` (indices, or one-hot rows with ``one_hot``)."""
    logits = TensorDictModule(
        MLP(in_features=obs_dim, out_features=n_actions, num_cells=[32, 32]),
        in_keys=["observation"],
        out_keys=["logits"],
    )
    return ProbabilisticActor(
        logits,
        in_keys=["logits"],
        distribution_class=OneHotCategorical if one_hot else Categorical,
        return_log_prob=True,
    )


def tanh_normal_actor(obs_dim: int, action_dim: int, low: float, high: float):
    """A squashed-Gaussian ``ProbabilisticActor`` (``NormalParamExtractor`` + ``TanhNormal``)."""
    net = nn.Sequential(
        MLP(in_features=obs_dim, out_features=2 * action_dim, num_cells=[32, 32]),
        NormalParamExtractor(),
    )
    params = TensorDictModule(net, in_keys=["observation"], out_keys=["loc", "scale"])
    return ProbabilisticActor(
        params,
        in_keys=["loc", "scale"],
        distribution_class=TanhNormal,
        distribution_kwargs={"low": low, "high": high},
        return_log_prob=True,
    )


def value_operator(obs_dim: int) -> ValueOperator:
    """``V(s)``: a ``ValueOperator`` writing ``state_value``."""
    return ValueOperator(MLP(in_features=obs_dim, out_features=1, num_cells=[32, 32]))


def q_operator(obs_dim: int, action_dim: int) -> ValueOperator:
    """``Q(s, a)``: a ``ValueOperator`` reading the observation and the action."""
    return ValueOperator(
        MLP(in_features=obs_dim + action_dim, out_features=1, num_cells=[32, 32]),
        in_keys=["observation", "action"],
    )


def action_value_operator(obs_dim: int, n_actions: int) -> ValueOperator:
    """``Q(s, .)``: a ``ValueOperator`` writing ``action_value``."""
    return ValueOperator(
        MLP(in_features=obs_dim, out_features=n_actions, num_cells=[32, 32]),
        out_keys=["action_value"],
    )


def flat_parameters(module: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in module.parameters()])
