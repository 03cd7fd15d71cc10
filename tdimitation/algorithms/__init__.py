"""Imitation and reward-learning algorithms as LightningModules."""

from tdimitation.algorithms.adversarial import AIRL, GAIL, AdversarialImitation
from tdimitation.algorithms.bc import BC, DemonstrationData
from tdimitation.algorithms.dagger import DAgger, MixturePolicy, exponential_beta, linear_beta
from tdimitation.algorithms.preference import PreferenceComparisons

__all__ = [
    "AIRL",
    "GAIL",
    "AdversarialImitation",
    "BC",
    "DemonstrationData",
    "DAgger",
    "MixturePolicy",
    "exponential_beta",
    "linear_beta",
    "PreferenceComparisons",
]
