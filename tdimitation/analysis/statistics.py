"""Aggregate statistics of scores across runs, with stratified-bootstrap confidence intervals.

The definitions are those of Agarwal et al., "Deep Reinforcement Learning at the Edge of
the Statistical Precipice" (NeurIPS 2021), as published in their ``rliable`` library:

* scores are a matrix ``[runs, tasks]`` (one score per run, e.g. its final return);
* the **IQM** is the 25 % trimmed mean of all scores (``scipy.stats.trim_mean(scores,
  0.25, axis=None)``: ``int(0.25 * n)`` scores cut from each end of the sorted ``n``);
* the **stratified bootstrap** redraws, for every replicate, the runs of each task with
  replacement independently of the other tasks, and the 95 % interval is the percentile
  interval (2.5th and 97.5th percentiles of the replicates' statistic);
* the **probability of improvement** ``P(X > Y)`` on a task is the Mann-Whitney U
  statistic over ``n_x * n_y`` (pairs with ``x > y`` count 1, ties 1/2), averaged over
  tasks; its interval redraws the runs of X and of Y independently.

Replicates are computed in vectorised blocks with a numpy ``Generator`` the caller seeds,
so an analysis repeats exactly for a seed. ``rliable``'s own bootstrap evaluates the
statistic once per replicate in Python: at its default 50,000 replicates one interval of
five runs took 23 s here against 0.03 s for these vectorised blocks, and a table has four
intervals per row. The tests compare these functions with ``rliable.metrics``, with
``rliable``'s bootstrap intervals and with a direct bootstrap loop.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from tdimitation.analysis import DEFAULT_REPS

#: Replicates evaluated at once (bounds the memory of one block).
_BLOCK_ELEMENTS = 4_000_000


def iqm(scores: np.ndarray, axis: int | None = None) -> np.ndarray:
    """Interquartile mean: the mean of the middle half of the scores (25 % cut each end).

    Args:
        scores: scores; with ``axis=None`` all of them, else along ``axis``.
        axis: the axis to aggregate over (None: the flattened array).
    """
    scores = np.asarray(scores, dtype=np.float64)
    if axis is None:
        scores, axis = scores.reshape(-1), 0
    n = scores.shape[axis]
    cut = int(0.25 * n)
    ordered = np.sort(scores, axis=axis)
    return np.take(ordered, np.arange(cut, n - cut), axis=axis).mean(axis=axis)


def mean(scores: np.ndarray, axis: int | None = None) -> np.ndarray:
    """The mean of the scores (all of them, or along ``axis``)."""
    return np.asarray(scores, dtype=np.float64).mean(axis=axis)


#: Aggregates by name, as the analysis table names them.
AGGREGATES: dict[str, Callable[..., np.ndarray]] = {"mean": mean, "iqm": iqm}


def _blocks(reps: int, per_replicate: int) -> list[int]:
    size = max(1, _BLOCK_ELEMENTS // max(1, per_replicate))
    return [min(size, reps - start) for start in range(0, reps, size)]


def stratified_bootstrap(
    scores: np.ndarray,
    aggregate: Callable[..., np.ndarray],
    rng: np.random.Generator,
    reps: int = DEFAULT_REPS,
) -> np.ndarray:
    """Bootstrap replicates of an aggregate over runs, resampling runs within each task.

    Args:
        scores: ``[runs, tasks]`` or ``[runs, tasks, points]`` (a curve per run: a run's
            points are redrawn together).
        aggregate: :func:`iqm` or :func:`mean` (any function taking ``axis``).
        rng: the generator of the draws.
        reps: number of replicates.

    Returns:
        ``[reps]`` replicates (``[reps, points]`` for curves): the aggregate over all runs
        and tasks of each redrawn sample.
    """
    scores = np.asarray(scores, dtype=np.float64)
    runs, tasks = scores.shape[:2]
    rest = scores.shape[2:]
    out = []
    for block in _blocks(reps, scores.size):
        # Run indices per replicate and task: column t only ever picks runs of task t.
        picks = rng.integers(0, runs, size=(block, runs, tasks))
        sample = scores[picks, np.arange(tasks)]  # [block, runs, tasks, *rest]
        out.append(aggregate(sample.reshape(block, runs * tasks, *rest), axis=1))
    return np.concatenate(out)


def percentile_interval(replicates: np.ndarray, size: float = 0.95) -> np.ndarray:
    """The percentile interval of bootstrap replicates: ``[2, ...]`` (lower, upper)."""
    alpha = (1.0 - size) / 2.0
    return np.percentile(replicates, [100 * alpha, 100 * (1 - alpha)], axis=0)


def interval_estimate(
    scores: np.ndarray,
    aggregate: Callable[..., np.ndarray],
    rng: np.random.Generator,
    reps: int = DEFAULT_REPS,
    size: float = 0.95,
) -> tuple[np.ndarray, np.ndarray]:
    """The aggregate of ``scores`` and its stratified-bootstrap percentile interval.

    ``scores`` is ``[runs, tasks]`` (a point estimate and ``[2]`` interval) or ``[runs,
    tasks, points]`` (``[points]`` and ``[2, points]``).
    """
    scores = np.asarray(scores, dtype=np.float64)
    flat = scores.reshape(-1, *scores.shape[2:])
    point = aggregate(flat, axis=0)
    replicates = stratified_bootstrap(scores, aggregate, rng, reps)
    return point, percentile_interval(replicates, size)


def _improvement(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """P(X > Y) (ties 1/2) over the last two axes' pairs: ``x [..., nx]``, ``y [..., ny]``."""
    greater = (x[..., :, None] > y[..., None, :]).mean(axis=(-2, -1))
    ties = (x[..., :, None] == y[..., None, :]).mean(axis=(-2, -1))
    return greater + 0.5 * ties


def probability_of_improvement(scores_x: np.ndarray, scores_y: np.ndarray) -> float:
    """P(X > Y) on each task (``[runs_x, tasks]`` and ``[runs_y, tasks]``), averaged."""
    x = np.asarray(scores_x, dtype=np.float64)
    y = np.asarray(scores_y, dtype=np.float64)
    return float(np.mean([_improvement(x[:, t], y[:, t]) for t in range(x.shape[1])]))


def improvement_interval(
    scores_x: np.ndarray,
    scores_y: np.ndarray,
    rng: np.random.Generator,
    reps: int = DEFAULT_REPS,
    size: float = 0.95,
) -> tuple[float, np.ndarray]:
    """P(X > Y) and its interval: the runs of X and of Y redrawn independently per task."""
    x = np.asarray(scores_x, dtype=np.float64)
    y = np.asarray(scores_y, dtype=np.float64)
    (nx, tasks), ny = x.shape, y.shape[0]
    out = []
    for block in _blocks(reps, nx * ny * tasks):
        per_task = []
        for t in range(tasks):
            xs = x[rng.integers(0, nx, size=(block, nx)), t]
            ys = y[rng.integers(0, ny, size=(block, ny)), t]
            per_task.append(_improvement(xs, ys))
        out.append(np.mean(per_task, axis=0))
    return probability_of_improvement(x, y), percentile_interval(np.concatenate(out), size)


__all__ = [
    "AGGREGATES",
    "DEFAULT_REPS",
    "improvement_interval",
    "interval_estimate",
    "iqm",
    "mean",
    "percentile_interval",
    "probability_of_improvement",
    "stratified_bootstrap",
]
