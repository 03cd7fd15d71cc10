"""Normalised scores of BC and DAgger (random = 0, expert = 1) with scripted experts.

For each environment: the random policy's and the scripted expert's mean return (20
episodes each, the expert deterministic), then BC trained on ``--demos`` expert episodes
and DAgger with ``--rounds`` rounds, each evaluated over 20 deterministic episodes.

Run: ``python benchmarks/bench_imitation_scores.py [--envs Pendulum-v1 ...]``.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings

import lightning as L
import torch

ENVS = {
    "Pendulum-v1": {},
    "LunarLander-v3": {},
    "LunarLander-v3 (continuous)": {"continuous": True},
}


def trainer() -> L.Trainer:
    return L.Trainer(
        max_epochs=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )


def mean_return(policy_spec_or_module, env_id: str, env_kwargs: dict, deterministic: bool) -> float:
    from tdimitation.data import rollout, rollout_stats
    from tdimitation.envs import make_env
    from tdimitation.policies import policy_from_string

    env = make_env(env_id, num_envs=10, seed=20_000, env_kwargs=env_kwargs)
    policy = (
        policy_from_string(policy_spec_or_module, env=env, seed=0)
        if isinstance(policy_spec_or_module, str)
        else policy_spec_or_module
    )
    return rollout_stats(rollout(policy, env, min_episodes=20, deterministic=deterministic))[
        "return_mean"
    ]


def normalised(value: float, random_return: float, expert_return: float) -> float:
    """Score with random = 0 and expert = 1."""
    return (value - random_return) / (expert_return - random_return)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--envs", nargs="+", default=list(ENVS))
    parser.add_argument("--demos", type=int, default=50)
    parser.add_argument("--bc-epochs", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    from tdimitation.algorithms import BC, DAgger, DemonstrationData

    rows = []
    for name in args.envs:
        env_id, env_kwargs = name.split(" ")[0], ENVS[name]
        random_ret = mean_return("random", env_id, env_kwargs, deterministic=False)
        expert_ret = mean_return("scripted", env_id, env_kwargs, deterministic=True)
        start = time.perf_counter()
        bc = BC(
            env_id,
            n_epochs=args.bc_epochs,
            batch_size=64,
            hidden_sizes=(64, 64),
            env_kwargs=env_kwargs,
            seed=0,
        )
        trainer().fit(
            bc,
            datamodule=DemonstrationData(
                env_id, expert="scripted", n_episodes=args.demos, env_kwargs=env_kwargs
            ),
        )
        bc_ret, bc_s = mean_return(bc.policy, env_id, env_kwargs, True), time.perf_counter() - start
        start = time.perf_counter()
        dagger = DAgger(
            env_id,
            expert="scripted",
            n_rounds=args.rounds,
            rampdown_rounds=args.rounds,
            num_envs=8,
            min_episodes=8,
            bc_epochs=4,
            batch_size=64,
            hidden_sizes=(64, 64),
            env_kwargs=env_kwargs,
            seed=0,
        )
        trainer().fit(dagger)
        dagger_ret, dagger_s = (
            mean_return(dagger.policy, env_id, env_kwargs, True),
            time.perf_counter() - start,
        )

        rows.append(
            {
                "env": name,
                "random": random_ret,
                "expert": expert_ret,
                "bc": bc_ret,
                "bc_score": normalised(bc_ret, random_ret, expert_ret),
                "bc_s": bc_s,
                "dagger": dagger_ret,
                "dagger_score": normalised(dagger_ret, random_ret, expert_ret),
                "dagger_s": dagger_s,
                "dagger_transitions": dagger.transitions_collected,
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    print("\n| env | random | expert | BC return (score) | DAgger return (score, transitions) |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['env']} | {r['random']:.1f} | {r['expert']:.1f} | {r['bc']:.1f} "
            f"({r['bc_score']:.2f}) | {r['dagger']:.1f} ({r['dagger_score']:.2f}, "
            f"{r['dagger_transitions']}) |"
        )


if __name__ == "__main__":
    main()
