"""The MuJoCo benchmark's cells evaluated both ways: greedy actions and sampled actions.

The benchmark (``benchmarks/mujoco.py``) scores every policy, experts included, by its
greedy (deterministic) actions. ``imitation``'s evaluation samples the policy's actions.
This script evaluates the expert and the recorded cells of the given tasks and algorithm
both ways with ``tdimitation eval`` (50 episodes, the same env seed), so the ratios can be
read under either protocol. It evaluates the cells whose checkpoints are in the data
directory; the table also shows the recorded results of current cells evaluated on
another machine. Results append to
``benchmarks/results/mujoco_sampled_eval.jsonl``; a policy already there is skipped.

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


def policies(tasks: list[str], algorithm: str, data_dir: Path) -> list[tuple[str, str, Path]]:
    """(task, name, checkpoint) of each task's expert and its recorded cells.

    The checkpoints are where this data directory would hold them; a cell evaluated on
    another machine is in the table by its recorded row, whether or not it is here.
    """
    rows, found = bench.load_results(RESULTS), []
    for task in tasks:
        found.append((task, "expert", bench.expert_checkpoint(data_dir, task)))
        for row in sorted(rows, key=lambda r: r.get("seed") or 0):  # table rows in seed order
            if row["stage"] == "cell" and (row["task"], row["algorithm"]) == (task, algorithm):
                name = bench.recorded_run_name(row)
                found.append(
                    (task, name, data_dir / "runs" / bench.EXPERIMENT / name / "last.ckpt")
                )
    return found


def table(rows: list[dict], algorithm: str) -> str:
    lines = [
        f"| task | {algorithm} seeds | ratio, greedy actions | ratio, sampled actions |",
        "|---|---|---|---|",
    ]
    for task in dict.fromkeys(r["task"] for r in rows):
        expert = next((r for r in rows if r["task"] == task and r["policy"] == "expert"), None)
        cells = [r for r in rows if r["task"] == task and r["policy"].startswith(algorithm + "-")]
        if expert is None or not cells:
            continue
        cols = []
        for mode in ("greedy", "sampled"):
            ratios = [r[mode] / expert[mode] for r in cells]
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
    seen = {(r["task"], r["policy"]) for r in done}
    current = policies(args.tasks, args.algorithm, args.data_dir)
    for task, name, checkpoint in current:
        if (task, name) not in seen and not checkpoint.exists():
            print(f"skip {task} {name}: no checkpoint at {checkpoint}")
    todo = [p for p in current if p[:2] not in seen and p[2].exists()]
    started = time.perf_counter()
    for i, (task, name, checkpoint) in enumerate(todo):
        row = {"task": task, "policy": name, "episodes": EPISODES}
        row["greedy"] = evaluate(bench.TASKS[task], checkpoint, sampled=False)
        row["sampled"] = evaluate(bench.TASKS[task], checkpoint, sampled=True)
        with open(OUTPUT, "a") as f:
            f.write(json.dumps(row) + "\n")
        done.append(row)
        eta = (time.perf_counter() - started) / (i + 1) * (len(todo) - i - 1)
        print(
            f"[{i + 1}/{len(todo)}] {task} {name}: greedy {row['greedy']:.1f}, "
            f"sampled {row['sampled']:.1f}; ETA {eta / 60:.0f} min",
            flush=True,
        )
    # Only the recorded cells' policies: rows of superseded cells stay in the file.
    order = {p[:2]: i for i, p in enumerate(current)}  # the recorded cells, in seed order
    wanted = [r for r in done if (r["task"], r["policy"]) in order]
    text = table(sorted(wanted, key=lambda r: order[r["task"], r["policy"]]), args.algorithm)
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
