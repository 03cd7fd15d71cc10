"""Run shipped recipes over seeds and regenerate the recipe tables of RESULTS.md.

Each run is the command a user types, as a whole process::

    tdimitation fit --config recipes/<recipe>.yaml --model.init_args.seed S ...

and its final evaluation (the deterministic evaluation ``fit`` runs after training) is
read from what the run logged to its MLflow store (``--data-dir``). One JSON line per
finished run is appended to ``--results`` (default ``benchmarks/results/recipes.jsonl``);
runs already there are skipped, so an interrupted sweep resumes where it stopped and long
sweeps can be split across sessions. ``--repeat-seed S`` runs seed S a second time (in an
experiment of its own, so the quality tables count each seed once), to check that two
runs of one seed end at the same return.

Runs go through an executor: an object whose ``map(function, jobs)`` yields each job's
result as it finishes. :class:`SequentialExecutor` (the default) runs them one after
another in this process; ``--executor ray`` (:class:`RayExecutor`, the sweep extra) runs
them as Ray tasks, one CPU each, on this machine or on the cluster at ``--ray-address``,
started as ``tdimitation sweep`` starts Ray.

Two kinds of tables are regenerated in ``benchmarks/RESULTS.md``, between marker comments,
so no figure there is typed by hand:

* ``--table NAME --write``: one row per recipe and seed, from the JSON lines alone, between
  ``<!-- recipes:NAME:begin -->`` and ``<!-- recipes:NAME:end -->``;
* ``--quality NAME --write``: the ``tdimitation analyze`` table of the recipes' runs in the
  store (runs, evaluation episodes, mean and IQM of the final return and of the
  normalised score with stratified-bootstrap 95 % intervals), between
  ``<!-- quality:NAME:begin -->`` and ``<!-- quality:NAME:end -->`` (appended as a new
  section when absent). The analysis (markdown, CSV, JSON, learning curves) is also saved
  under ``benchmarks/results/quality/NAME/`` and logged to the store's ``analyze``
  experiment.

Examples::

    python benchmarks/run_recipes.py --recipes gail/cartpole_fixed airl/cartpole_fixed \\
        --seeds 0 1 2 3 4 --repeat-seed 0 --table adversarial --write
    python benchmarks/run_recipes.py --recipes bc/cartpole gail/cartpole_fixed \\
        --seeds 0 1 2 3 4 --quality cartpole --write
    python benchmarks/run_recipes.py --table adversarial --write   # tables only
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS_MD = ROOT / "benchmarks" / "RESULTS.md"
DEFAULT_RESULTS = ROOT / "benchmarks" / "results" / "recipes.jsonl"
QUALITY_DIR = ROOT / "benchmarks" / "results" / "quality"


@dataclass(frozen=True)
class Job:
    """One fit: a recipe (``bc/cartpole``), a seed, and whether it repeats that seed."""

    recipe: str
    seed: int
    repeat: int = 0


class SequentialExecutor:
    """Runs the jobs one after another in this process, yielding results in order."""

    def map(self, function: Callable[[Job], dict], jobs: Iterable[Job]) -> Iterator[dict]:
        for job in jobs:
            yield function(job)


class RayExecutor:
    """Runs the jobs as Ray tasks (one CPU each), yielding results as they finish.

    Args:
        address: a Ray cluster's address (None: start Ray on this machine).
        cpus: CPUs of a local Ray (None: all of this machine's).
    """

    def __init__(self, address: str | None = None, cpus: int | None = None) -> None:
        self.address, self.cpus = address, cpus

    def map(self, function: Callable[[Job], dict], jobs: Iterable[Job]) -> Iterator[dict]:
        from tdimitation.sweep.runner import start_ray

        start_ray(self.address, self.cpus)  # first: it chooses Ray's settings before its import
        import ray

        try:
            task = ray.remote(num_cpus=1)(function)
            pending = [task.remote(job) for job in jobs]
            while pending:
                finished, pending = ray.wait(pending, num_returns=1)
                yield ray.get(finished[0])
        finally:
            ray.shutdown()


def experiment_of(recipe: str, repeat: int = 0) -> str:
    """The MLflow experiment of a recipe's runs (repeated seeds: an experiment of their own)."""
    return "recipes-" + recipe.replace("/", "-") + ("-repeat" if repeat else "")


def run_key(recipe: str, seed: int, repeat: int) -> str:
    return f"{recipe}|{seed}|{repeat}"


def load_results(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def final_metrics(data_dir: Path, experiment: str, run_name: str) -> dict[str, float]:
    """The metrics the fit logged to its MLflow store (last value of each)."""
    from tdimitation.tracking import store_client

    client = store_client(f"sqlite:///{data_dir / 'mlflow.db'}")
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise RuntimeError(f"no MLflow experiment {experiment!r} in {data_dir}")
    runs = client.search_runs(
        [exp.experiment_id], filter_string=f"attributes.run_name = '{run_name}'"
    )
    if not runs:
        raise RuntimeError(f"no MLflow run {run_name!r} in {data_dir}")
    return {k: float(v) for k, v in runs[0].data.metrics.items()}


def policy_digest(checkpoint: Path) -> str:
    """SHA-256 of the trained policy's parameters in a fit's final checkpoint."""
    import hashlib

    import torch

    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    policy = state["tdimitation"]["policy"]["state_dict"]
    digest = hashlib.sha256()
    for key in sorted(policy):
        digest.update(key.encode())
        digest.update(policy[key].contiguous().numpy().tobytes())
    return digest.hexdigest()


def run_one(recipe: str, seed: int, repeat: int, data_dir: Path, extra: list[str]) -> dict:
    experiment = experiment_of(recipe, repeat)
    run_name = f"{recipe.replace('/', '-')}-seed{seed}-r{repeat}"
    command = [
        sys.executable,
        "-m",
        "tdimitation.cli",
        "fit",
        "--config",
        str(ROOT / "recipes" / f"{recipe}.yaml"),
        "--model.init_args.seed",
        str(seed),
        "--run.data_dir",
        str(data_dir),
        "--run.experiment",
        experiment,
        "--run.name",
        run_name,
        *extra,
    ]
    env = dict(os.environ)
    env.pop("MLFLOW_TRACKING_URI", None)
    started = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        tail = "\n".join((done.stderr or done.stdout).splitlines()[-15:])
        raise RuntimeError(f"{recipe} seed {seed} failed:\n{tail}")
    metrics = final_metrics(data_dir, experiment, run_name)
    checkpoint = data_dir / "runs" / experiment / run_name / "last.ckpt"
    return {
        "recipe": recipe,
        "seed": seed,
        "repeat": repeat,
        "return_mean": metrics["eval/return_mean"],
        "return_std": metrics["eval/return_std"],
        "eval_episodes": metrics["eval/n_traj"],
        "frames": metrics.get("frames", float("nan")),
        "fit_seconds": metrics["time/fit_seconds"],
        "process_seconds": wall,
        "policy_sha256": policy_digest(checkpoint),
        # Algorithms that log them (preference comparisons): the last reward-model accuracy.
        **({"reward_accuracy": metrics["reward/accuracy"]} if "reward/accuracy" in metrics else {}),
        "extra_args": extra,
        "date": time.strftime("%Y-%m-%d"),
    }


def table(results: list[dict], recipes: list[str], target: float | None) -> str:
    """A markdown table: one row per recipe and seed, then a summary row per recipe."""
    lines = [
        "| recipe | seed | final return (mean ± std) | frames | fit s | process s |",
        "|---|---|---|---|---|---|",
    ]
    notes = []
    for recipe in recipes:
        rows = sorted(
            (r for r in results if r["recipe"] == recipe), key=lambda r: (r["seed"], r["repeat"])
        )
        if not rows:
            continue
        for r in rows:
            seed = f"{r['seed']}" + (f" (run {r['repeat'] + 1})" if r["repeat"] else "")
            lines.append(
                f"| {recipe} | {seed} | {r['return_mean']:.1f} ± {r['return_std']:.1f} | "
                f"{int(r['frames']):,} | {r['fit_seconds']:.1f} | {r['process_seconds']:.1f} |"
            )
        firsts = [r for r in rows if r["repeat"] == 0]
        finals = [r["return_mean"] for r in firsts]
        summary = (
            f"**{recipe}**: {len(finals)} seeds, final return mean {statistics.mean(finals):.1f}, "
            f"lowest {min(finals):.1f}"
        )
        if target is not None:
            reached = sum(f >= target for f in finals)
            summary += f"; {reached} of {len(finals)} seeds end at ≥ {target:g}"
        for r in rows:
            if r["repeat"]:
                first = next((f for f in firsts if f["seed"] == r["seed"]), None)
                if first is not None:
                    same = first["return_mean"] == r["return_mean"]
                    summary += (
                        f"; seed {r['seed']} run again: "
                        f"{'the same' if same else 'a different'} final return "
                        f"({r['return_mean']:.1f} vs {first['return_mean']:.1f})"
                    )
                    if first.get("policy_sha256") and r.get("policy_sha256"):
                        identical = first["policy_sha256"] == r["policy_sha256"]
                        summary += (
                            " and "
                            + ("bit-identical" if identical else "different")
                            + " policy parameters"
                        )
        notes.append(f"- {summary}.")
    dates = sorted({r["date"] for r in results if r["recipe"] in recipes})
    footer = f"\nRuns of {', '.join(dates)}; generated by `benchmarks/run_recipes.py`.\n"
    return "\n".join(lines) + "\n\n" + "\n".join(notes) + "\n" + footer


def write_table(name: str, text: str) -> None:
    write_section(f"<!-- recipes:{name}:begin -->", f"<!-- recipes:{name}:end -->", text)


def run_jobs(
    jobs: list[Job],
    results: Path,
    data_dir: Path,
    extra: list[str],
    executor=None,
) -> None:
    """Run the jobs through ``executor`` (default sequential), appending each result's line.

    Prints progress (done of total, ETA) as results arrive, in whatever order the
    executor finishes them.
    """
    executor = executor or SequentialExecutor()
    started = time.perf_counter()

    def one(job: Job) -> dict:
        return run_one(job.recipe, job.seed, job.repeat, data_dir, extra)

    for i, row in enumerate(executor.map(one, jobs)):
        with open(results, "a") as f:
            f.write(json.dumps(row) + "\n")
        elapsed = time.perf_counter() - started
        eta = elapsed / (i + 1) * (len(jobs) - i - 1)
        print(
            f"[{i + 1}/{len(jobs)}] {row['recipe']} seed {row['seed']}"
            f"{' (again)' if row['repeat'] else ''}: final return {row['return_mean']:.1f} "
            f"± {row['return_std']:.1f}, {row['process_seconds']:.0f} s; ETA {eta / 60:.1f} min",
            flush=True,
        )


def quality_table(
    name: str, recipes: list[str], data_dir: Path, seed: int = 0, reps: int = 50_000
) -> str:
    """The ``tdimitation analyze`` table of the recipes' runs in the store, with a footer.

    The analysis is saved under ``benchmarks/results/quality/NAME/`` and logged to the
    store's ``analyze`` experiment.
    """
    from tdimitation.analysis import analyze
    from tdimitation.runs import open_client

    client = open_client(data_dir)
    experiments = [
        experiment_of(r) for r in recipes if client.get_experiment_by_name(experiment_of(r))
    ]
    if not experiments:
        raise SystemExit(f"no runs of {', '.join(recipes)} in {data_dir}: run them first")
    result = analyze(
        client, experiments, group_by="recipe", seed=seed, reps=reps, out=QUALITY_DIR / name
    )
    dates = sorted({time.strftime("%Y-%m-%d", time.localtime(s.started)) for s in result.scores})
    curves = sorted(p.name for p in result.files if p.suffix == ".png")
    footer = (
        f"\n{len(result.scores)} runs of {', '.join(dates)}; one score per run (its final "
        "deterministic evaluation), aggregated across seeds; 95 % intervals from a stratified "
        f"bootstrap ({reps:,} replicates, seed {seed}). Generated by "
        "`benchmarks/run_recipes.py` from `tdimitation analyze`; the analysis and the "
        f"learning curves ({', '.join(curves) or 'none'}) are in "
        f"`benchmarks/results/quality/{name}/`.\n"
    )
    return result.markdown + footer


def write_section(begin: str, end: str, text: str, heading: str | None = None) -> None:
    """Replace the text between the markers in RESULTS.md (atomically).

    Without the markers: append ``heading`` and a new marked section when a heading is
    given, else refuse.
    """
    content = RESULTS_MD.read_text()
    if begin in content and end in content:
        head, rest = content.split(begin, 1)
        _, tail = rest.split(end, 1)
        new = f"{head}{begin}\n{text}{end}{tail}"
    elif heading is not None:
        new = f"{content.rstrip()}\n\n{heading}\n\n{begin}\n{text}{end}\n"
    else:
        raise SystemExit(f"RESULTS.md has no {begin} ... {end} section to regenerate")
    fd, tmp = tempfile.mkstemp(dir=RESULTS_MD.parent, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(new)
    os.replace(tmp, RESULTS_MD)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipes", nargs="*", default=[], help="e.g. gail/cartpole_fixed")
    parser.add_argument("--seeds", nargs="*", type=int, default=[0])
    parser.add_argument("--repeat-seed", type=int, action="append", default=[])
    parser.add_argument("--results", type=Path, default=DEFAULT_RESULTS)
    parser.add_argument("--data-dir", type=Path, default=ROOT / "benchmarks" / "results" / "data")
    parser.add_argument("--table", help="name of the RESULTS.md section to regenerate")
    parser.add_argument(
        "--table-recipes", nargs="*", help="recipes in the table (default: --recipes)"
    )
    parser.add_argument("--target", type=float, default=None, help="return to count seeds against")
    parser.add_argument(
        "--quality",
        help="name of the RESULTS.md quality section (tdimitation analyze) to regenerate",
    )
    parser.add_argument("--analysis-seed", type=int, default=0, help="seed of the bootstrap")
    parser.add_argument(
        "--executor",
        choices=["sequential", "ray"],
        default="sequential",
        help="run the fits one after another, or as Ray tasks (pip install 'tdimitation[sweep]')",
    )
    parser.add_argument("--ray-address", default=None, help="a Ray cluster (default: local)")
    parser.add_argument("--ray-cpus", type=int, default=None, help="CPUs of a local Ray")
    parser.add_argument("--write", action="store_true", help="regenerate the RESULTS.md table")
    parser.add_argument("extra", nargs=argparse.REMAINDER, help="-- then extra fit arguments")
    args = parser.parse_args()
    extra = [a for a in args.extra if a != "--"]

    args.results.parent.mkdir(parents=True, exist_ok=True)
    done = {run_key(r["recipe"], r["seed"], r["repeat"]) for r in load_results(args.results)}
    todo = [Job(rc, s) for rc in args.recipes for s in args.seeds]
    todo += [Job(rc, s, 1) for rc in args.recipes for s in args.repeat_seed]
    todo = [j for j in todo if run_key(j.recipe, j.seed, j.repeat) not in done]
    print(f"{len(todo)} runs to do ({len(done)} already in {args.results})", flush=True)
    executor = RayExecutor(args.ray_address, args.ray_cpus) if args.executor == "ray" else None
    run_jobs(todo, args.results, args.data_dir, extra, executor)
    if args.table:
        recipes = args.table_recipes or args.recipes
        text = table(load_results(args.results), recipes, args.target)
        print(text)
        if args.write:
            write_table(args.table, text)
    if args.quality:
        recipes = args.table_recipes or args.recipes
        text = quality_table(args.quality, recipes, args.data_dir, args.analysis_seed)
        print(text)
        if args.write:
            write_section(
                f"<!-- quality:{args.quality}:begin -->",
                f"<!-- quality:{args.quality}:end -->",
                text,
                heading=f"## Recipe quality: {args.quality} (`benchmarks/run_recipes.py`)",
            )


if __name__ == "__main__":
    main()
