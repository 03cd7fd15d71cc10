"""Imitation and reward-learning algorithms as LightningModules."""

from tdimitation.algorithms.adversarial import AIRL, GAIL, AdversarialImitation
from tdimitation.algorithms.bc import BC, DemonstrationData
from tdimitation.algorithms.dagger import DAgger, MixturePolicy, exponential_beta, linear_beta
from tdimitation.algorithms.density import Density
from tdimitation.algorithms.mce_irl import MCEIRL, demonstration_occupancy
from tdimitation.algorithms.preference import PreferenceComparisons
from tdimitation.algorithms.sqil import SQIL
from tdimitation.algorithms.tabular_ops import (
    TabularPolicy,
    TabularTensors,
    occupancy_measures,
    soft_value_iteration,
)

__all__ = [
    "AIRL",
    "GAIL",
    "AdversarialImitation",
    "BC",
    "DemonstrationData",
    "DAgger",
    "Density",
    "MixturePolicy",
    "SQIL",
    "exponential_beta",
    "linear_beta",
    "MCEIRL",
    "demonstration_occupancy",
    "TabularPolicy",
    "TabularTensors",
    "occupancy_measures",
    "soft_value_iteration",
    "PreferenceComparisons",
]
