"""Exceptions raised for bad input.

Every error a user can cause derives from :class:`TdimitationError`, so the command line
can print its one-line message without a traceback, and also from ``ValueError`` (bad
values) or ``OSError`` (files), so ordinary ``except`` clauses catch it. Code raises the
specific classes below, never the base class itself.
"""

from __future__ import annotations


class TdimitationError(Exception):
    """Base class of errors caused by bad input; the message names the problem and the fix."""


class TrajectoryError(TdimitationError, ValueError):
    """A trajectory set is malformed: empty, NaN/inf, wrong keys, or inconsistent episodes."""


class TrajectoryFileError(TdimitationError, OSError):
    """A trajectory file or dataset directory is missing, corrupted or of an unknown format."""


class SpaceMismatchError(TdimitationError, ValueError):
    """Data or a policy does not match an environment's observation or action space."""


class EnvCreationError(TdimitationError, ValueError):
    """An environment cannot be created (unknown id, missing extra, bad option)."""


class PolicyError(TdimitationError, ValueError):
    """A policy specification cannot be resolved or loaded."""


class HorizonError(TrajectoryError):
    """Episodes of different lengths where an algorithm needs one fixed horizon."""


class CheckpointError(TdimitationError, OSError):
    """A checkpoint is missing, unreadable, or not one of a tdimitation training run."""


class TrackingError(TdimitationError, ValueError):
    """A run record cannot be found or read: an unknown MLflow run or experiment, no run to
    resume, a bad filter.
    """


class VideoError(TdimitationError, ValueError):
    """A video cannot be written: unknown file type, missing writer, or no RGB frames."""


class NetworkError(TdimitationError, ValueError):
    """A network builder or normaliser got an invalid option (activation, sizes, decay)."""


class LossError(TdimitationError, ValueError):
    """A loss module is misconfigured or got batches it cannot use."""


class ReplayBufferError(TdimitationError, ValueError):
    """A replay buffer was configured where an algorithm owns its buffers (SQIL)."""


class PreferenceError(TdimitationError, ValueError):
    """Preference comparisons got bad input: schedule, labels, fragments, budgets, ensembles."""


class FragmentError(PreferenceError):
    """Fragments cannot be drawn: no episode is at least as long as the fragment length."""


__all__ = [
    "TdimitationError",
    "TrajectoryError",
    "TrajectoryFileError",
    "SpaceMismatchError",
    "EnvCreationError",
    "PolicyError",
    "HorizonError",
    "CheckpointError",
    "VideoError",
    "NetworkError",
    "LossError",
    "ReplayBufferError",
    "PreferenceError",
    "FragmentError",
]


class TabularModelError(TdimitationError, ValueError):
    """Inconsistent tabular matrices, or an env that is not a finite-horizon tabular model."""


class MCEIRLError(TdimitationError, ValueError):
    """MCE IRL demonstrations it cannot use (see the message: discount, one-hot, shapes)."""


__all__ += ["TabularModelError", "MCEIRLError"]


class BudgetError(TdimitationError, ValueError):
    """A training budget is invalid, used up, or contradicted by the Trainer's own limits."""


class FitConfigError(TdimitationError, ValueError):
    """A ``tdimitation fit`` recipe or option cannot be used (unknown key, bad value, YAML)."""


__all__ += ["BudgetError", "FitConfigError"]
__all__ += ["TrackingError"]


class LabellingError(TdimitationError, ValueError):
    """The labelling store or server got bad input: database URL, session, labeller, query."""


__all__ += ["LabellingError"]


class StrategyError(TdimitationError, ValueError):
    """A Trainer strategy the algorithm cannot train under (e.g. several processes)."""


__all__ += ["StrategyError"]


class SweepError(TdimitationError, ValueError):
    """A hyperparameter sweep got bad input: search space, seeds, trial counts, metric."""


class SweepClusterError(TdimitationError, OSError):
    """The Ray cluster a sweep was pointed at cannot be reached or does not answer."""


__all__ += ["SweepError", "SweepClusterError"]
