"""Reference density-reward scoring speed of imitation 1.0.1 (``DensityAlgorithm``).

Run with the imitation venv (see setup_venv.sh), not the project's own venv:

    /work/imitation-venv/bin/python benchmarks/reference/imitation_density.py DATA.npz \
        [--queries M] [--kernel gaussian] [--bandwidth 0.5]

``DATA.npz`` (written by ``benchmarks/bench_density.py``) holds the demonstrations
(``demo_obs``, ``demo_acts``, ``demo_next_obs``: CartPole transitions) and the queries
(``query_obs``, ``query_acts``, ``query_next_obs``). A state-action ``DensityAlgorithm``
(stationary, standardised inputs) is built on a CartPole ``DummyVecEnv``, fitted with
``train()``, and its reward function (``algo(state, action, next_state, done)``, what the
reward wrapper calls during RL) scores the first M queries in one call.

Times (``torch.set_num_threads(1)``, imports and data loading excluded): ``fit_s`` (the
``train()`` call) and ``score_s``; ``transitions_per_s = M / score_s``. The last stdout
line is one JSON object, with the first 200 rewards so the caller can compare values.
"""

from __future__ import annotations

import argparse
import json
import time

import gymnasium as gym
import imitation
import numpy as np
import sklearn
import torch
from imitation.algorithms.density import DensityAlgorithm, DensityType
from imitation.data import types
from stable_baselines3.common.vec_env import DummyVecEnv

DENSITY_TYPES = {
    "state": DensityType.STATE_DENSITY,
    "state_action": DensityType.STATE_ACTION_DENSITY,
    "state_state": DensityType.STATE_STATE_DENSITY,
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("data")
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--kernel", default="gaussian")
    parser.add_argument("--bandwidth", type=float, default=0.5)
    parser.add_argument("--density-type", default="state_action", choices=sorted(DENSITY_TYPES))
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = np.load(args.data)
    n = len(data["demo_obs"])
    demos = types.Transitions(
        obs=data["demo_obs"],
        acts=data["demo_acts"],
        infos=np.array([{}] * n),
        next_obs=data["demo_next_obs"],
        dones=np.zeros(n, dtype=bool),
    )
    venv = DummyVecEnv([lambda: gym.make("CartPole-v1")])
    algo = DensityAlgorithm(
        demonstrations=demos,
        venv=venv,
        rng=np.random.default_rng(0),
        density_type=DENSITY_TYPES[args.density_type],
        kernel=args.kernel,
        kernel_bandwidth=args.bandwidth,
        is_stationary=True,
        standardise_inputs=True,
    )
    start = time.perf_counter()
    algo.train()
    fit_s = time.perf_counter() - start
    m = min(args.queries, len(data["query_obs"]))
    obs, acts = data["query_obs"][:m], data["query_acts"][:m]
    next_obs = data["query_next_obs"][:m]
    start = time.perf_counter()
    rewards = algo(obs, acts, next_obs, np.zeros(m, dtype=bool))
    score_s = time.perf_counter() - start
    print(
        json.dumps(
            {
                "demonstrations": n,
                "queries": m,
                "fit_s": fit_s,
                "score_s": score_s,
                "transitions_per_s": m / score_s,
                "rewards": [float(r) for r in rewards[:200]],
                "versions": {"imitation": imitation.__version__, "sklearn": sklearn.__version__},
            }
        )
    )


if __name__ == "__main__":
    main()
