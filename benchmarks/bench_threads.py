"""Which torch thread count trains fastest: ``trainer.fit`` from Python at 1, 2, ... threads.

What a user of the Python API waits for: ``trainer.fit(model, ...)`` wall-clock time, for

* BC on CartPole-v1 (the ``recipes/bc/cartpole.yaml`` settings: 50 scripted-expert
  episodes, 4 epochs at batch 32), and
* PPO on CartPole-v1 (8 envs x 256 steps, 10 epochs of batch 64, 8 rounds).

Each repeat runs every thread count once, in turn (interleaved, so a change of load hits
all of them alike); the table gives the median over repeats. ``num_threads`` is set on the
module (the ``FitCallbacks`` override), so the fit runs exactly at that count. The count
the algorithms use by default is ``tdimitation.utils.DEFAULT_NUM_THREADS``.

    python benchmarks/bench_threads.py --repeats 3 --threads 1 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
import warnings

import torch


def _trainer():
    import lightning as L

    return L.Trainer(
        max_epochs=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )


def fit_bc(threads: int, demos) -> float:
    from tdimitation.algorithms import BC, DemonstrationData

    model = BC("CartPole-v1", n_epochs=4, batch_size=32, seed=0)
    model.num_threads = threads
    data = DemonstrationData("CartPole-v1", trajectories=demos)
    start = time.perf_counter()
    _trainer().fit(model, datamodule=data)
    return time.perf_counter() - start


def fit_ppo(threads: int, demos) -> float:
    from tdimitation.rl import PPO

    model = PPO("CartPole-v1", num_envs=8, n_steps=256, batch_size=64, total_frames=8 * 2048)
    model.num_threads = threads
    start = time.perf_counter()
    _trainer().fit(model)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--json", help="also write the raw times here")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    import logging

    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    logging.getLogger("torchrl").setLevel(logging.ERROR)
    from tdimitation.data import rollout
    from tdimitation.envs import make_env
    from tdimitation.policies import policy_from_string

    env = make_env("CartPole-v1", num_envs=8, seed=0)
    demos = rollout(policy_from_string("scripted", env=env), env, min_episodes=50)
    env.close()
    jobs = {"bc": fit_bc, "ppo": fit_ppo}
    for job in jobs.values():  # warm-up: imports, first-call costs
        job(1, demos)
    times: dict[str, dict[int, list[float]]] = {j: {t: [] for t in args.threads} for j in jobs}
    for repeat in range(args.repeats):
        for name, job in jobs.items():
            for threads in args.threads:
                seconds = job(threads, demos)
                times[name][threads].append(seconds)
                step = f"repeat {repeat + 1}/{args.repeats} {name} {threads} threads"
                print(f"{step}: {seconds:.2f} s")
    load = os.getloadavg()[0]
    print(
        f"\ncores: {os.cpu_count()}, torch default threads: {torch.get_num_threads()}, "
        f"1-min load at the end: {load:.2f}\n"
    )
    print(
        "| fit | "
        + " | ".join(f"{t} thread{'s' if t > 1 else ''}" for t in args.threads)
        + " | fastest |"
    )
    print("|---|" + "---|" * (len(args.threads) + 1))
    for name in jobs:
        medians = {t: statistics.median(v) for t, v in times[name].items()}
        best = min(medians, key=medians.get)
        cells = " | ".join(f"{medians[t]:.2f} s" for t in args.threads)
        print(f"| {name} | {cells} | {best} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"times": times, "load": load}, f, indent=1)


if __name__ == "__main__":
    main()
