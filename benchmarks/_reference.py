"""The reference virtualenv (imitation 1.0.1 + Stable-Baselines3; see reference/README.md).

Benchmarks run `imitation`/SB3 scripts there, in the same run as ours, so that ratios are
taken on one machine at one time.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

REFERENCE_DIR = Path(__file__).resolve().parent / "reference"


def reference_python() -> Path | None:
    """The venv's python (``$IMITATION_VENV`` or /work/imitation-venv), if it exists."""
    python = Path(os.environ.get("IMITATION_VENV", "/work/imitation-venv")) / "bin" / "python"
    return python if python.exists() else None


def run_reference(script: str, *args: str) -> dict | None:
    """Run ``reference/<script>`` in the venv; its last stdout line is parsed as JSON.

    Returns None when the venv is missing or the script fails (its stderr tail is printed).
    """
    python = reference_python()
    if python is None or not (REFERENCE_DIR / script).exists():
        return None
    out = subprocess.run(
        [str(python), str(REFERENCE_DIR / script), *map(str, args)],
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        print(f"reference {script} failed:", out.stderr[-1500:], file=sys.stderr)
        return None
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_reference_source(python: Path, source: str, *args: object) -> dict | None:
    """Run inline ``source`` with the venv's ``python``; parse its last stdout line as JSON.

    Returns None when it fails (its stderr tail is printed).
    """
    out = subprocess.run(
        [str(python), "-c", source, *map(str, args)], capture_output=True, text=True, check=False
    )
    if out.returncode != 0:
        print(f"reference run failed:\n{out.stderr[-2000:]}")
        return None
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_seeds(
    args: argparse.Namespace,
    run_ours: Callable[[int, argparse.Namespace], dict],
    run_reference_seed: Callable[[int, argparse.Namespace, Path], dict | None],
    summarize: Callable[[list[dict]], None],
) -> None:
    """Ours for every ``args.seeds``, then the reference (with ``args.sb3``), then a summary.

    One torch thread and quiet library logging, as every benchmark here; with
    ``args.json`` all results are also written there.
    """
    import torch

    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    logging.getLogger("torchrl").setLevel(logging.WARNING)
    results = []
    for seed in args.seeds:
        result = run_ours(seed, args)
        print(json.dumps(result), flush=True)
        results.append(result)
    if args.sb3:
        python = reference_python()
        if python is None:
            print("no reference venv; skipping SB3 (see benchmarks/reference/)")
        else:
            for seed in args.seeds:
                result = run_reference_seed(seed, args, python)
                if result is not None:
                    print(json.dumps(result), flush=True)
                    results.append(result)
    summarize(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
