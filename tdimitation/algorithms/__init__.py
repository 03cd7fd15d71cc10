"""Imitation and reward-learning algorithms as LightningModules.

Names are imported on first use (module ``__getattr__``): ``from tdimitation.algorithms
import BC`` loads BC's module only, not the adversarial, preference or tabular ones.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# name -> module defining it
_EXPORTS = {
    "AIRL": "adversarial",
    "GAIL": "adversarial",
    "AdversarialImitation": "adversarial",
    "BC": "bc",
    "DemonstrationData": "bc",
    "DAgger": "dagger",
    "MixturePolicy": "dagger",
    "exponential_beta": "dagger",
    "linear_beta": "dagger",
    "Density": "density",
    "MCEIRL": "mce_irl",
    "demonstration_occupancy": "mce_irl",
    "PreferenceComparisons": "preference",
    "SQIL": "sqil",
    "TabularPolicy": "tabular_ops",
    "TabularTensors": "tabular_ops",
    "occupancy_measures": "tabular_ops",
    "soft_value_iteration": "tabular_ops",
}

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
    "Density",
    "MCEIRL",
    "demonstration_occupancy",
    "PreferenceComparisons",
    "SQIL",
    "TabularPolicy",
    "TabularTensors",
    "occupancy_measures",
    "soft_value_iteration",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:
    from tdimitation.algorithms.adversarial import AIRL, GAIL, AdversarialImitation
    from tdimitation.algorithms.bc import BC, DemonstrationData
    from tdimitation.algorithms.dagger import (
        DAgger,
        MixturePolicy,
        exponential_beta,
        linear_beta,
    )
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
