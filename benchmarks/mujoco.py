"""The MuJoCo benchmark: expert, demonstrations, then BC, DAgger, GAIL and AIRL over seeds.

For each task (Ant, HalfCheetah, Hopper, Swimmer, Walker2d with a fixed horizon, as seals
defines them) the pipeline is, each step a whole ``tdimitation`` process as a user runs it:

1. **expert**: ``tdimitation fit --config recipes/ppo/<task>_fixed.yaml``; its return is
   the mean of 50 deterministic episodes (the fit's final evaluation);
2. **demonstrations**: ``tdimitation rollout`` of the expert, 60 deterministic episodes,
   saved as a dataset under ``<data dir>/demonstrations/<task>``, and a random policy's
   return over 50 episodes (the zero of the normalised score); both returns are written
   to ``scores.json`` beside the dataset;
3. **cells**: ``tdimitation fit --config recipes/<algorithm>/<task>_fixed.yaml`` per seed,
   on those demonstrations (DAgger queries the expert's checkpoint), one MLflow run each.

Every finished step appends one JSON line to ``--results`` (default
``benchmarks/results/mujoco.jsonl``, committed), and a step already there is never run
again, so the table can be produced across several sittings. A step stopped half-way
resumes from its newest checkpoint. A cell's MLflow run name carries a fingerprint of
its recipe's settings, so neither a finished run nor a checkpoint of an earlier version of the
recipe stands in for the current one. When a recipe changes, the benchmark names the
cells recorded with the earlier version; they are moved by hand to
``mujoco_superseded.jsonl`` beside the results, with the reason. ``--hours H`` starts
no step after H hours.

The table gives, per algorithm and task, the ratio of imitation return to expert return
(mean over seeds, and the interquartile mean with a stratified-bootstrap 95 % CI computed
as ``tdimitation analyze`` computes them), beside ``imitation``'s published ratios; the
wall time per cell (expert training excluded) and, for GAIL and AIRL, the frames until
the mean return of the training episodes first reaches 0.9 of the expert's.

Results repeat on one machine, not across kinds of CPU: an expert made again on another
kind (a fresh clone has no data directory) can return something else, and so can its
demonstrations. Each cell records the expert return it divides by, and the table
(``benchmarks/mujoco_report.py``) lists every expert beside the number of cells measured
against it.

Examples::

    python benchmarks/mujoco.py --tasks hopper halfcheetah --stages expert demos
    python benchmarks/mujoco.py --algorithms bc gail --seeds 0 1 2 --hours 3
    python benchmarks/mujoco.py --table --write     # the RESULTS.md section, analysis, curves
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml

# This file's name is the simulator's: its directory must not shadow the `mujoco` package
# (torchrl looks it up on import), so run_recipes is loaded by path.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
_spec = importlib.util.spec_from_file_location("run_recipes", _HERE / "run_recipes.py")
_run_recipes = sys.modules["run_recipes"] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_run_recipes)
final_metrics, load_results = _run_recipes.final_metrics, _run_recipes.load_results
write_table, write_section = _run_recipes.write_table, _run_recipes.write_section
_spec = importlib.util.spec_from_file_location("mujoco_report", _HERE / "mujoco_report.py")
_report = sys.modules["mujoco_report"] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_report)
TASKS, ALGORITHMS, PUBLISHED = _report.TASKS, _report.ALGORITHMS, _report.PUBLISHED
expert_return, expert_id, table = _report.expert_return, _report.expert_id, _report.table
plot_learning_curves = _report.plot_learning_curves

ROOT = Path(__file__).resolve().parents[1]
EXPERT_EPISODES, DEMO_EPISODES, RANDOM_EPISODES = 50, 60, 50
#: Points of a run's learning curve kept in its results line (the PNGs are drawn from them).
CURVE_POINTS = 200
EXPERIMENT = "mujoco-benchmark"
CURVES_DIR = ROOT / "benchmarks" / "results" / "mujoco_curves"


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "tdimitation.cli", *args]


def _run(command: list[str], what: str) -> tuple[subprocess.CompletedProcess, float]:
    env = dict(os.environ)
    env.pop("MLFLOW_TRACKING_URI", None)
    started = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        tail = "\n".join((done.stderr or done.stdout).splitlines()[-15:])
        raise RuntimeError(f"{what} failed:\n{tail}")
    return done, time.perf_counter() - started


def _fit(
    recipe: str, run_name: str, data_dir: Path, extra: list[str], experiment: str = EXPERIMENT
) -> tuple[dict, float]:
    """One fit as a whole process, resumed from its own checkpoint if one was left."""
    if finished_run(data_dir, run_name, experiment):  # done by an earlier sitting
        metrics = final_metrics(data_dir, experiment, run_name)
        return metrics, metrics["time/fit_seconds"]
    checkpoint = data_dir / "runs" / experiment / run_name / "last.ckpt"
    resume = ["--ckpt-path", str(checkpoint)] if checkpoint.exists() else []
    command = _cli(
        "fit",
        "--config",
        str(ROOT / "recipes" / f"{recipe}.yaml"),
        "--run.data_dir",
        str(data_dir),
        "--run.experiment",
        experiment,
        "--run.name",
        run_name,
        "--run.video",
        "false",
        *extra,
        *resume,
    )
    _, wall = _run(command, f"{recipe} ({run_name})")
    return final_metrics(data_dir, experiment, run_name), wall


def finished_run(data_dir: Path, run_name: str, experiment: str = EXPERIMENT) -> bool:
    """Whether the benchmark's MLflow store holds a finished run of this name."""
    if not (data_dir / "mlflow.db").exists():
        return False
    from tdimitation.tracking import store_client

    client = store_client(f"sqlite:///{data_dir / 'mlflow.db'}")
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return False
    runs = client.search_runs(
        [found.experiment_id],
        filter_string=f"attributes.run_name = '{run_name}' and attributes.status = 'FINISHED'",
    )
    return bool(runs)


def expert_checkpoint(data_dir: Path, task: str) -> Path:
    return data_dir / "runs" / EXPERIMENT / f"{task}-expert" / "last.ckpt"


def demonstrations_dir(data_dir: Path, task: str) -> Path:
    return data_dir / "demonstrations" / task


def run_expert(task: str, data_dir: Path) -> dict:
    extra = ["--run.eval_episodes", str(EXPERT_EPISODES)]
    metrics, wall = _fit(f"ppo/{task}_fixed", f"{task}-expert", data_dir, extra)
    return {
        "return_mean": metrics["eval/return_mean"],
        "return_std": metrics["eval/return_std"],
        "episodes": int(metrics["eval/n_traj"]),
        "frames": int(metrics["frames"]),
        "fit_seconds": metrics["time/fit_seconds"],
        "process_seconds": wall,
        "curve": curve_record(run_curve(data_dir, f"{task}-expert")),
    }


def run_demonstrations(task: str, data_dir: Path, expert: dict) -> dict:
    env_id, out = TASKS[task], demonstrations_dir(data_dir, task)
    policy = f"tdimitation:{expert_checkpoint(data_dir, task)}"
    # 10 sub-envs finish 60 episodes in whole batches: exactly 60.
    rollout = _cli("rollout", "--env", env_id, "--policy", policy, "--deterministic")
    rollout += ["--num-envs", "10"]
    rollout += ["--episodes", str(DEMO_EPISODES), "--seed", "1000", "--out", str(out), "--json"]
    done, _ = _run(rollout, f"{task} demonstrations")
    demos = json.loads(done.stdout.strip().splitlines()[-1])
    random_eval = _cli("eval", "--env", env_id, "--policy", "random", "--seed", "2000")
    done, _ = _run(random_eval + ["--episodes", str(RANDOM_EPISODES)], f"{task} random policy")
    random_stats = json.loads(done.stdout.strip().splitlines()[-1])
    scores = {
        "env_id": env_id,
        "expert_return_mean": expert["return_mean"],
        "expert_return_std": expert["return_std"],
        "expert_episodes": expert["episodes"],
        "random_return_mean": random_stats["return_mean"],
        "random_return_std": random_stats["return_std"],
        "random_episodes": int(random_stats["n_traj"]),
    }
    store_reference_returns(out, scores, policy)
    tmp = out / "scores.json.tmp"
    tmp.write_text(json.dumps(scores, indent=2) + "\n")
    os.replace(tmp, out / "scores.json")
    return scores | {
        "demo_episodes": int(demos["n_traj"]),
        "demo_return_mean": demos["return_mean"],
    }


def store_reference_returns(dataset: Path, scores: dict, expert: str) -> None:
    """The random policy's and the expert's returns in the dataset's metadata.

    A fit that learns from the dataset then tags its run with them, and ``tdimitation
    analyze`` reports normalised scores (random 0, expert 1) beside the ratios.
    """
    from tdimitation.data.reference import EXPERT_RETURN, RANDOM_EPISODES, RANDOM_RETURN
    from tdimitation.data.storage import load_trajectories, save_trajectories

    demos = load_trajectories(dataset)
    metadata = {
        "expert": expert,
        EXPERT_RETURN: scores["expert_return_mean"],
        RANDOM_RETURN: scores["random_return_mean"],
        RANDOM_EPISODES: scores["random_episodes"],
    }
    save_trajectories(dataset, demos, env_id=scores["env_id"], metadata=metadata)


def run_curve(
    data_dir: Path, run_name: str, experiment: str = EXPERIMENT
) -> tuple[str, str, np.ndarray, np.ndarray] | None:
    """A run's learning curve as ``tdimitation analyze`` draws it: metric, x-axis, points."""
    from tdimitation.analysis.curves import run_points
    from tdimitation.runrecord import CURVES, X_AXES
    from tdimitation.tracking import store_client

    client = store_client(f"sqlite:///{data_dir / 'mlflow.db'}")
    run = client.search_runs(
        [client.get_experiment_by_name(experiment).experiment_id],
        filter_string=f"attributes.run_name = '{run_name}' and attributes.status = 'FINISHED'",
    )[0]
    histories = {
        key: {m.step: m.value for m in client.get_metric_history(run.info.run_id, key)}
        for key in (*CURVES, *X_AXES)
    }
    metric = next((key for key in CURVES if len(histories[key]) >= 2), None)
    if metric is None:
        return None
    x_axis = next((key for key in X_AXES if histories[key]), "step")
    return (metric, x_axis, *run_points(histories[metric], histories.get(x_axis, {})))


def curve_record(curve: tuple[str, str, np.ndarray, np.ndarray] | None) -> dict | None:
    """The curve thinned to :data:`CURVE_POINTS` evenly spaced points, for a results line."""
    if curve is None:
        return None
    metric, x_axis, xs, ys = curve
    keep = np.unique(np.linspace(0, len(xs) - 1, min(len(xs), CURVE_POINTS)).round().astype(int))
    return {
        "metric": metric,
        "x_axis": x_axis,
        "x": [float(x) for x in xs[keep]],
        "y": [round(float(y), 3) for y in ys[keep]],
    }


def frames_to_reach(curve: tuple[str, str, np.ndarray, np.ndarray] | None, target: float):
    """Frames when the mean return of the training episodes first reached ``target``."""
    if curve is None or curve[:2] != ("episode/return", "frames"):
        return None
    reached = np.flatnonzero(curve[3] >= target)
    return int(curve[2][reached[0]]) if reached.size else None


def recipe_digest(recipe: str, recipes_dir: Path = ROOT / "recipes") -> str:
    """A short fingerprint of a recipe's settings (not its comments or layout).

    A header that explains the settings can then be rewritten after its cells ran.
    """
    settings = yaml.safe_load((recipes_dir / f"{recipe}.yaml").read_text())
    data = json.dumps(settings, sort_keys=True).encode()
    return hashlib.sha256(data).hexdigest()[:8]


def cell_run_name(row: dict) -> str:
    """The MLflow run name of a cell: with the recipe's fingerprint where it was recorded.

    A run made with an earlier version of a recipe then never stands in for the current
    one, neither as a finished run nor as a checkpoint to resume.
    """
    name = f"{row['algorithm']}-{row['task']}-seed{row['seed']}"
    return f"{name}-{row['recipe_digest']}" if row.get("recipe_digest") else name


def recorded_run_name(row: dict) -> str:
    """The MLflow run (and run directory) a cell's results line was read from."""
    return row.get("run_name") or cell_run_name(row)


def run_cell(algorithm: str, task: str, seed: int, data_dir: Path, expert: dict) -> dict:
    digest = recipe_digest(f"{algorithm}/{task}_fixed")
    run_name = cell_run_name(
        {"algorithm": algorithm, "task": task, "seed": seed, "recipe_digest": digest}
    )
    extra = ["--model.init_args.seed", str(seed)]
    if algorithm == "dagger":
        extra += ["--model.init_args.expert", f"tdimitation:{expert_checkpoint(data_dir, task)}"]
        # The demonstrations' stored returns tag the run, as they tag the other cells.
        extra += ["--model.init_args.reference_data", str(demonstrations_dir(data_dir, task))]
    else:
        extra += ["--data.init_args.path", str(demonstrations_dir(data_dir, task))]
    metrics, wall = _fit(f"{algorithm}/{task}_fixed", run_name, data_dir, extra)
    row = {
        "return_mean": metrics["eval/return_mean"],
        "return_std": metrics["eval/return_std"],
        "episodes": int(metrics["eval/n_traj"]),
        "ratio": metrics["eval/return_mean"] / expert["return_mean"],
        "expert_return": expert["return_mean"],
        "frames": int(metrics.get("frames", 0)),
        "fit_seconds": metrics["time/fit_seconds"],
        "process_seconds": wall,
        "recipe_digest": digest,
        "run_name": run_name,
    }
    curve = run_curve(data_dir, run_name)
    if algorithm in ("gail", "airl"):
        row["frames_to_0.9_expert"] = frames_to_reach(curve, 0.9 * expert["return_mean"])
    return row | {"curve": curve_record(curve)}


def on_disk(step: tuple, data_dir: Path) -> bool:
    """Whether what a step leaves for later steps is in this data directory."""
    stage, task = step[0], step[1]
    if stage == "expert":
        return expert_checkpoint(data_dir, task).exists()
    if stage == "demos":
        return (demonstrations_dir(data_dir, task) / "scores.json").exists()
    return True


def _key(row: dict) -> tuple:
    return row["stage"], row["task"], row.get("algorithm"), row.get("seed")


@contextlib.contextmanager
def _locked(path: Path):
    """Hold the results file's lock: sittings running side by side append to one file."""
    with open(path.with_name(path.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _append(path: Path, row: dict) -> None:
    with _locked(path), open(path, "a") as f:
        f.write(json.dumps(row) + "\n")


def backfill_curves(results: Path, data_dir: Path) -> int:
    """Record the curves of results lines that lack one and whose run is in this store."""
    with _locked(results):
        rows, filled = load_results(results), 0
        for row in rows:
            if "curve" in row or row["stage"] not in ("expert", "cell"):
                continue
            name = f"{row['task']}-expert" if row["stage"] == "expert" else recorded_run_name(row)
            if finished_run(data_dir, name):
                row["curve"], filled = curve_record(run_curve(data_dir, name)), filled + 1
        if filled:
            tmp = results.with_name(results.name + ".tmp")
            tmp.write_text("".join(json.dumps(row) + "\n" for row in rows))
            os.replace(tmp, results)
    return filled


def run_all(args: argparse.Namespace) -> None:
    rows = load_results(args.results)
    done = {_key(r): r for r in rows}
    plan: list[tuple] = []
    for task in args.tasks:
        if "expert" in args.stages:
            plan.append(("expert", task, None, None))
        if "demos" in args.stages:
            plan.append(("demos", task, None, None))
        if "cells" in args.stages:
            plan += [("cell", task, a, s) for a in args.algorithms for s in args.seeds]
    # An expert or demonstrations recorded by another machine's sitting are made again
    # here (a fresh clone has no data directory); cells are never repeated.
    todo = [p for p in plan if p not in done or not on_disk(p, args.data_dir)]
    for key in plan:
        recorded_digest = done.get(key, {}).get("recipe_digest")
        if recorded_digest and recorded_digest != recipe_digest(f"{key[2]}/{key[1]}_fixed"):
            print(
                f"{' '.join(map(str, key[1:]))}: recorded with an earlier recipe "
                f"({recorded_digest}); move its line to mujoco_superseded.jsonl to run it again"
            )
    print(f"{len(todo)} steps to do ({len(plan) - len(todo)} already done)", flush=True)
    started = time.perf_counter()
    for i, (stage, task, algorithm, seed) in enumerate(todo):
        if time.perf_counter() - started > args.hours * 3600:
            print(f"--hours {args.hours} reached: {len(todo) - i} steps left for later")
            break
        expert = done.get(("expert", task, None, None))
        if stage != "expert" and not on_disk(("expert", task, None, None), args.data_dir):
            print(f"skip {stage} {task}: no expert here yet (run --stages expert)")
            continue
        if stage == "cell" and not on_disk(("demos", task, None, None), args.data_dir):
            print(f"skip {algorithm} {task}: no demonstrations here yet (run --stages demos)")
            continue
        recorded = done.get((stage, task, algorithm, seed))
        if stage == "expert":
            result = run_expert(task, args.data_dir)
        elif stage == "demos":
            result = run_demonstrations(task, args.data_dir, expert)
        else:
            result = run_cell(algorithm, task, seed, args.data_dir, expert)
        row = {"stage": stage, "task": task, "algorithm": algorithm, "seed": seed}
        row |= result | {"date": time.strftime("%Y-%m-%d")}
        _append(args.results, row)
        done[_key(row)] = row
        if recorded is not None:  # made again: does the same seed give the same result?
            key = "return_mean" if "return_mean" in row else "demo_return_mean"
            same = recorded[key] == row[key]
            print(
                f"{stage} {task} made again: {key} {row[key]!r}, "
                f"{'the same as' if same else 'DIFFERENT from'} the recorded {recorded[key]!r}",
                flush=True,
            )
            if stage == "expert" and not same:
                # Another kind of CPU rounds differently, and a fit amplifies it.
                print(
                    f"  cells of {task} run from now on divide by this expert's return and "
                    "learn from its demonstrations; recorded cells keep the expert they "
                    "were measured against, and the table lists each expert",
                    flush=True,
                )
        elapsed = time.perf_counter() - started
        eta = elapsed / (i + 1) * (len(todo) - i - 1)
        what = " ".join(str(x) for x in (stage, task, algorithm, seed) if x is not None)
        figure = f"ratio {row['ratio']:.2f}" if "ratio" in row else ""
        if "return_mean" in row:
            figure = f"return {row['return_mean']:.1f} {figure}"
        print(f"[{i + 1}/{len(todo)}] {what}: {figure}; ETA {eta / 60:.0f} min", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="*", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--algorithms", nargs="*", default=list(ALGORITHMS), choices=ALGORITHMS)
    parser.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2])
    parser.add_argument(
        "--stages",
        nargs="*",
        default=["expert", "demos", "cells"],
        choices=["expert", "demos", "cells"],
    )
    parser.add_argument("--hours", type=float, default=float("inf"), help="start no step after")
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=ROOT / "tdimitation_data" / "mujoco",
        help="experts, demonstrations, checkpoints and the MLflow store",
    )
    parser.add_argument(
        "--results", type=Path, default=ROOT / "benchmarks" / "results" / "mujoco.jsonl"
    )
    parser.add_argument("--table", action="store_true", help="print the table only")
    parser.add_argument(
        "--write",
        action="store_true",
        help="regenerate the RESULTS.md section and the learning curves (from --results)",
    )
    parser.add_argument(
        "--analyze",
        type=Path,
        metavar="DIR",
        help="also run tdimitation analyze on this data directory's store, into DIR",
    )
    args = parser.parse_args()
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.data_dir = args.data_dir.resolve()
    if not args.table:
        run_all(args)
    text = table(load_results(args.results))
    print(text)
    if args.write:
        filled = backfill_curves(args.results, args.data_dir)
        print(f"curves recorded for {filled} earlier results lines from this store")
        text = table(load_results(args.results))
        write_table("mujoco", text)
        for path in plot_learning_curves(load_results(args.results), CURVES_DIR):
            print(f"learning curves: {path.relative_to(ROOT)}")
    if args.analyze:
        analyze(args.data_dir, args.analyze)


def analyze(data_dir: Path, out: Path) -> None:
    """``tdimitation analyze`` of the runs in this data directory's store: per recipe and
    task, IQM and CIs of the final and normalised returns, and their learning curves."""
    command = _cli("analyze", "--data-dir", str(data_dir), "--experiment", EXPERIMENT)
    _run(command + ["--group-by", "recipe", "--out", str(out)], "tdimitation analyze")
    print(f"analysis of this store's runs in {out}")


if __name__ == "__main__":
    main()
