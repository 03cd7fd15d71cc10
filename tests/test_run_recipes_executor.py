"""benchmarks/run_recipes.py runs its jobs through Ray when asked (the sweep extra)."""

import os
import sys
from pathlib import Path

import pytest

pytest.importorskip("ray")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from run_recipes import Job, RayExecutor, SequentialExecutor  # noqa: E402


def _where(job: Job) -> dict:
    return {"recipe": job.recipe, "seed": job.seed, "pid": os.getpid()}


def test_ray_executor_runs_every_job_in_ray_workers():
    jobs = [Job("bc/cartpole", seed) for seed in range(4)]
    rows = list(RayExecutor(cpus=2).map(_where, jobs))
    assert sorted(r["seed"] for r in rows) == [0, 1, 2, 3]
    assert all(r["pid"] != os.getpid() for r in rows)  # not in this process
    sequential = list(SequentialExecutor().map(_where, jobs))
    assert [r["pid"] for r in sequential] == [os.getpid()] * 4
