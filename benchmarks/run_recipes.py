"""Run shipped recipes over seeds and regenerate the recipe tables of RESULTS.md.

Each run is the command a user types, as a whole process::

    tdimitation fit --config recipes/<recipe>.yaml --model.init_args.seed S ...

and its final evaluation (the deterministic evaluation ``fit`` runs after training) is
read from what the run logged to its MLflow store. One JSON line per finished run is
appended to ``--results`` (default ``benchmarks/results/recipes.jsonl``); runs already
there are skipped, so an interrupted sweep resumes where it stopped and long sweeps can be
split across sessions. ``--repeat-seed S`` runs seed S a second time, to check that two
runs of one seed end at the same return.

``--write`` regenerates the tables between ``<!-- recipes:NAME:begin -->`` and
``<!-- recipes:NAME:end -->`` markers in ``benchmarks/RESULTS.md`` from the JSON lines
alone, so no figure there is typed by hand.

Examples::

    python benchmarks/run_recipes.py --recipes gail/cartpole_fixed airl/cartpole_fixed \\
        --seeds 0 1 2 3 4 --repeat-seed 0 --table adversarial --write
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
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS_MD = ROOT / "benchmarks" / "RESULTS.md"
DEFAULT_RESULTS = ROOT / "benchmarks" / "results" / "recipes.jsonl"


def run_key(recipe: str, seed: int, repeat: int) -> str:
    return f"{recipe}|{seed}|{repeat}"


def load_results(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def final_metrics(data_dir: Path, experiment: str, run_name: str) -> dict[str, float]:
    """The metrics the fit logged to its MLflow store (last value of each)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{data_dir / 'mlflow.db'}")
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
    experiment = "recipes-" + recipe.replace("/", "-")
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
    begin, end = f"<!-- recipes:{name}:begin -->", f"<!-- recipes:{name}:end -->"
    content = RESULTS_MD.read_text()
    if begin not in content or end not in content:
        raise SystemExit(f"RESULTS.md has no {begin} ... {end} section to regenerate")
    head, rest = content.split(begin, 1)
    _, tail = rest.split(end, 1)
    new = f"{head}{begin}\n{text}{end}{tail}"
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
    parser.add_argument("--write", action="store_true", help="regenerate the RESULTS.md table")
    parser.add_argument("extra", nargs=argparse.REMAINDER, help="-- then extra fit arguments")
    args = parser.parse_args()
    extra = [a for a in args.extra if a != "--"]

    args.results.parent.mkdir(parents=True, exist_ok=True)
    done = {run_key(r["recipe"], r["seed"], r["repeat"]) for r in load_results(args.results)}
    todo = [(rc, s, 0) for rc in args.recipes for s in args.seeds]
    todo += [(rc, s, 1) for rc in args.recipes for s in args.repeat_seed]
    todo = [t for t in todo if run_key(*t) not in done]
    print(f"{len(todo)} runs to do ({len(done)} already in {args.results})", flush=True)
    started = time.perf_counter()
    for i, (recipe, seed, repeat) in enumerate(todo):
        row = run_one(recipe, seed, repeat, args.data_dir, extra)
        with open(args.results, "a") as f:
            f.write(json.dumps(row) + "\n")
        elapsed = time.perf_counter() - started
        eta = elapsed / (i + 1) * (len(todo) - i - 1)
        print(
            f"[{i + 1}/{len(todo)}] {recipe} seed {seed}{' (again)' if repeat else ''}: "
            f"final return {row['return_mean']:.1f} ± {row['return_std']:.1f}, "
            f"{row['process_seconds']:.0f} s; ETA {eta / 60:.1f} min",
            flush=True,
        )
    if args.table:
        recipes = args.table_recipes or args.recipes
        text = table(load_results(args.results), recipes, args.target)
        print(text)
        if args.write:
            write_table(args.table, text)


if __name__ == "__main__":
    main()
