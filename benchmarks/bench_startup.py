"""Start-up and whole-process time against imitation 1.0.1, side by side.

Each measurement is a whole process, timed from outside (wall seconds, start to exit),
and the repeats are interleaved: in every repeat each pair runs imitation's side, then
ours, before the next pair starts, so both sides see the same machine load.

* ``bc_process``: ``tdimitation fit --config recipes/bc/cartpole.yaml --run.data_dir D``
  (its 50 scripted-expert demonstrations cached in D by a warm-up run) against
  ``benchmarks/reference/imitation_bc_process.py`` in the reference venv (the same 50
  episodes loaded from its own cache, BC 4 epochs at batch 32, 20 evaluation episodes,
  the policy saved).
* ``help``: ``tdimitation --help`` (ours only).
* ``import``: ``from tdimitation.algorithms import BC; from tdimitation.data import
  rollout`` against ``from imitation.algorithms.bc import BC; from
  imitation.data.rollout import rollout``.

``import_split`` (ours, one extra process per repeat) times the imports a fit makes one
after another, each line the cost of what the lines before have not loaded yet.
Our commands run as ``python -m tdimitation.cli`` with this checkout first on the path.

Usage::

    PYTHONPATH=$PWD python benchmarks/bench_startup.py [--repeats 5] \
        [--out benchmarks/results/startup.json]
    python benchmarks/bench_startup.py --summary [--write]   # RESULTS.md section from --out
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _reference import REFERENCE_DIR, reference_python  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "startup.json"
RESULTS_MD = ROOT / "benchmarks" / "RESULTS.md"
BEGIN, END = "<!-- startup:begin -->", "<!-- startup:end -->"
RECIPE = ROOT / "recipes" / "bc" / "cartpole.yaml"
OUR_IMPORT = "from tdimitation.algorithms import BC; from tdimitation.data import rollout"
THEIR_IMPORT = "from imitation.algorithms.bc import BC; from imitation.data.rollout import rollout"
# What the stack this project is built on costs to import, before any code of ours.
STACK_IMPORT = "import lightning.pytorch, torchrl.collectors, torchrl.envs, mlflow"

# Imports of a BC fit in the order they happen; each step's time is what it adds.
IMPORT_SPLIT = """
import json, time
t = [time.perf_counter()]
names = []
def step(name, source):
    exec(source, {})
    t.append(time.perf_counter()); names.append(name)
step("torch", "import torch")
step("torch._dynamo (tensordict and Lightning import it)", "import torch._dynamo")
step("tensordict", "import tensordict")
step("scipy.signal (torchmetrics imports it)", "import scipy.signal")
step("torchmetrics", "import torchmetrics")
step("lightning", "import lightning")
step("torchrl (collectors, envs)", "import torchrl.collectors, torchrl.envs")
step("tdimitation BC", "from tdimitation.algorithms import BC")
step("tdimitation.fit (LightningCLI, jsonargparse)", "import tdimitation.fit")
step("mlflow", "import mlflow")
step("mlflow sqlite store (sqlalchemy, alembic)", "import mlflow.store.tracking.sqlalchemy_store")
print(json.dumps({n: b - a for n, a, b in zip(names, t, t[1:])}))
"""


def timed(command: list[str], env: dict[str, str] | None = None) -> tuple[float, str]:
    """Wall seconds of one process and its stdout; raises with its stderr tail if it fails."""
    start = time.perf_counter()
    out = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    elapsed = time.perf_counter() - start
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{out.stderr[-2000:]}")
    return elapsed, out.stdout


def last_fit_seconds(data_dir: Path) -> float:
    """``time/fit_seconds`` (``Trainer.fit``'s wall time) of the newest run in the store."""
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{data_dir.resolve()}/mlflow.db")
    experiment = client.get_experiment_by_name("bc")
    (run,) = client.search_runs(
        [experiment.experiment_id], order_by=["start_time DESC"], max_results=1
    )
    return run.data.metrics["time/fit_seconds"]


def loadavg() -> float:
    return os.getloadavg()[0]


def measure(args: argparse.Namespace) -> dict:
    theirs = reference_python()
    if theirs is None:
        raise SystemExit("no reference venv (see benchmarks/reference/README.md)")
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    )
    ours = [sys.executable, "-m", "tdimitation.cli"]
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="bench_startup_"))
    our_data, their_data = work / "tdimitation_data", work / "imitation_data"
    their_data.mkdir(parents=True, exist_ok=True)
    fit = [*ours, "fit", "--config", str(RECIPE), "--run.data_dir", str(our_data)]
    reference = [str(theirs), str(REFERENCE_DIR / "imitation_bc_process.py")]
    reference += ["--data-dir", str(their_data)]
    print(f"warm-up (collects and caches the demonstrations on both sides) in {work}", flush=True)
    timed(fit, env)
    timed(reference)
    pairs = [
        ("bc_process", reference, fit),
        ("help", None, [*ours, "--help"]),
        ("import", [str(theirs), "-c", THEIR_IMPORT], [sys.executable, "-c", OUR_IMPORT]),
        ("stack_import", None, [sys.executable, "-c", STACK_IMPORT]),
    ]
    result = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "loadavg_start": loadavg(),
        "repeats": [],
    }
    started = time.perf_counter()
    for repeat in range(args.repeats):
        row: dict = {"loadavg": loadavg()}
        for name, their_cmd, our_cmd in pairs:
            if their_cmd is not None:
                row[f"{name}_imitation_s"], stdout = timed(their_cmd)
                if name == "bc_process":
                    row["imitation_phases"] = json.loads(stdout.strip().splitlines()[-1])
            row[f"{name}_ours_s"], _ = timed(our_cmd, env)
            if name == "bc_process":
                row["ours_fit_s"] = last_fit_seconds(our_data)
            if their_cmd is not None:
                row[f"{name}_ratio"] = row[f"{name}_ours_s"] / row[f"{name}_imitation_s"]
        _, stdout = timed([sys.executable, "-c", IMPORT_SPLIT], env)
        row["import_split"] = json.loads(stdout.strip().splitlines()[-1])
        result["repeats"].append(row)
        done = repeat + 1
        eta = (time.perf_counter() - started) / done * (args.repeats - done)
        print(
            f"[{done}/{args.repeats}] BC process {row['bc_process_ours_s']:.2f} s vs "
            f"{row['bc_process_imitation_s']:.2f} s ({row['bc_process_ratio']:.2f}x); "
            f"--help {row['help_ours_s']:.2f} s; import {row['import_ours_s']:.2f} s vs "
            f"{row['import_imitation_s']:.2f} s; load {row['loadavg']:.2f}; "
            f"ETA {eta / 60:.1f} min",
            flush=True,
        )
    result["loadavg_end"] = loadavg()
    return result


def _median(rows: list[dict], key: str) -> float:
    return statistics.median(row[key] for row in rows)


def summary(result: dict) -> str:
    """The RESULTS.md section's body, from the JSON alone."""
    rows = result["repeats"]
    n = len(rows)

    def per_repeat(key: str, fmt: str = "{:.2f}") -> str:
        return " / ".join(fmt.format(row[key]) for row in rows)

    lines = [
        f"Measured {result['date']}, {n} interleaved repeats, 1-minute load average "
        f"{result['loadavg_start']:.2f} at the start and {result['loadavg_end']:.2f} at the end "
        f"(per repeat: {per_repeat('loadavg')}). Medians of the repeats; wall seconds of "
        "whole processes.",
        "",
        "| | tdimitation | imitation 1.0.1 | ours / imitation (per repeat) | target |",
        "|---|---|---|---|---|",
    ]
    bc_ratio = _median(rows, "bc_process_ratio")
    import_ratio = _median(rows, "import_ratio")
    help_s = _median(rows, "help_ours_s")
    lines.append(
        f"| BC CartPole recipe, cached demonstrations | {_median(rows, 'bc_process_ours_s'):.2f} "
        f"| {_median(rows, 'bc_process_imitation_s'):.2f} | **{bc_ratio:.2f}x** "
        f"({per_repeat('bc_process_ratio')}) | ≤ 0.5x: {'met' if bc_ratio <= 0.5 else 'not met'} |"
    )
    lines.append(
        f"| `tdimitation --help` | {help_s:.2f} | | | < 0.5 s: "
        f"{'met' if help_s < 0.5 else 'not met'} |"
    )
    lines.append(
        f"| import the public API (BC, rollout) | {_median(rows, 'import_ours_s'):.2f} "
        f"| {_median(rows, 'import_imitation_s'):.2f} | **{import_ratio:.2f}x** "
        f"({per_repeat('import_ratio')}) | < 1x: {'met' if import_ratio < 1 else 'not met'} |"
    )
    if "stack_import_ours_s" in rows[0]:
        stack = _median(rows, "stack_import_ours_s")
        their_process = _median(rows, "bc_process_imitation_s")
        lines.append(
            f"| import the stack alone (`{STACK_IMPORT}`) | {stack:.2f} | | "
            f"{stack / _median(rows, 'import_imitation_s'):.2f}x imitation's import; "
            f"{stack / their_process:.2f}x its whole BC process | |"
        )
    fit_s = _median(rows, "ours_fit_s")
    lines += [
        "",
        f"Our BC process, inside (medians): `Trainer.fit` {fit_s:.2f} s (4 epochs and the "
        "recipe's 4 evaluations of 10 episodes), the rest of the process "
        f"{_median(rows, 'bc_process_ours_s') - fit_s:.2f} s (imports below, the command "
        "line, the cached demonstrations, MLflow, the final evaluation of 20 episodes).",
    ]
    phases = ["import_s", "load_s", "train_s", "eval_s", "save_s"]
    lines += [
        "",
        "imitation's process, inside (medians): "
        + ", ".join(
            f"{p[:-2]} {statistics.median(r['imitation_phases'][p] for r in rows):.2f} s"
            for p in phases
        )
        + ".",
        "",
        "Our imports, one after another in a fresh process (medians; each line is what it "
        "adds to the lines above):",
        "",
        "| import | s |",
        "|---|---|",
    ]
    split_names = list(rows[0]["import_split"])
    for name in split_names:
        value = statistics.median(r["import_split"][name] for r in rows)
        lines.append(f"| {name} | {value:.2f} |")
    total = sum(statistics.median(r["import_split"][k] for r in rows) for k in split_names)
    lines.append(f"| total | {total:.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results file")
    parser.add_argument("--work-dir", default=None, help="data directories (default: temp)")
    parser.add_argument("--summary", action="store_true", help="print the section from --out")
    parser.add_argument("--write", action="store_true", help="with --summary: into RESULTS.md")
    args = parser.parse_args()
    if not args.summary:
        result = measure(args)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1))
        print(f"wrote {args.out}")
    text = summary(json.loads(args.out.read_text()))
    print(text)
    if args.write:
        content = RESULTS_MD.read_text()
        head, rest = content.split(BEGIN, 1)
        _, tail = rest.split(END, 1)
        RESULTS_MD.write_text(f"{head}{BEGIN}\n{text}\n{END}{tail}")
        print(f"updated {RESULTS_MD}")


if __name__ == "__main__":
    main()
