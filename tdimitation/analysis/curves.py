"""Learning curves across seeds: the IQM of the runs' returns with a 95 % band, per env.

Each run's curve is the first return metric of :data:`tdimitation.runrecord.CURVES` that
every run of its group logged (``eval/return_mean`` where runs evaluate periodically,
else the training episodes' return), against environment frames where all runs logged
them (else the first other x-axis of :data:`~tdimitation.runrecord.X_AXES` they share, else
the step). Curves are interpolated onto 100 common points over the range every run
covers; at each point the IQM across runs and its stratified-bootstrap interval (runs
redrawn whole, so a replicate is a set of curves) give the line and the band.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tdimitation.analysis.statistics import interval_estimate, iqm
from tdimitation.analysis.store import RunScore
from tdimitation.analysis.table import grouped, rng_for
from tdimitation.runrecord import CURVES, X_AXES
from tdimitation.utils import atomic_path

#: Points of the common grid the runs' curves are interpolated onto.
GRID_POINTS = 100
#: Bootstrap replicates of the bands (at most): enough for a plot, at a fraction of the cost.
CURVE_REPS = 5_000


@dataclass
class Curve:
    """A group's curve on one env: the IQM across runs and its 95 % band at ``x``."""

    group: str
    env: str
    metric: str
    x_axis: str
    runs: int
    x: np.ndarray
    iqm: np.ndarray
    low: np.ndarray
    high: np.ndarray


def _history(client, run_id: str, key: str) -> dict[int, float]:
    return {m.step: m.value for m in client.get_metric_history(run_id, key)}


def _shared(
    histories: list[dict[str, dict[int, float]]], keys: Sequence[str], points: int
) -> str | None:
    """The first of ``keys`` every run logged at ``points`` steps or more."""
    return next((k for k in keys if all(len(h.get(k, {})) >= points for h in histories)), None)


def run_points(history: dict[int, float], x_at: dict[int, float]) -> tuple[np.ndarray, np.ndarray]:
    """A run's curve as sorted ``(x, value)`` arrays from its metric and x-axis histories.

    Several values at one x (an evaluation at the step of the last training round): the
    later one.
    """
    points: dict[float, float] = {}
    for step in sorted(history):
        points[float(x_at.get(step, step))] = history[step]
    xs = np.array(sorted(points))
    return xs, np.array([points[x] for x in xs])


def curve_across_runs(
    group: str,
    env: str,
    metric: str,
    x_axis: str,
    runs: Sequence[tuple[np.ndarray, np.ndarray]],
    seed: int,
    reps: int,
) -> Curve | None:
    """The IQM curve and 95 % band of runs given as ``(x, value)`` arrays.

    None when the runs share no range of x or one has fewer than two points.
    """
    if any(len(xs) < 2 for xs, _ in runs):
        return None
    start = max(xs[0] for xs, _ in runs)
    stop = min(xs[-1] for xs, _ in runs)
    if not stop > start:
        return None
    grid = np.linspace(start, stop, GRID_POINTS)
    values = np.stack([np.interp(grid, xs, ys) for xs, ys in runs])[:, None, :]
    point, (low, high) = interval_estimate(
        values, iqm, rng_for(seed, "curve", group, env), min(reps, CURVE_REPS)
    )
    return Curve(group, env, metric, x_axis, len(runs), grid, point, low, high)


def group_curve(
    client, group: str, env: str, runs: Sequence[RunScore], seed: int, reps: int
) -> Curve | None:
    """The curve of one group on one env; None when its runs share no curve of 2+ points."""
    histories = [{key: _history(client, r.run_id, key) for key in (*CURVES, *X_AXES)} for r in runs]
    metric = _shared(histories, CURVES, 2)
    if metric is None:
        return None
    x_axis = _shared(histories, X_AXES, 1) or "step"
    points = [run_points(h[metric], h.get(x_axis, {})) for h in histories]
    return curve_across_runs(group, env, metric, x_axis, points, seed, reps)


def learning_curves(
    client, scores: Sequence[RunScore], seed: int, reps: int
) -> tuple[list[Curve], list[str]]:
    """The curve of every group on every env, and notes on the groups without one."""
    curves, notes = [], []
    for (group, env), runs in grouped(scores).items():
        curve = group_curve(client, group, env, runs, seed, reps)
        if curve is None:
            notes.append(
                f"{group} on {env}: no learning curve (its runs share no return metric "
                "logged at two points or more)"
            )
        else:
            curves.append(curve)
    return curves, notes


def plot_curves(curves: Sequence[Curve], directory: str | Path) -> list[Path]:
    """One PNG per env (``learning_curve_<env>.png``): each group's IQM line and band."""
    # Matplotlib's object interface with the Agg canvas: no pyplot, no global backend.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    by_env: dict[str, list[Curve]] = {}
    for curve in curves:
        by_env.setdefault(curve.env, []).append(curve)
    paths = []
    for env, env_curves in sorted(by_env.items()):
        figure = Figure(figsize=(7, 4), dpi=100)
        FigureCanvasAgg(figure)
        axes = figure.add_subplot()
        for curve in env_curves:
            (line,) = axes.plot(
                curve.x, curve.iqm, label=f"{curve.group} ({curve.runs} runs, {curve.metric})"
            )
            axes.fill_between(curve.x, curve.low, curve.high, color=line.get_color(), alpha=0.25)
        axes.set_xlabel(", ".join(sorted({c.x_axis for c in env_curves})))
        axes.set_ylabel("return: IQM across runs, 95% CI")
        axes.set_title(env)
        axes.grid(alpha=0.3)
        axes.legend()
        figure.tight_layout()
        path = Path(directory) / f"learning_curve_{env.replace('/', '-').replace(':', '-')}.png"
        with atomic_path(path) as tmp:
            figure.savefig(tmp, format="png")
        paths.append(path)
    return paths


__all__ = [
    "CURVE_REPS",
    "GRID_POINTS",
    "Curve",
    "curve_across_runs",
    "group_curve",
    "learning_curves",
    "plot_curves",
    "run_points",
]
