"""Stable-Baselines3 PPO on CartPole-v1, measured side by side with tdimitation's PPO.

Runs inside the reference virtualenv (see setup_venv.sh). Two measurements, printed as one
JSON line at the end:

* ``--mode throughput``: SB3 defaults with 8 envs, n_steps 2048, batch 64 and
  ``--n-epochs`` (5 = imitation's tutorial setting); frames/s over ``--rounds`` rounds after
  one warm-up round, with the collection/update split.
* ``--mode solve``: the given hyperparameters; wall-clock (training only, evaluation
  excluded) until a deterministic 10-episode evaluation after a round reaches 475.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.evaluation import evaluate_policy


class Timer(BaseCallback):
    """Collection time per rollout; optional evaluation after each update."""

    def __init__(self, eval_env=None, target=None):
        super().__init__()
        self.collect = 0.0
        self.eval_time = 0.0
        self.eval_env, self.target = eval_env, target
        self.solved_at = None
        self._start = None
        self.rounds = 0

    def _on_rollout_start(self) -> None:
        if self.eval_env is not None and self.rounds > 0 and self.solved_at is None:
            t = time.perf_counter()
            mean, _ = evaluate_policy(
                self.model, self.eval_env, n_eval_episodes=10, deterministic=True
            )
            self.eval_time += time.perf_counter() - t
            if mean >= self.target:
                self.solved_at = (self.num_timesteps, time.perf_counter() - self.eval_time)
        self._start = time.perf_counter()

    def _on_rollout_end(self) -> None:
        self.collect += time.perf_counter() - self._start
        self.rounds += 1

    def _on_step(self) -> bool:
        return self.solved_at is None


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", choices=["throughput", "solve"], default="throughput")
    parser.add_argument("--n-epochs", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-frames", type=int, default=300_000)
    args = parser.parse_args()
    torch.set_num_threads(1)
    env = make_vec_env("CartPole-v1", n_envs=8, seed=args.seed)
    if args.mode == "throughput":
        model = PPO(
            "MlpPolicy",
            env,
            n_steps=2048,
            batch_size=64,
            n_epochs=args.n_epochs,
            seed=args.seed,
            device="cpu",
        )
        model.learn(8 * 2048)  # warm-up round
        timer = Timer()
        start = time.perf_counter()
        model.learn(8 * 2048 * args.rounds, callback=timer, reset_num_timesteps=False)
        total = time.perf_counter() - start
        frames = 8 * 2048 * args.rounds
        print(
            json.dumps(
                {
                    "sb3_fps": frames / total,
                    "sb3_collect_s": timer.collect,
                    "sb3_update_s": total - timer.collect,
                    "frames": frames,
                }
            )
        )
        return
    # Solve: the SB3-zoo CartPole settings (clip range kept constant, as ours).
    model = PPO(
        "MlpPolicy",
        env,
        n_steps=32,
        batch_size=256,
        gae_lambda=0.8,
        gamma=0.98,
        n_epochs=20,
        ent_coef=0.0,
        learning_rate=lambda f: 1e-3 * f,
        clip_range=0.2,
        seed=args.seed,
        device="cpu",
    )
    eval_env = make_vec_env("CartPole-v1", n_envs=1, seed=10_000 + args.seed)
    timer = Timer(eval_env, 475.0)
    start = time.perf_counter()
    model.learn(args.max_frames, callback=timer)
    frames, t = timer.solved_at if timer.solved_at else (None, None)
    print(
        json.dumps(
            {
                "sb3_solve_frames": frames,
                "sb3_solve_s": None if t is None else t - start,
                "sb3_total_s": time.perf_counter() - start - timer.eval_time,
            }
        )
    )


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
