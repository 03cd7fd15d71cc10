"""imitation 1.0.1 BC training throughput (run in the reference venv).

50,000 CartPole-like transitions (random observations, random binary actions), imitation's
default BC policy (FeedForward32Policy, 32-32), ``bc.train(n_batches=...)``; samples/s for
each batch size. The last stdout line is JSON: ``{"imitation_bc_<bs>": samples_per_s}``.
"""

from __future__ import annotations

import argparse
import json
import time

import gymnasium as gym
import numpy as np
import torch
from imitation.algorithms import bc
from imitation.data import types


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--transitions", type=int, default=50_000)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 256])
    parser.add_argument("--samples", type=int, default=200_000)
    args = parser.parse_args()
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    n = args.transitions
    obs = rng.normal(size=(n, 4)).astype(np.float32)
    transitions = types.Transitions(
        obs=obs,
        acts=rng.integers(0, 2, n),
        infos=np.array([{}] * n),
        next_obs=obs,
        dones=np.zeros(n, dtype=bool),
    )
    env = gym.make("CartPole-v1")
    out = {}
    for bs in args.batch_sizes:
        trainer = bc.BC(
            observation_space=env.observation_space,
            action_space=env.action_space,
            rng=rng,
            demonstrations=transitions,
            batch_size=bs,
            device="cpu",
        )
        trainer.train(n_batches=20, progress_bar=False, log_interval=10**9)  # warm-up
        batches = max(args.samples // bs, 50)
        start = time.perf_counter()
        trainer.train(n_batches=batches, progress_bar=False, log_interval=10**9)
        out[f"imitation_bc_{bs}"] = batches * bs / (time.perf_counter() - start)
        print(f"batch {bs}: {out[f'imitation_bc_{bs}']:.0f} samples/s")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
