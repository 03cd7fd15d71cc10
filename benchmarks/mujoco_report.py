"""The MuJoCo benchmark's report: its table and learning curves, from its results lines.

``benchmarks/mujoco.py`` runs the benchmark and calls these; the trials and sampled-action
scripts read the same lines. Each cell's ratio divides by the return of the expert it
learnt from. An expert made again on another kind of CPU can return something else (its
floating-point rounding differs, and a fit amplifies it): the table then lists each
expert beside the number of cells measured against it, and scores every cell against
its own.
"""

from __future__ import annotations

import statistics
from pathlib import Path

import numpy as np

TASKS = {
    "ant": "tdimitation/AntFixed-v5",
    "halfcheetah": "tdimitation/HalfCheetahFixed-v5",
    "hopper": "tdimitation/HopperFixed-v5",
    "swimmer": "tdimitation/SwimmerFixed-v5",
    "walker2d": "tdimitation/Walker2dFixed-v5",
}
ALGORITHMS = ("bc", "dagger", "gail", "airl")
#: imitation's published ratios of imitation return to expert return (its paper's table).
PUBLISHED = {
    "bc": {"ant": 0.81, "halfcheetah": 0.99, "hopper": 0.85, "swimmer": 0.95, "walker2d": 0.94},
    "gail": {"ant": 0.88, "halfcheetah": 0.87, "hopper": 1.02, "swimmer": 0.99, "walker2d": 0.99},
    "airl": {
        "ant": -0.05,
        "halfcheetah": 0.99,
        "hopper": 1.02,
        "swimmer": 0.93,
        "walker2d": 0.27,
    },
}


def expert_return(row: dict) -> float:
    """The expert return a cell's or trial's ratio divides by.

    Lines recorded before it was kept carry it implicitly, as return over ratio.
    """
    return row["expert_return"] if "expert_return" in row else row["return_mean"] / row["ratio"]


def expert_id(expert_return: float) -> float:
    """An expert's identity in the results: its return, rounded past the last digits a
    ratio's division can change."""
    return round(expert_return, 6)


def _interval(ratios: list[float], labels: tuple[str, ...]) -> str:
    """IQM over seeds and its stratified-bootstrap 95 % CI, as ``tdimitation analyze``."""
    from tdimitation.analysis.statistics import interval_estimate, iqm
    from tdimitation.analysis.table import rng_for

    if len(ratios) < 2:
        return ""
    scores = np.asarray(ratios, dtype=float).reshape(-1, 1)  # [seeds, 1 task]
    point, (low, high) = interval_estimate(scores, iqm, rng_for(0, "iqm", *labels))
    return f"{float(point):.2f} [{float(low):.2f}, {float(high):.2f}]"


def _cells(rows: list[dict], algorithm: str, task: str) -> list[dict]:
    found = (
        r for r in rows if r["stage"] == "cell" and (r["algorithm"], r["task"]) == (algorithm, task)
    )
    return sorted(found, key=lambda r: r["seed"])


def experts_in_use(rows: list[dict]) -> dict[str, dict[float, tuple[dict, dict, int]]]:
    """Per task and :func:`expert_id`, each expert the table's cells were measured
    against: (its newest expert line, the demonstrations made from it, number of cells).
    The newest expert is listed even with no cells: cells run from now on use it.
    """
    found: dict[str, dict[float, tuple[dict, dict, int]]] = {}
    for task in TASKS:
        made = [r for r in rows if r["stage"] == "expert" and r["task"] == task]
        experts = {expert_id(r["return_mean"]): r for r in made}  # each id's newest line
        if not experts:
            continue
        demos = {
            expert_id(r["expert_return_mean"]): r
            for r in rows
            if r["stage"] == "demos" and r["task"] == task
        }
        used = {key: 0 for key in experts}
        for r in rows:
            if r["stage"] == "cell" and r["task"] == task:
                used[expert_id(expert_return(r))] += 1
        newest = expert_id(made[-1]["return_mean"])
        found[task] = {
            key: (e, demos.get(key, {}), used[key])
            for key, e in experts.items()
            if used[key] or key == newest
        }
    return found


def table(rows: list[dict]) -> str:
    in_use = experts_in_use(rows)
    tasks = list(in_use)
    lines = [
        "| task | expert return | episodes | random return | expert frames | expert fit s "
        "| cells measured against it |",
        "|---|---|---|---|---|---|---|",
    ]
    for t in tasks:
        for e, d, used in in_use[t].values():
            random_return = f"{d['random_return_mean']:.1f}" if d else ""
            lines.append(
                f"| {t} | {e['return_mean']:.1f} ± {e['return_std']:.1f} | {e['episodes']} | "
                f"{random_return} | {e['frames']:,} | {e['fit_seconds']:.0f} | {used} |"
            )
    lines += [
        "",
        "| algorithm | task | seeds | ratio mean (per seed) | IQM [95 % CI] | "
        "imitation | normalised IQM [95 % CI] | cell wall s (mean) | frames to 0.9 expert |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for algorithm in ALGORITHMS:
        for t in tasks:
            cells = _cells(rows, algorithm, t)
            if not cells:
                continue
            ratios = [c["ratio"] for c in cells]
            # Normalised score: the random policy's return 0, the cell's own expert's 1.
            normalised = []
            for c in cells:
                e, d, _ = in_use[t][expert_id(expert_return(c))]
                floor = d["random_return_mean"]
                normalised.append((c["return_mean"] - floor) / (e["return_mean"] - floor))
            n_experts = len({expert_id(expert_return(c)) for c in cells})
            seeds = f"{len(cells)}" + (f" ({n_experts} experts)" if n_experts > 1 else "")
            reach = [c.get("frames_to_0.9_expert") for c in cells]
            reach_text = (
                " / ".join("never" if f is None else f"{f:,}" for f in reach)
                if algorithm in ("gail", "airl")
                else ""
            )
            published = PUBLISHED.get(algorithm, {}).get(t)
            published_text = "" if published is None else f"{published:.2f}"
            if algorithm == "dagger":
                published_text = "about 1.0"  # imitation gives DAgger as about 1.0 on every task
            lines.append(
                f"| {algorithm} | {t} | {seeds} | {statistics.mean(ratios):.3f} "
                f"({' / '.join(f'{x:.2f}' for x in ratios)}) | "
                f"{_interval(ratios, (algorithm, t))} | "
                f"{published_text} | {_interval(normalised, ('normalised', algorithm, t))} | "
                f"{statistics.mean(c['process_seconds'] for c in cells):.0f} | {reach_text} |"
            )
    dates = sorted({r["date"] for r in rows})
    return (
        "\n".join(lines) + f"\n\nRuns of {', '.join(dates)}; generated by `benchmarks/mujoco.py`.\n"
    )


def plot_learning_curves(rows: list[dict], out: Path) -> list[Path]:
    """Per task, the expert's, GAIL's and AIRL's return against frames (IQM across seeds
    with its 95 % band, as ``tdimitation analyze`` draws them), from the recorded curves."""
    from tdimitation.analysis.curves import CURVE_REPS, curve_across_runs, plot_curves

    runs: dict[tuple[str, str, str, str], list] = {}
    # Each task's expert drawn once: the one most of its cells were measured against.
    experts = [max(e.values(), key=lambda x: x[2])[0] for e in experts_in_use(rows).values()]
    latest = {(r["task"], r["algorithm"], r["seed"]): r for r in rows if r["stage"] == "cell"}
    for row in [*experts, *latest.values()]:
        curve = row.get("curve")
        if curve is None or curve["x_axis"] != "frames":  # BC and DAgger count no frames
            continue
        group = "ppo expert" if row["stage"] == "expert" else row["algorithm"]
        key = (TASKS[row["task"]], group, curve["metric"], curve["x_axis"])
        runs.setdefault(key, []).append((np.array(curve["x"]), np.array(curve["y"])))
    curves = [
        curve_across_runs(group, env, metric, x_axis, points, seed=0, reps=CURVE_REPS)
        for (env, group, metric, x_axis), points in sorted(runs.items())
    ]
    out.mkdir(parents=True, exist_ok=True)
    return plot_curves([c for c in curves if c is not None], out)
