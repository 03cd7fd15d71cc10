"""DAgger's β schedules: round index -> probability of executing the expert's action.

The built-in schedules (:func:`linear_beta`, :func:`exponential_beta`), and how a schedule
named by an import path is loaded, recorded and checked.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

__all__ = [
    "BetaSchedule",
    "checked_beta",
    "exponential_beta",
    "import_path",
    "import_schedule",
    "linear_beta",
]

#: What a β schedule is: round index -> probability of executing the expert's action.
BetaSchedule = Callable[[int], float]


def linear_beta(round_index: int, rampdown_rounds: int) -> float:
    """β over ``rampdown_rounds`` rounds: 1, (R-1)/R, ..., 1/R, then 0."""
    if rampdown_rounds <= 0:
        raise ValueError(f"rampdown_rounds must be positive, got {rampdown_rounds}")
    return max(0.0, 1.0 - round_index / rampdown_rounds)


def exponential_beta(round_index: int, decay: float) -> float:
    """β = decay ** round, for decay in (0, 1]."""
    if not 0.0 < decay <= 1.0:
        raise ValueError(f"the exponential β decay must be in (0, 1], got {decay}")
    return decay**round_index


def import_schedule(path: str) -> BetaSchedule:
    """The callable named by ``"module:function"`` (or ``"module.function"``)."""
    module_name, _, attr = path.partition(":") if ":" in path else path.rpartition(".")
    if not module_name or not attr:
        raise ValueError(
            f"beta_schedule must be 'linear', 'exponential', an import path "
            f"'module:function' or a callable round -> β, got {path!r}"
        )
    try:
        obj: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise ValueError(
            f"beta_schedule {path!r} cannot be imported ({exc}); name a module-level "
            "callable as 'module:function'"
        ) from None
    if not callable(obj):
        raise ValueError(f"beta_schedule {path!r} names a {type(obj).__name__}, not a callable")
    return obj


def import_path(fn: Any) -> str | None:
    """``"module:qualname"`` if importing it gives back ``fn`` itself, else None.

    Lambdas, closures, partials, callable instances and functions of ``__main__`` have no
    path another process could import.
    """
    module, qualname = getattr(fn, "__module__", None), getattr(fn, "__qualname__", None)
    if not module or not qualname or module == "__main__" or "<" in qualname:
        return None
    path = f"{module}:{qualname}"
    try:
        return path if import_schedule(path) is fn else None
    except ValueError:
        return None


def checked_beta(value: Any, round_index: int) -> float:
    """``value`` as a float β, or a ``ValueError`` naming the round if it is not in [0, 1]."""
    try:
        beta = float(value)
    except (TypeError, ValueError):
        raise ValueError(
            f"the β schedule returned {value!r} for round {round_index}; return a number in [0, 1]"
        ) from None
    if not 0.0 <= beta <= 1.0:  # also refuses NaN
        raise ValueError(
            f"the β schedule returned β={beta} for round {round_index}; β is the probability "
            "of executing the expert's action: return a value in [0, 1]"
        )
    return beta
