"""Density-based reward: scoring speed against imitation 1.0.1, and the ranking check.

Speed (side by side, interleaved in one run): a state-action Gaussian KDE (bandwidth 0.5,
standardised inputs) is fitted on 10,000 CartPole transitions of the scripted expert (20
fixed-horizon episodes), then scores transitions of a uniformly random policy. Ours:
:class:`~tdimitation.rewards.DensityRewardNet` (torch, float32, one thread) scores
``--queries`` transitions in one call; imitation: ``DensityAlgorithm``'s reward function
(``benchmarks/reference/imitation_density.py``, run in the reference venv on the same
data) scores ``--reference-queries`` of them. The rounds alternate ours / imitation, and
the medians are compared. Both sides' rewards on the first 200 queries are compared too.

Ranking: for every density type (state, state-action, state-state), both kernels and
both stationary and per-time-step models, the density is fitted on 20 expert episodes of
fixed-horizon CartPole; 10 held-out expert episodes (other initial states) and 10
random-policy episodes are scored by their mean log-density per step. It passes when every
held-out expert episode scores above every random one.

Examples::

    python benchmarks/bench_density.py                 # both parts
    python benchmarks/bench_density.py --skip-ranking --rounds 5 --json out.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _reference import run_reference  # noqa: E402

from tdimitation.data.rollout import rollout  # noqa: E402
from tdimitation.envs import make_env  # noqa: E402
from tdimitation.policies.registry import policy_from_string  # noqa: E402
from tdimitation.rewards import DensityRewardNet  # noqa: E402
from tdimitation.rewards.density import DENSITY_TYPES, KERNELS  # noqa: E402

ENV_ID = "tdimitation/CartPoleFixed-v1"


def episodes(policy: str, n: int, seed: int, deterministic: bool = True):
    env = make_env(ENV_ID, num_envs=min(n, 10), seed=seed)
    try:
        pol = (
            policy_from_string(policy, env=env, seed=seed)
            if policy == "random"
            else (policy_from_string(policy, env=env))
        )
        return rollout(pol, env, min_episodes=n, deterministic=deterministic)
    finally:
        env.close()


def random_transitions(n: int, seed: int):
    env = make_env("CartPole-v1", num_envs=8, seed=seed)
    try:
        pol = policy_from_string("random", env=env, seed=seed)
        return rollout(pol, env, min_timesteps=n)[:n]
    finally:
        env.close()


# ------------------------------------------------------------------ speed
def speed(args: argparse.Namespace) -> dict:
    demos = episodes("scripted", 20, seed=0)[: args.demonstrations]
    queries = random_transitions(args.queries, seed=1)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "density.npz"
        np.savez(
            data,
            demo_obs=demos["observation"].numpy(),
            demo_acts=demos["action"].numpy(),
            demo_next_obs=demos["next", "observation"].numpy(),
            query_obs=queries["observation"].numpy(),
            query_acts=queries["action"].numpy(),
            query_next_obs=queries["next", "observation"].numpy(),
        )
        ours, theirs, reference = [], [], None
        for _ in range(args.rounds):
            ours.append(score_ours(demos, queries))
            ref = run_reference(
                "imitation_density.py", str(data), "--queries", args.reference_queries
            )
            if ref is not None:
                reference = ref
                theirs.append(ref["transitions_per_s"])
    ours_tps = statistics.median(r["transitions_per_s"] for r in ours)
    result = {
        "demonstrations": demos.numel(),
        "queries_ours": queries.numel(),
        "ours_transitions_per_s": ours_tps,
        "ours_fit_s": statistics.median(r["fit_s"] for r in ours),
        "ours_rounds": [r["transitions_per_s"] for r in ours],
    }
    if theirs:
        mine = np.array(ours[-1]["rewards"][: len(reference["rewards"])])
        ref_rewards = np.array(reference["rewards"])
        # scikit-learn sums kernels in linear space: below a log-density of about -700 they
        # underflow float64 and its tree bounds take over, so only values above are compared.
        comparable = ref_rewards > -600
        diff = np.abs(mine - ref_rewards)[comparable]
        exact = brute_force(demos, queries[: len(mine)])
        result |= {
            "compared_rewards": int(comparable.sum()),
            "max_abs_difference_to_float64_formula": float(np.abs(mine - exact).max()),
            "imitation_transitions_per_s": statistics.median(theirs),
            "imitation_rounds": theirs,
            "imitation_fit_s": reference["fit_s"],
            "queries_imitation": reference["queries"],
            "speedup": ours_tps / statistics.median(theirs),
            "max_abs_reward_difference": float(diff.max()),
            "max_abs_difference_imitation_to_float64_formula": float(
                np.abs(ref_rewards - exact).max()
            ),
            "imitation_versions": reference["versions"],
        }
    return result


def brute_force(demos, queries) -> np.ndarray:
    """The state-action Gaussian KDE (bandwidth 0.5) written out in float64."""

    def features(td):
        one_hot = torch.nn.functional.one_hot(td["action"], 2)
        return torch.cat([td["observation"].double(), one_hot.double()], -1)

    x, y = features(demos), features(queries)
    mean, std = x.mean(0), x.std(0, unbiased=False)
    zx, zy = (x - mean) / std / 0.5, (y - mean) / std / 0.5
    sq = (zy[:, None] - zx[None]).square().sum(-1)
    d = x.shape[1]
    log_norm = -0.5 * d * np.log(2 * np.pi) - d * np.log(0.5) - np.log(len(x))
    return (torch.logsumexp(-0.5 * sq, 1) + log_norm).numpy()


def score_ours(demos, queries) -> dict:
    net = DensityRewardNet((4,), 2, True, density_type="state_action", bandwidth=0.5)
    start = time.perf_counter()
    net.fit(demos)
    fit_s = time.perf_counter() - start
    start = time.perf_counter()
    rewards = net(queries.copy())["learned_reward"][:, 0]
    score_s = time.perf_counter() - start
    return {
        "fit_s": fit_s,
        "score_s": score_s,
        "transitions_per_s": queries.numel() / score_s,
        "rewards": rewards[:200].tolist(),
    }


# ---------------------------------------------------------------- ranking
def episode_scores(net: DensityRewardNet, trajectories) -> torch.Tensor:
    reward = net(trajectories.copy())["learned_reward"][:, 0].double()
    ids = trajectories["episode"]
    _, index = torch.unique_consecutive(ids, return_inverse=True)
    sums = torch.zeros(int(index.max()) + 1, dtype=torch.float64).index_add_(0, index, reward)
    counts = torch.bincount(index).double()
    return sums / counts


def ranking() -> list[dict]:
    train = episodes("scripted", 20, seed=0)
    held_out = episodes("scripted", 10, seed=1000)
    random = episodes("random", 10, seed=2000, deterministic=False)
    rows = []
    for density_type in DENSITY_TYPES:
        for kernel in KERNELS:
            for stationary in (True, False):
                net = DensityRewardNet(
                    (4,),
                    2,
                    True,
                    density_type=density_type,
                    kernel=kernel,
                    stationary=stationary,
                ).fit(train)
                expert, rand = episode_scores(net, held_out), episode_scores(net, random)
                rows.append(
                    {
                        "density_type": density_type,
                        "kernel": kernel,
                        "stationary": stationary,
                        "expert_min": float(expert.min()),
                        "random_max": float(rand.max()),
                        "ranked": bool(expert.min() > rand.max()),
                    }
                )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demonstrations", type=int, default=10_000)
    parser.add_argument("--queries", type=int, default=50_000)
    parser.add_argument("--reference-queries", type=int, default=2_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--skip-ranking", action="store_true")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    out: dict = {"date": time.strftime("%Y-%m-%d"), "torch_threads": 1}
    if not args.skip_speed:
        out["speed"] = s = speed(args)
        print(f"ours: {s['ours_transitions_per_s']:,.0f} transitions/s (rounds {s['ours_rounds']})")
        if "speedup" in s:
            print(
                f"imitation: {s['imitation_transitions_per_s']:,.0f} transitions/s; "
                f"speedup {s['speedup']:.1f}x; rewards differ by at most "
                f"{s['max_abs_reward_difference']:.1e} on the {s['compared_rewards']} of 200 "
                "above -600; to a float64 formula: ours "
                f"{s['max_abs_difference_to_float64_formula']:.1e}, imitation "
                f"{s['max_abs_difference_imitation_to_float64_formula']:.1e}"
            )
        else:
            print("imitation: reference venv missing or failed (no comparison)")
    if not args.skip_ranking:
        out["ranking"] = rows = ranking()
        print("| density | kernel | stationary | worst held-out expert | best random | ranked |")
        print("|---|---|---|---|---|---|")
        for r in rows:
            print(
                f"| {r['density_type']} | {r['kernel']} | {r['stationary']} | "
                f"{r['expert_min']:.2f} | {r['random_max']:.2f} | {'yes' if r['ranked'] else 'NO'}"
                " |"
            )
    if args.json is not None:
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
