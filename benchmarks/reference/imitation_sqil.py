"""imitation 1.0.1 SQIL on CartPole-v1 with its tutorial settings: time to a return of 475.

Runs inside the reference virtualenv (see setup_venv.sh). The tutorial's settings: one
``CartPole-v1`` env in a ``DummyVecEnv``, ``SQIL(venv, demonstrations, policy="MlpPolicy")``
(SB3 DQN with its defaults), one ``train(total_timesteps=...)`` call. The seed is passed to
DQN (``rl_kwargs={"seed": seed}``), which changes nothing else.

Demonstrations are the trajectory dataset at ``--demos`` (written by tdimitation's
``save_trajectories`` from the scripted expert, read with ``imitation.data.serialize.load``),
so both libraries learn from the same episodes.

An SB3 callback evaluates the greedy policy every ``--eval-every`` env steps
(``--eval-episodes`` deterministic episodes, SB3 ``evaluate_policy`` on a separate env
seeded 10,000 + seed); evaluation time is excluded from the training time. Training stops
at the first evaluation >= 475, after ``--max-steps`` env steps, or once the training time
passes ``--max-seconds``. The last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import gymnasium as gym
import numpy as np
import torch
from imitation.algorithms import sqil
from imitation.data import serialize
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.vec_env import DummyVecEnv

TARGET = 475.0


class TimeToTarget(BaseCallback):
    """Periodic greedy evaluation; stops training at the target or the caps."""

    def __init__(self, eval_env, every: int, episodes: int, max_seconds: float) -> None:
        super().__init__()
        self.eval_env, self.every, self.episodes = eval_env, every, episodes
        self.max_seconds = max_seconds
        self.start = time.perf_counter()
        self.eval_seconds = 0.0
        self.returns: list[tuple[int, float]] = []
        self.first_target: dict | None = None

    def train_seconds(self) -> float:
        return time.perf_counter() - self.start - self.eval_seconds

    def _on_step(self) -> bool:
        if self.num_timesteps % self.every:
            return True
        mark = time.perf_counter()
        mean, _ = evaluate_policy(
            self.model.policy, self.eval_env, self.episodes, deterministic=True
        )
        self.eval_seconds += time.perf_counter() - mark
        self.returns.append((int(self.num_timesteps), round(float(mean), 1)))
        if mean >= TARGET:
            self.first_target = {"frames": int(self.num_timesteps), "seconds": self.train_seconds()}
            return False
        return self.train_seconds() < self.max_seconds


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--demos", required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-steps", type=int, default=1_000_000)
    parser.add_argument("--max-seconds", type=float, default=1800.0)
    parser.add_argument("--eval-every", type=int, default=5000)
    parser.add_argument("--eval-episodes", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(1)
    np.random.seed(args.seed)

    demonstrations = serialize.load(args.demos)
    venv = DummyVecEnv([lambda: gym.make("CartPole-v1")])
    venv.seed(args.seed)
    eval_env = DummyVecEnv([lambda: gym.make("CartPole-v1")])
    eval_env.seed(10_000 + args.seed)
    trainer = sqil.SQIL(
        venv=venv,
        demonstrations=demonstrations,
        policy="MlpPolicy",
        rl_kwargs={"seed": args.seed},
    )
    callback = TimeToTarget(eval_env, args.eval_every, args.eval_episodes, args.max_seconds)
    trainer.train(total_timesteps=args.max_steps, callback=callback)
    print(
        json.dumps(
            {
                "settings": "tutorial: 1 env, SB3 DQN defaults, MlpPolicy",
                "n_demo_episodes": len(demonstrations),
                "first_target": callback.first_target,
                "train_seconds": round(callback.train_seconds(), 1),
                "frames": int(trainer.rl_algo.num_timesteps),
                "final_eval_return": callback.returns[-1][1] if callback.returns else None,
                "returns": callback.returns,
                "loadavg": os.getloadavg()[0],
            }
        )
    )


if __name__ == "__main__":
    main()
