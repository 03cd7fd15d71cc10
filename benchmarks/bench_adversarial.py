"""GAIL and AIRL on fixed-horizon CartPole: speed and learning, side by side with `imitation`.

* ``--mode speed``: `imitation`'s tutorial settings on both sides (8 envs; PPO 2048 steps
  per env per round, minibatch 64, 5 epochs; GAIL: demo batch 1024, 8 discriminator
  updates per round; AIRL: demo batch 2048, 16 updates; generator buffer 512). Wall-clock
  per 100,000 generator steps after a warm-up round, split into collection, generator
  update and discriminator update. `imitation` runs in the reference virtualenv
  (``benchmarks/reference/imitation_adversarial.py``) right after ours.
* ``--mode quality``: the shipped recipes (``recipes/gail/cartpole_fixed.yaml``,
  ``recipes/airl/cartpole_fixed.yaml``) for several seeds; a deterministic 20-episode
  evaluation after every round (its time excluded), the frames and training seconds at
  which the mean true return first reaches 475, and the final evaluation.

Both use 60 scripted-expert episodes as demonstrations.

Run: ``python benchmarks/bench_adversarial.py --mode speed|quality [--algos gail airl]
[--seeds 0 1 2] [--skip-reference]``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
import warnings
from pathlib import Path

import lightning as L
import torch
import yaml
from _reference import run_reference

ENV_ID = "tdimitation/CartPoleFixed-v1"
RECIPES = Path(__file__).resolve().parents[1] / "recipes"

TUTORIAL = {
    "gail": {
        "generator_kwargs": {
            "n_steps": 2048,
            "batch_size": 64,
            "n_epochs": 5,
            "learning_rate": 4e-4,
            "gamma": 0.95,
            "ent_coef": 0.0,
        },
        "demo_batch_size": 1024,
        "n_disc_updates_per_round": 8,
        "gen_replay_buffer_capacity": 512,
    },
    "airl": {
        "generator_kwargs": {
            "n_steps": 2048,
            "batch_size": 64,
            "n_epochs": 5,
            "learning_rate": 5e-4,
            "gamma": 0.95,
            "clip_epsilon": 0.1,
            "vf_coef": 0.1,
            "ent_coef": 0.0,
        },
        "demo_batch_size": 2048,
        "n_disc_updates_per_round": 16,
        "gen_replay_buffer_capacity": 512,
    },
}


def demonstrations(n_episodes: int = 60, seed: int = 0):
    from tdimitation.data.rollout import rollout
    from tdimitation.envs import make_env
    from tdimitation.policies.registry import policy_from_string

    env = make_env(ENV_ID, num_envs=8, seed=seed)
    try:
        expert = policy_from_string("scripted", env=env)
        return rollout(expert, env, min_episodes=n_episodes, deterministic=True)
    finally:
        env.close()


def algorithm_class(algo: str):
    from tdimitation.algorithms import AIRL, GAIL

    return {"gail": GAIL, "airl": AIRL}[algo]


class RoundLog(L.Callback):
    """Per-round timings, and optionally a deterministic evaluation after each round."""

    def __init__(self, evaluate_every: int = 0, target: float = 475.0, episodes: int = 20) -> None:
        self.evaluate_every, self.target, self.episodes = evaluate_every, target, episodes
        self.rounds: list[dict] = []
        self.train_seconds = 0.0
        self.train_cpu_seconds = 0.0
        self.first_target: dict | None = None
        self._mark = 0.0
        self._env = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._mark = time.perf_counter()
        self._cpu_mark = time.process_time()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        seconds = time.perf_counter() - self._mark
        cpu_seconds = time.process_time() - self._cpu_mark
        self.train_seconds += seconds
        self.train_cpu_seconds += cpu_seconds
        metrics = trainer.callback_metrics
        row = {
            "frames": pl_module.frames,
            "seconds": seconds,
            # CPU time of this process: far less sensitive to other jobs on the machine.
            "cpu_seconds": cpu_seconds,
            "collect_s": pl_module._collect_seconds,
            "disc_s": float(metrics["train/time/disc_s"]),
            "gen_update_s": float(metrics["train/time/gen_update_s"]),
            "train_seconds": self.train_seconds,
        }
        last = pl_module.frames + pl_module.frames_per_batch > pl_module.total_frames
        if self.evaluate_every and (batch_idx % self.evaluate_every == 0 or last):
            row["eval_return"] = self._evaluate(pl_module)
            if self.first_target is None and row["eval_return"] >= self.target:
                self.first_target = {
                    "frames": row["frames"],
                    "seconds": self.train_seconds,
                    "cpu_seconds": self.train_cpu_seconds,
                }
        self.rounds.append(row)

    def _evaluate(self, pl_module) -> float:
        from tdimitation.data import rollout, rollout_stats

        if self._env is None:
            self._env = pl_module.make_env(num_envs=10, seed=10_000 + (pl_module.seed or 0))
        policy = pl_module.export_policy()
        with torch.no_grad():
            episodes = rollout(policy, self._env, min_episodes=self.episodes, deterministic=True)
        return rollout_stats(episodes)["return_mean"]


def fit(model, callback: RoundLog) -> None:
    trainer = L.Trainer(
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[callback],
    )
    trainer.fit(model)


def speed(algo: str, rounds: int, demos) -> dict:
    settings = TUTORIAL[algo]
    frames_per_round = 8 * settings["generator_kwargs"]["n_steps"]
    model = algorithm_class(algo)(
        ENV_ID,
        demonstrations=demos,
        num_envs=8,
        total_frames=(rounds + 1) * frames_per_round,
        seed=0,
        **settings,
    )
    log = RoundLog()
    fit(model, log)
    timed = log.rounds[1:]  # the first round warms up allocations
    frames = len(timed) * frames_per_round
    total = sum(r["seconds"] for r in timed)
    cpu_total = sum(r["cpu_seconds"] for r in timed)
    split = {k: sum(r[k] for r in timed) for k in ("collect_s", "gen_update_s", "disc_s")}
    return {
        "library": "tdimitation",
        "algo": algo,
        "seconds_per_100k": total * 100_000 / frames,
        "cpu_seconds_per_100k": cpu_total * 100_000 / frames,
        "loadavg": os.getloadavg()[0],
        "split_per_100k": {k: v * 100_000 / frames for k, v in split.items()},
        "frames": frames,
    }


def quality(algo: str, seed: int, demos, evaluate_every: int) -> dict:
    config = yaml.safe_load((RECIPES / algo / "cartpole_fixed.yaml").read_text())
    init_args = dict(config["model"]["init_args"])
    init_args["seed"] = seed
    init_args.pop("env_id")
    model = algorithm_class(algo)(ENV_ID, demonstrations=demos, **init_args)
    log = RoundLog(evaluate_every=evaluate_every)
    fit(model, log)
    return {
        "library": "tdimitation",
        "algo": algo,
        "seed": seed,
        "first_475": log.first_target,
        "final_eval_return": log.rounds[-1]["eval_return"],
        "train_seconds": log.train_seconds,
        "frames": model.frames,
        "returns": [
            (r["frames"], round(r["eval_return"], 1)) for r in log.rounds if "eval_return" in r
        ],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=["speed", "quality"], default="speed")
    parser.add_argument("--algos", nargs="+", default=["gail", "airl"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--rounds", type=int, default=6, help="timed rounds (speed mode)")
    parser.add_argument("--eval-every", type=int, default=2, help="rounds between evaluations")
    parser.add_argument("--skip-reference", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    demos = demonstrations()
    for algo in args.algos:
        if args.mode == "speed":
            print(json.dumps(speed(algo, args.rounds, demos)), flush=True)
            if not args.skip_reference:
                reference = run_reference(
                    "imitation_adversarial.py",
                    "--algo",
                    algo,
                    "--rounds",
                    str(args.rounds + 1),
                    "--eval-episodes",
                    "0",
                )
                if reference is not None:
                    reference.pop("per_round", None)
                print(json.dumps({"library": "imitation", "algo": algo, **(reference or {})}))
        else:
            for seed in args.seeds:
                result = quality(algo, seed, demos, args.eval_every)
                print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
