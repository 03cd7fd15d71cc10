"""Trial runs of a MuJoCo benchmark recipe with changed settings, before the recipe changes.

A trial is ``tdimitation fit`` of a benchmark recipe (``recipes/<algorithm>/<task>_fixed.yaml``)
with some settings overridden, on the benchmark's expert and demonstrations, scored like a
cell of ``benchmarks/mujoco.py`` (the fit's final evaluation over the expert's return). Each
finished trial appends one line to ``benchmarks/results/mujoco_trials.jsonl``, naming the
recipe's settings fingerprint and the overrides, so a recipe's header can cite the trials
behind its choices. A trial already recorded under the same name and seed is not rerun.

Examples (a trial of two seeds side by side; the recipe unchanged on seeds its cells do
not use, which measures how much choosing it on the cells' seeds flattered it; the
RESULTS.md table of all trials)::

    python benchmarks/mujoco_trials.py --task hopper --algorithm gail --seeds 0 1 --jobs 2 \\
        --name disc1step \\
        --set 'model.init_args.n_disc_updates_per_round=1'
    python benchmarks/mujoco_trials.py --task hopper --algorithm gail --seeds 5 6 7 8 9 \\
        --jobs 2 --name held-out
    python benchmarks/mujoco_trials.py --write
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
from concurrent.futures import ThreadPoolExecutor
from datetime import date
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
# The benchmark's module, loaded by path: its file name is the simulator's package's.
_spec = importlib.util.spec_from_file_location("mujoco_benchmark", HERE / "mujoco.py")
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)
TRIALS = bench.ROOT / "benchmarks" / "results" / "mujoco_trials.jsonl"
SUPERSEDED = bench.ROOT / "benchmarks" / "results" / "mujoco_superseded.jsonl"


def parse_override(text: str) -> tuple[str, object]:
    """``key=value`` with a YAML value, as the command line's ``--set`` takes it."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"--set takes KEY=VALUE, got {text!r}")
    return key, yaml.safe_load(value)


def trial_run_name(algorithm: str, task: str, name: str, seed: int) -> str:
    return f"{algorithm}-{task}-{name}-seed{seed}"


def run_trial(args: argparse.Namespace, seed: int, expert: dict) -> dict:
    recipe = f"{args.algorithm}/{args.task}_fixed"
    experiment = f"{args.task}-diagnostics"
    run_name = trial_run_name(args.algorithm, args.task, args.name, seed)
    extra = ["--model.init_args.seed", str(seed)]
    extra += ["--data.init_args.path", str(bench.demonstrations_dir(args.data_dir, args.task))]
    for key, value in args.overrides:
        # The command line reads a string setting verbatim (JSON quotes would stay in it).
        extra += [f"--{key}", value if isinstance(value, str) else json.dumps(value)]
    metrics, wall = bench._fit(recipe, run_name, args.data_dir, extra, experiment)
    curve = bench.run_curve(args.data_dir, run_name, experiment)
    return {
        "stage": "trial",
        "task": args.task,
        "algorithm": args.algorithm,
        "seed": seed,
        "recipe": f"recipes/{recipe}.yaml",
        "recipe_digest": bench.recipe_digest(recipe),
        "overrides": dict(args.overrides),
        "return_mean": metrics["eval/return_mean"],
        "episodes": int(metrics["eval/n_traj"]),
        "ratio": metrics["eval/return_mean"] / expert["return_mean"],
        "expert_return": expert["return_mean"],
        "frames": int(metrics.get("frames", 0)),
        "process_seconds": wall,
        "experiment": experiment,
        "run_name": run_name,
        "date": date.today().isoformat(),
        "curve": bench.curve_record(curve),
    }


def trial_label(row: dict) -> str:
    """The trial's name: its run name without the algorithm, task and seed."""
    prefix = f"{row['algorithm']}-{row['task']}-"
    return row["run_name"].removeprefix(prefix).rsplit("-seed", 1)[0]


RERUN_ELSEWHERE = "none: the recipe run again beside an expert made again on another kind of CPU"
HELD_OUT = "none: the recipe on seeds its cells do not use (held out from every choice)"
REPEAT = "none: the recipe run again on its cells' seeds and expert"


def _settings(overrides: dict) -> str:
    return "; ".join(
        f"`{key.removeprefix('model.init_args.')}: {json.dumps(value)}`"
        for key, value in overrides.items()
    )


def table(trials: list[dict], cells: list[dict]) -> str:
    """One line per trial: its ratios beside the recorded cells of its base recipe.

    ``cells`` are the benchmark's results lines, current and superseded. A trial is set
    beside the cells of the recipe it changed (the same settings fingerprint, whether
    that recipe is current or has since changed), on the same seeds, learning from the
    same expert: an expert made again on another kind of CPU differs, and so do its
    demonstrations. Where no such cell is recorded, a trial that changed nothing (the
    recipe run again beside that expert) stands in; such a trial is itself set beside the
    recipe's cells on whichever expert they had. A trial that changed nothing beside the
    cells' own expert on seeds none of them used measures the recipe on held-out seeds:
    it is set beside all of the cells on that expert, since the trials chose the recipe
    on the cells' seeds. A current cell recorded before fingerprints were kept counts as
    the current recipe's.
    """

    current: dict[str, str] = {}  # recipe -> its fingerprint, each file read once

    def digest(row: dict) -> str | None:
        if row.get("recipe_digest"):
            return row["recipe_digest"]
        if row["stage"] == "cell" and "superseded" in row:
            return None
        recipe = f"{row['algorithm']}/{row['task']}_fixed"
        if recipe not in current:
            current[recipe] = bench.recipe_digest(recipe)
        return current[recipe]

    def key(row: dict) -> tuple:
        expert = bench.expert_id(bench.expert_return(row))
        return row["task"], row["algorithm"], digest(row), row["seed"], expert

    cells_by_key = {key(r): r["ratio"] for r in cells if r["stage"] == "cell"}
    recorded = dict(cells_by_key)
    on_any_expert = {key(r)[:-1]: r["ratio"] for r in cells if r["stage"] == "cell"}
    # (task, algorithm, fingerprint, expert) -> {seed: ratio} of the recorded cells.
    cells_on_expert: dict[tuple, dict[int, float]] = {}
    for (task, algorithm, fingerprint, seed, expert), ratio in cells_by_key.items():
        cells_on_expert.setdefault((task, algorithm, fingerprint, expert), {})[seed] = ratio
    for r in trials:  # the recipe run again beside another expert, where no cell was
        if "run_name" in r and not r["overrides"]:
            recorded.setdefault(key(r), r["ratio"])
    groups: dict[tuple, list[dict]] = {}
    for row in trials:
        if "run_name" in row:
            groups.setdefault((row["task"], row["algorithm"], trial_label(row)), []).append(row)
    lines = [
        "| task | algorithm | trial | settings changed | seeds | trial ratio (per seed) "
        "| base recipe's cells, same seeds |",
        "|---|---|---|---|---|---|---|",
    ]

    def ratios_text(ratios: list[float | None]) -> str:
        if None in ratios:
            return "not recorded"
        return f"{statistics.mean(ratios):.3f} ({' / '.join(f'{x:.2f}' for x in ratios)})"

    for (task, algorithm, label), rows in groups.items():
        rows = sorted(rows, key=lambda r: r["seed"])
        ratios = [r["ratio"] for r in rows]
        settings = _settings(rows[0]["overrides"])
        if rows[0]["overrides"]:
            cell_text = ratios_text([recorded.get(key(r)) for r in rows])
        else:  # the recipe unchanged: where, and on which seeds?
            _, _, fingerprint, _, expert = key(rows[0])
            beside = cells_on_expert.get((task, algorithm, fingerprint, expert), {})
            if not beside:
                settings = RERUN_ELSEWHERE
                cell_text = ratios_text([on_any_expert.get(key(r)[:-1]) for r in rows])
            elif beside.keys().isdisjoint(r["seed"] for r in rows):
                settings = HELD_OUT
                seeds = sorted(beside)
                cell_text = f"seeds {' '.join(map(str, seeds))}: " + ratios_text(
                    [beside[seed] for seed in seeds]
                )
            else:
                settings = REPEAT
                cell_text = ratios_text([beside.get(r["seed"]) for r in rows])
        lines.append(
            f"| {task} | {algorithm} | {label} | {settings} "
            f"| {' '.join(str(r['seed']) for r in rows)} "
            f"| {ratios_text(ratios)} | {cell_text} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=list(bench.TASKS))
    parser.add_argument("--algorithm", choices=["gail", "airl", "bc"])
    parser.add_argument("--seeds", nargs="+", type=int)
    parser.add_argument("--name", help="the trial's label in its run names")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        type=parse_override,
        default=[],
        metavar="KEY=VALUE",
        help="a recipe setting to override (VALUE is YAML); repeatable",
    )
    parser.add_argument("--jobs", type=int, default=1, help="trials run side by side")
    parser.add_argument("--data-dir", type=Path, default=bench.ROOT / "tdimitation_data" / "mujoco")
    parser.add_argument(
        "--write", action="store_true", help="regenerate the RESULTS.md table of the trials"
    )
    args = parser.parse_args()
    args.data_dir = args.data_dir.resolve()
    rows = bench.load_results(bench.ROOT / "benchmarks" / "results" / "mujoco.jsonl")
    superseded = bench.load_results(SUPERSEDED)
    if args.task is not None:
        if None in (args.algorithm, args.seeds, args.name):
            parser.error("a trial needs --task, --algorithm, --seeds and --name")
        run_trials(args, rows)
    text = table(bench.load_results(TRIALS), rows + superseded)
    print(text)
    if args.write:
        intro = (
            "Trials of changed settings before a recipe changes, beside the benchmark's recorded "
            "cells of the recipe each trial changed (current or since superseded), on the same "
            "seeds and the same expert. An expert made again on another kind of CPU differs; "
            "beside it the recipe is run again unchanged (settings changed: none), and that run "
            "is the base of the trials made there. Beside the cells' own expert, the recipe run "
            "unchanged on seeds its cells do not use measures it on seeds that chose nothing. "
            "Generated by "
            "`benchmarks/mujoco_trials.py --write` from `benchmarks/results/mujoco_trials.jsonl`."
            "\n\n"
        )
        bench.write_section(
            "<!-- recipes:mujoco-trials:begin -->",
            "<!-- recipes:mujoco-trials:end -->",
            intro + text,
            heading="### MuJoCo trials",
        )


def run_trials(args: argparse.Namespace, rows: list[dict]) -> None:
    """Run the trial's seeds not yet recorded, ``--jobs`` at a time."""
    # The task's newest expert line, as benchmarks/mujoco.py reads it.
    experts = [r for r in rows if r["stage"] == "expert" and r["task"] == args.task]
    expert = experts[-1] if experts else None
    if expert is None:
        raise SystemExit(f"no expert of {args.task} recorded: run benchmarks/mujoco.py first")
    done = {(r["run_name"], r["seed"]) for r in bench.load_results(TRIALS) if "run_name" in r}
    seeds = [
        s
        for s in args.seeds
        if (trial_run_name(args.algorithm, args.task, args.name, s), s) not in done
    ]

    def one(seed: int) -> dict:
        row = run_trial(args, seed, expert)
        bench._append(TRIALS, row)
        print(
            f"{args.task} {args.algorithm} {args.name} seed {seed}: ratio {row['ratio']:.3f}",
            flush=True,
        )
        return row

    with ThreadPoolExecutor(max(1, args.jobs)) as pool:
        results = list(pool.map(one, seeds))
    if results:
        ratios = [r["ratio"] for r in results]
        print(f"mean ratio over seeds {seeds}: {statistics.mean(ratios):.3f}")


if __name__ == "__main__":
    main()
