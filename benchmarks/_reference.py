"""The reference virtualenv (imitation 1.0.1 + Stable-Baselines3; see reference/README.md).

Benchmarks run `imitation`/SB3 scripts there, in the same run as ours, so that ratios are
taken on one machine at one time.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
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
