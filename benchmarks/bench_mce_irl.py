"""MCE IRL speed on CliffWorld100x20XY (2,000 states, horizon 110) against imitation 1.0.1.

Per repeat, in one run: ``imitation``'s ``mce_partition_fh`` and ``MCEIRL.train``
(``reference/imitation_mce_irl.py`` in the reference venv, when present), then ours on the
same MDP: ``soft_value_iteration`` on the true reward, and MCE IRL iterations with the
same reward MLP (256 hidden units on the XY observations), the same demonstrations (the
expert's exact occupancy measure) and Adam at lr 0.01, through ``lightning.Trainer.fit``
(Lightning's per-step overhead included) and through ``MCEIRL.fit`` (no Trainer). One
torch/BLAS thread on both sides. The table gives medians over repeats and the median of
the per-repeat ratios; the last stdout line is JSON.

Also, ``--quality``: MCE IRL on CliffWorld15x6 (one-hot observations, linear reward) for
discounts 1 and 0.99, printing the final L∞ occupancy gap recomputed from the learned
reward (target < 1e-3).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import warnings

import lightning as L
import torch
from _reference import run_reference

from tdimitation.algorithms import (
    MCEIRL,
    TabularTensors,
    occupancy_measures,
    soft_value_iteration,
)
from tdimitation.envs import CliffWorld

ENV_ID = "tdimitation/CliffWorld100x20XY-v0"


def ours_soft_vi(model: TabularTensors, calls: int) -> float:
    soft_value_iteration(model)  # warm-up
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        soft_value_iteration(model)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _module(iterations: int) -> MCEIRL:
    module = MCEIRL(
        ENV_ID,
        "expert",
        hidden_sizes=[256],
        lr=0.01,
        linf_eps=0.0,
        grad_l2_eps=0.0,
        max_iter=iterations,
        log_every=10**9,
    )
    module.num_threads = 1
    return module


def ours_iteration_trainer(iterations: int) -> float:
    module = _module(iterations)
    trainer = L.Trainer(
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    start = time.perf_counter()
    trainer.fit(module)
    elapsed = time.perf_counter() - start
    assert module.iteration == iterations
    return elapsed / iterations


def ours_iteration_plain(iterations: int) -> float:
    module = _module(iterations)
    module.fit(max_iter=1)  # warm-up
    start = time.perf_counter()
    module.fit(max_iter=1 + iterations)
    return (time.perf_counter() - start) / iterations


def quality() -> dict[str, float]:
    out = {}
    for discount in (1.0, 0.99):
        module = MCEIRL("tdimitation/CliffWorld15x6-v0", "expert", discount=discount, lr=0.2)
        start = time.perf_counter()
        metrics = module.fit(max_iter=5000)
        seconds = time.perf_counter() - start
        model = TabularTensors(CliffWorld(15, 6, 18))
        reward = module.state_rewards().detach()
        learned = occupancy_measures(model, reward=reward, discount=discount)[1]
        expert = occupancy_measures(model, discount=discount)[1]
        gap = float((learned - expert).abs().max())
        print(
            f"CliffWorld15x6 discount {discount}: L-inf gap {gap:.2e} after "
            f"{module.iteration} iterations ({seconds:.1f} s; converged={metrics['converged']})"
        )
        out[f"quality_gap_{discount}"] = gap
        out[f"quality_iterations_{discount}"] = module.iteration
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--vi-calls", type=int, default=10)
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--ref-iterations", type=int, default=3)
    parser.add_argument("--no-imitation", action="store_true")
    parser.add_argument("--quality", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    model = TabularTensors(CliffWorld(100, 20, 110, use_xy_obs=True))
    ours_iteration_trainer(2)  # warm-up (imports, first fit)
    runs: dict[str, list[float]] = {}
    ratios: dict[str, list[float]] = {}
    for _ in range(args.repeats):
        run: dict[str, float] = {}
        if not args.no_imitation:
            ref = run_reference(
                "imitation_mce_irl.py",
                "--vi-calls",
                "3",
                "--iterations",
                str(args.ref_iterations),
            )
            if ref:
                run.update(ref)
        run["ours_soft_vi_s"] = ours_soft_vi(model, args.vi_calls)
        run["ours_iteration_trainer_s"] = ours_iteration_trainer(args.iterations)
        run["ours_iteration_plain_s"] = ours_iteration_plain(args.iterations)
        if "imitation_soft_vi_s" in run:
            ratios.setdefault("soft_vi", []).append(
                run["ours_soft_vi_s"] / run["imitation_soft_vi_s"]
            )
            ratios.setdefault("iteration_trainer", []).append(
                run["ours_iteration_trainer_s"] / run["imitation_iteration_s"]
            )
        for key, value in run.items():
            runs.setdefault(key, []).append(value)
        print(json.dumps(run), flush=True)
    summary = {k: statistics.median(v) for k, v in runs.items()}
    summary.update({f"ratio_{k}": statistics.median(v) for k, v in ratios.items()})
    print("| measure | seconds (median) |\n| --- | --- |")
    for key, value in summary.items():
        print(f"| {key} | {value:.4f} |")
    if args.quality:
        summary.update(quality())
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
