"""Policies: TensorDict modules reading ``observation`` and writing ``action``."""

from tdimitation.policies.actors import (
    CategoricalActor,
    GaussianActor,
    MLPActor,
    QValueActor,
    TanhNormalActor,
    build_actor,
)
from tdimitation.policies.adapters import (
    EpsilonGreedyQPolicy,
    TorchRLCriticEnsemble,
    TorchRLPolicy,
    TorchRLQValues,
    TorchRLValue,
)
from tdimitation.policies.base import (
    CallablePolicy,
    FunctionPolicy,
    RandomPolicy,
    ZeroPolicy,
    as_policy,
    policy_from_function,
)
from tdimitation.policies.registry import (
    POLICY_LOADERS,
    load_policy,
    policy_from_string,
    register_policy_loader,
    save_policy,
)

__all__ = [
    "CategoricalActor",
    "GaussianActor",
    "MLPActor",
    "QValueActor",
    "TanhNormalActor",
    "build_actor",
    "TorchRLCriticEnsemble",
    "TorchRLPolicy",
    "TorchRLQValues",
    "EpsilonGreedyQPolicy",
    "TorchRLValue",
    "CallablePolicy",
    "FunctionPolicy",
    "RandomPolicy",
    "ZeroPolicy",
    "as_policy",
    "policy_from_function",
    "POLICY_LOADERS",
    "load_policy",
    "policy_from_string",
    "register_policy_loader",
    "save_policy",
]

from tdimitation.policies import sb3 as _sb3  # noqa: F401,E402  (registers the sb3-* loaders)
