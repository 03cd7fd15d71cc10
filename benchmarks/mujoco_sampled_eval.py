"""The MuJoCo benchmark's cells evaluated both ways: greedy actions and sampled actions.

The benchmark (``benchmarks/mujoco.py``) scores every policy, experts included, by its
greedy (deterministic) actions. ``imitation``'s evaluation samples the policy's actions.
This script evaluates the expert and the recorded cells of the given tasks and algorithm
both ways with ``tdimitation eval`` (50 episodes, the same env seed), so the ratios can be
read under either protocol. It evaluates the cells whose checkpoints are in the data
directory; the table also shows the recorded results of current cells evaluated on
another machine. Each cell's ratios divide by the evaluation of the expert it learnt
from: an expert made again on another kind of CPU is another expert, recorded with its
return. Results append to ``benchmarks/results/mujoco_sampled_eval.jsonl``; a policy
already there is skipped.

Example::

    python benchmarks/mujoco_sampled_eval.py --tasks hopper walker2d --algorithm gail --write
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
# The benchmark's module, loaded by path: its file name is the simulator's package's.
_spec = importlib.util.spec_from_file_location("mujoco_benchmark", HERE / "mujoco.py")
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)
RESULTS = bench.ROOT / "benchmarks" / "results" / "mujoco.jsonl"
OUTPUT = bench.ROOT / "benchmarks" / "results" / "mujoco_sampled_eval.jsonl"
EPISODES = 50


def evaluate(env_id: str, checkpoint: Path, sampled: bool) -> float:
    """Mean return of ``EPISODES`` episodes of the policy in ``checkpoint``."""
    command = [sys.executable, "-m", "tdimitation.cli", "eval", "--env", env_id]
    command += ["--policy", f"tdimitation:{checkpoint}", "--episodes", str(EPISODES)]
    command += ["--num-envs", "25", "--seed", "0"] + (["--stochastic"] if sampled else [])
    done = subprocess.run(command, cwd=bench.ROOT, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])["return_mean"]


def policies(tasks: list[str], algorithm: str, data_dir: Path) -> list[dict]:
    """Each task's recorded cells and its expert in this data directory (if a cell learnt
    from it), as dicts of task, policy, checkpoint and the return of the expert the
    ratio divides by.

    A cell evaluated on another machine is in the table by its recorded row, whether or
    not its checkpoint is here. An expert made on another kind of CPU differs, so each
    expert is told apart by its return and each cell is scored against its own.
    """
    rows, found = bench.load_results(RESULTS), []
    for task in tasks:
        cells = []
        for row in sorted(rows, key=lambda r: r.get("seed") or 0):  # table rows in seed order
            if row["stage"] == "cell" and (row["task"], row["algorithm"]) == (task, algorithm):
                name = bench.recorded_run_name(row)
                checkpoint = data_dir / "runs" / bench.EXPERIMENT / name / "last.ckpt"
                cells.append(
                    {
                        "task": task,
                        "policy": name,
                        "checkpoint": checkpoint,
                        "expert_return": bench.expert_return(row),
                    }
                )
        checkpoint = bench.expert_checkpoint(data_dir, task)
        if checkpoint.exists():
            made = bench.final_metrics(data_dir, bench.EXPERIMENT, f"{task}-expert")
            expert = {"task": task, "policy": "expert", "checkpoint": checkpoint}
            expert["expert_return"] = made["eval/return_mean"]
            # Only an expert some cell learnt from is worth its evaluation.
            if key(expert) in {expert_key(cell) for cell in cells}:
                found.append(expert)
        found += cells
    return found


def key(row: dict) -> tuple:
    """A policy's identity in the results: an expert's includes which expert it is."""
    if row["policy"] == "expert":
        return row["task"], "expert", bench.expert_id(row["expert_return"])
    return row["task"], row["policy"]


def expert_key(cell: dict) -> tuple:
    """The :func:`key` of the expert a cell learnt from."""
    return key(cell | {"policy": "expert"})


def scored(evaluated: list[dict], current: list[dict]) -> tuple[list[dict], list[str]]:
    """The current cells' evaluations, each beside its own expert's, in ``current``'s order,
    and a line for each evaluated cell whose expert was not evaluated."""
    by_key = {key(r): r for r in evaluated}
    rows, missing = [], []
    for policy in current:
        if policy["policy"] == "expert" or key(policy) not in by_key:
            continue
        expert = by_key.get(expert_key(policy))
        if expert is None:
            missing.append(
                f"{policy['task']} {policy['policy']}: its expert (return "
                f"{policy['expert_return']:.1f}) has no evaluation here; not in the table"
            )
            continue
        cell = by_key[key(policy)]
        rows.append(cell | {"expert_greedy": expert["greedy"], "expert_sampled": expert["sampled"]})
    return rows, missing


def table(rows: list[dict], algorithm: str) -> str:
    """Greedy and sampled ratios per task of the :func:`scored` cells."""
    lines = [
        f"| task | {algorithm} seeds | ratio, greedy actions | ratio, sampled actions |",
        "|---|---|---|---|",
    ]
    for task in dict.fromkeys(r["task"] for r in rows):
        cells = [r for r in rows if r["task"] == task]
        cols = []
        for mode in ("greedy", "sampled"):
            ratios = [r[mode] / r[f"expert_{mode}"] for r in cells]
            each = " / ".join(f"{x:.2f}" for x in ratios)
            cols.append(f"{statistics.mean(ratios):.2f} ({each})")
        lines.append(f"| {task} | {len(cells)} | {cols[0]} | {cols[1]} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=["hopper", "walker2d"], choices=bench.TASKS)
    parser.add_argument("--algorithm", default="gail")
    parser.add_argument("--data-dir", type=Path, default=bench.ROOT / "tdimitation_data" / "mujoco")
    parser.add_argument("--write", action="store_true", help="regenerate its RESULTS.md section")
    args = parser.parse_args()
    done = bench.load_results(OUTPUT)
    seen = {key(r) for r in done}
    current = policies(args.tasks, args.algorithm, args.data_dir)
    for policy in current:
        if key(policy) not in seen and not policy["checkpoint"].exists():
            where = f"no checkpoint at {policy['checkpoint']}"
            print(f"skip {policy['task']} {policy['policy']}: {where}")
    todo = [p for p in current if key(p) not in seen and p["checkpoint"].exists()]
    started = time.perf_counter()
    for i, policy in enumerate(todo):
        task, name = policy["task"], policy["policy"]
        row = {"task": task, "policy": name, "episodes": EPISODES}
        row["expert_return"] = policy["expert_return"]
        row["greedy"] = evaluate(bench.TASKS[task], policy["checkpoint"], sampled=False)
        row["sampled"] = evaluate(bench.TASKS[task], policy["checkpoint"], sampled=True)
        bench._append(OUTPUT, row)
        done.append(row)
        eta = (time.perf_counter() - started) / (i + 1) * (len(todo) - i - 1)
        print(
            f"[{i + 1}/{len(todo)}] {task} {name}: greedy {row['greedy']:.1f}, "
            f"sampled {row['sampled']:.1f}; ETA {eta / 60:.0f} min",
            flush=True,
        )
    # Only the recorded cells' policies: rows of superseded cells stay in the file.
    rows, missing = scored(done, current)
    for line in missing:
        print(line)
    text = table(rows, args.algorithm)
    print(text)
    if args.write:
        intro = (
            f"{EPISODES} episodes per policy, env seed 0; each ratio divides by the expert's "
            "return measured the same way. Generated by `benchmarks/mujoco_sampled_eval.py "
            f"--tasks {' '.join(args.tasks)} --algorithm {args.algorithm} --write`.\n\n"
        )
        name = f"mujoco-sampled-{args.algorithm}"
        bench.write_section(
            f"<!-- recipes:{name}:begin -->",
            f"<!-- recipes:{name}:end -->",
            intro + text + "\n",
            heading=f"### MuJoCo {args.algorithm.upper()}: greedy against sampled actions",
        )


if __name__ == "__main__":
    main()
