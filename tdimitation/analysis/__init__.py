"""Statistics of finished runs: ``tdimitation analyze`` (see docs/analyze.md).

:func:`analyze` reads the runs of the MLflow store and returns the table, the comparison
and the learning curves; :mod:`~tdimitation.analysis.statistics` holds the IQM, the
stratified bootstrap and the probability of improvement. Names are imported on first use,
so the command line's ``--help`` loads no numpy.
"""

from __future__ import annotations

import importlib
from typing import Any

#: rliable's default number of bootstrap replicates, ours too.
DEFAULT_REPS = 50_000

_LAZY = {"ANALYZE_EXPERIMENT": "command", "Analysis": "command", "analyze": "command"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["ANALYZE_EXPERIMENT", "DEFAULT_REPS", "Analysis", "analyze"]
