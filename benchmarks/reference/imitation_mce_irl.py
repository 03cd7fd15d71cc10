"""imitation 1.0.1 MCE IRL speed on CliffWorld100x20XY (run in the reference venv).

seals' CliffWorld (width 100, height 20, horizon 110, XY observations: 2,000 states):
seconds per ``mce_partition_fh`` call (soft value iteration on the true reward) and per
``MCEIRL.train`` iteration (reward MLP on observations, demonstrations given as the
expert's occupancy measure, stopping thresholds at 0 so every iteration runs). Torch and
BLAS use one thread, as our side. The last stdout line is JSON.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # before numpy loads its BLAS

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from imitation.algorithms import mce_irl  # noqa: E402
from imitation.rewards import reward_nets  # noqa: E402
from seals.diagnostics.cliff_world import CliffWorldEnv  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--vi-calls", type=int, default=5)
    parser.add_argument("--iterations", type=int, default=5)
    parser.add_argument("--hidden", type=int, nargs="*", default=[256])
    args = parser.parse_args()
    torch.set_num_threads(1)
    env = CliffWorldEnv(width=100, height=20, horizon=110, use_xy_obs=True)
    mce_irl.mce_partition_fh(env)  # warm-up
    times = []
    for _ in range(args.vi_calls):
        start = time.perf_counter()
        _, _, pi = mce_irl.mce_partition_fh(env)
        times.append(time.perf_counter() - start)
    vi = float(np.median(times))
    _, om = mce_irl.mce_occupancy_measures(env, pi=pi)
    torch.manual_seed(0)
    net = reward_nets.BasicRewardNet(
        env.observation_space,
        env.action_space,
        hid_sizes=args.hidden,
        use_action=False,
        use_done=False,
        use_next_state=False,
    )
    trainer = mce_irl.MCEIRL(
        om,
        env,
        net,
        rng=np.random.default_rng(0),
        linf_eps=0.0,
        grad_l2_eps=0.0,
        log_interval=None,
        optimizer_kwargs={"lr": 0.01},
    )
    trainer.train(max_iter=1)  # warm-up
    start = time.perf_counter()
    trainer.train(max_iter=args.iterations)
    per_iter = (time.perf_counter() - start) / args.iterations
    print(json.dumps({"imitation_soft_vi_s": vi, "imitation_iteration_s": per_iter}))


if __name__ == "__main__":
    main()
