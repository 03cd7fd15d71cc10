"""Collection throughput on CartPole-v1 with 8 sub-envs (issue: foundation, speed).

Variants, all measured in this process with interleaved repeats (median of REPEATS):

* ``gym_sync_random``: gymnasium ``make_vec`` sync env, random actions, no policy: the
  ceiling of any collector over the same vector env;
* ``torchrl_stock``: torchrl's ``Collector`` over ``GymWrapper(make_vec(sync, DISABLED))``
  with a 64-64 ``ProbabilisticActor`` (the stock path);
* ``torchrl_collector_ours_env``: torchrl's ``Collector`` over our ``GymVecEnv`` with our
  64-64 ``CategoricalActor`` (torchrl's loop, our env and actor);
* ``ours_scripted`` / ``ours_mlp``: ``VecCollector`` with the scripted CartPole expert
  and with the 64-64 ``CategoricalActor`` (sampling + log-probabilities).

If a virtualenv with ``imitation`` 1.0.1 exists (``$IMITATION_VENV`` or
``/work/imitation-venv``; see ``benchmarks/reference/``), its collection is measured too.

Run: ``python benchmarks/bench_collection.py [--transitions 50000] [--repeats 3]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import warnings

import gymnasium as gym
import numpy as np
import torch
from _reference import run_reference
from gymnasium.vector import AutoresetMode
from torch import nn

NUM_ENVS = 8


def gym_ceiling(n: int) -> float:
    venv = gym.make_vec(
        "CartPole-v1",
        NUM_ENVS,
        vectorization_mode="sync",
        vector_kwargs={"autoreset_mode": AutoresetMode.DISABLED},
    )
    venv.reset(seed=0)
    rng = np.random.default_rng(0)
    start, done_frames = time.perf_counter(), 0
    while done_frames < n:
        _, _, term, trunc, _ = venv.step(rng.integers(0, 2, NUM_ENVS))
        done = term | trunc
        if done.any():
            venv.reset(options={"reset_mask": done})
        done_frames += NUM_ENVS
    return done_frames / (time.perf_counter() - start)


def time_collector(collector, n: int) -> float:
    it = iter(collector)
    next(it)  # warm-up batch (allocation, first reset)
    start, frames = time.perf_counter(), 0
    while frames < n:
        frames += next(it).numel()
    return frames / (time.perf_counter() - start)


def make_torchrl_stock(fpb: int):
    from tensordict.nn import TensorDictModule
    from torchrl.collectors import Collector
    from torchrl.envs import GymWrapper
    from torchrl.modules import MLP, OneHotCategorical, ProbabilisticActor

    def make():
        venv = gym.make_vec(
            "CartPole-v1",
            NUM_ENVS,
            vectorization_mode="sync",
            vector_kwargs={"autoreset_mode": AutoresetMode.DISABLED},
        )
        return GymWrapper(venv)

    env = make()
    net = MLP(in_features=4, out_features=2, num_cells=[64, 64], activation_class=nn.Tanh)
    actor = ProbabilisticActor(
        TensorDictModule(net, in_keys=["observation"], out_keys=["logits"]),
        in_keys=["logits"],
        out_keys=["action"],
        spec=env.action_spec,
        distribution_class=OneHotCategorical,
        return_log_prob=True,
    )
    return Collector(env, actor, frames_per_batch=fpb, total_frames=-1)


def make_torchrl_ours_env(fpb: int):
    from torchrl.collectors import Collector

    from tdimitation.envs import make_env
    from tdimitation.policies import CategoricalActor

    env = make_env("CartPole-v1", num_envs=NUM_ENVS, seed=0)
    actor = CategoricalActor(4, 2, (64, 64))
    return Collector(
        env, actor, frames_per_batch=fpb, total_frames=-1, track_traj_ids=False, trust_policy=True
    )


def make_ours(policy_name: str, fpb: int):
    from tdimitation.data import VecCollector
    from tdimitation.envs import make_env
    from tdimitation.policies import CategoricalActor
    from tdimitation.policies.scripted import make_scripted_policy

    env = make_env("CartPole-v1", num_envs=NUM_ENVS, seed=0)
    policy = (
        make_scripted_policy("cartpole")
        if policy_name == "scripted"
        else CategoricalActor(4, 2, (64, 64))
    )
    return VecCollector(env, policy, frames_per_batch=fpb)


def imitation_reference(transitions: int) -> dict[str, float] | None:
    return run_reference("imitation_collection.py", "--transitions", transitions)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--transitions", type=int, default=50_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps-per-batch", type=int, default=256)
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    fpb = NUM_ENVS * args.steps_per_batch

    collectors = {
        "torchrl_stock": make_torchrl_stock(fpb),
        "torchrl_collector_ours_env": make_torchrl_ours_env(fpb),
        "ours_scripted": make_ours("scripted", fpb),
        "ours_mlp": make_ours("mlp", fpb),
    }
    rates: dict[str, list[float]] = {"gym_sync_random": []} | {k: [] for k in collectors}
    for _ in range(args.repeats):
        rates["gym_sync_random"].append(gym_ceiling(args.transitions))
        for name, collector in collectors.items():
            rates[name].append(time_collector(collector, args.transitions))
    medians = {k: statistics.median(v) for k, v in rates.items()}
    reference = imitation_reference(args.transitions)

    ceiling = medians["gym_sync_random"]
    stock = medians["torchrl_stock"]
    print(
        f"\nCartPole-v1, {NUM_ENVS} sub-envs, {args.transitions} transitions, "
        f"median of {args.repeats} (transitions/s)\n"
    )
    print("| variant | transitions/s | range | / gym ceiling | / torchrl stock |")
    print("|---|---|---|---|---|")
    for name, values in rates.items():
        print(
            f"| {name} | {medians[name]:,.0f} | {min(values):,.0f}-{max(values):,.0f} | "
            f"{medians[name] / ceiling:.2f} | {medians[name] / stock:.2f} |"
        )
    if reference:
        for name, value in reference.items():
            if not isinstance(value, (int, float)):
                continue
            print(
                f"| {name} (separate venv) | {value:,.0f} | | {value / ceiling:.2f} | "
                f"{value / stock:.2f} |"
            )
        mlp = reference.get("imitation_sb3_mlp")
        if mlp:
            print(f"\nours_mlp / imitation_sb3_mlp = {medians['ours_mlp'] / mlp:.2f}")
        scripted = reference.get("imitation_scripted")
        if scripted:
            print(f"ours_scripted / imitation_scripted = {medians['ours_scripted'] / scripted:.2f}")
    print(json.dumps({"medians": medians, "imitation": reference}))
    for collector in collectors.values():
        collector.shutdown()


if __name__ == "__main__":
    main()
