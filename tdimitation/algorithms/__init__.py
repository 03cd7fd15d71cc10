"""Imitation and reward-learning algorithms as LightningModules."""

from tdimitation.algorithms.bc import BC, DemonstrationData
from tdimitation.algorithms.dagger import DAgger, MixturePolicy, exponential_beta, linear_beta

__all__ = [
    "BC",
    "DemonstrationData",
    "DAgger",
    "MixturePolicy",
    "exponential_beta",
    "linear_beta",
]
