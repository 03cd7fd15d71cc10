"""imitation 1.0.1 GAIL / AIRL on seals/CartPole-v0: speed and sample efficiency.

Runs inside the reference virtualenv (see setup_venv.sh). imitation's tutorial settings
(features file rows 2.21 / 2.22): 8 envs of ``seals/CartPole-v0`` (fixed horizon 500) with
``RolloutInfoWrapper``, 60 expert episodes (64 in practice: ``rollout`` finishes the 8
running episodes), SB3 PPO generator with n_steps 2048 (16,384 generator steps per round).

* GAIL: ``PPO(batch_size=64, ent_coef=0.0, learning_rate=4e-4, gamma=0.95, n_epochs=5)``,
  ``BasicRewardNet(normalize_input_layer=RunningNorm)``,
  ``GAIL(demo_batch_size=1024, gen_replay_buffer_capacity=512, n_disc_updates_per_round=8)``.
* AIRL: ``PPO(batch_size=64, ent_coef=0.0, learning_rate=5e-4, gamma=0.95, clip_range=0.1,
  vf_coef=0.1, n_epochs=5)``, ``BasicShapedRewardNet(normalize_input_layer=RunningNorm)``,
  ``AIRL(demo_batch_size=2048, gen_replay_buffer_capacity=512, n_disc_updates_per_round=16)``.

The HF hub is unreachable, so the expert is a scripted linear controller (push right iff
``theta + 0.5 theta_dot + 0.1 x + 0.1 x_dot > 0``), which scores 500 on every episode; it
is checked on 20 episodes before use.

Training runs one round at a time (``trainer.train(gen_train_timesteps)``); after each
round the learner is evaluated (20 deterministic episodes, SB3 ``evaluate_policy`` on a
separate eval venv, so the training envs' state is untouched). Evaluation time is
excluded from every training time. ``train_cpu_s`` is this process's CPU time over the
same spans (``time.process_time``), a figure less sensitive to a busy machine. The split
is measured by wrapping methods of the trainer / learner instances with timers:

* ``disc``: ``trainer.train_disc`` (all discriminator updates);
* ``gen_update``: ``learner.train`` (PPO's epochs over the rollout buffer);
* ``collection``: ``learner.learn`` minus ``learner.train`` (env steps, policy forward,
  reward-net inference in the reward wrapper, buffering); ``reward_inference_in_collection``
  is the reward wrapper's ``reward_fn`` alone (part of ``collection``);
* ``buffer_post``: ``train_gen`` minus ``learn`` (pop the buffered trajectories, flatten,
  store in the generator replay buffer);
* ``other``: the rest of the round (logger dump, tqdm).

The last stdout line is one JSON object (see README.md).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import numpy as np
import seals  # noqa: F401  (registers seals/CartPole-v0)
import torch
from imitation.algorithms.adversarial.airl import AIRL
from imitation.algorithms.adversarial.gail import GAIL
from imitation.data import rollout
from imitation.data.wrappers import RolloutInfoWrapper
from imitation.rewards.reward_nets import BasicRewardNet, BasicShapedRewardNet
from imitation.util import logger as imit_logger
from imitation.util.networks import RunningNorm
from imitation.util.util import make_vec_env
from stable_baselines3 import PPO
from stable_baselines3.common.evaluation import evaluate_policy

ENV_ID = "seals/CartPole-v0"
EXPERT_GAINS = np.array([0.1, 0.1, 1.0, 0.5])  # x, x_dot, theta, theta_dot


def expert(obs, states, episode_starts):
    """Scripted CartPole expert as an imitation ``PolicyCallable``."""
    return (np.asarray(obs) @ EXPERT_GAINS > 0).astype(np.int64), None


def loadavg() -> float:
    return os.getloadavg()[0]


class Timed:
    """Wraps a callable, accumulating its wall time."""

    def __init__(self, fn):
        self.fn, self.total = fn, 0.0

    def __call__(self, *args, **kwargs):
        start = time.perf_counter()
        try:
            return self.fn(*args, **kwargs)
        finally:
            self.total += time.perf_counter() - start


def build(algo: str, seed: int, venv, demos, log_dir: str):
    common = dict(batch_size=64, ent_coef=0.0, gamma=0.95, n_epochs=5, seed=seed, device="cpu")
    logger = imit_logger.configure(log_dir, ["log", "csv"])  # the default minus stdout
    if algo == "gail":
        learner = PPO("MlpPolicy", venv, learning_rate=4e-4, **common)
        reward_net = BasicRewardNet(
            venv.observation_space, venv.action_space, normalize_input_layer=RunningNorm
        )
        trainer = GAIL(
            demonstrations=demos,
            demo_batch_size=1024,
            gen_replay_buffer_capacity=512,
            n_disc_updates_per_round=8,
            venv=venv,
            gen_algo=learner,
            reward_net=reward_net,
            custom_logger=logger,
        )
    else:
        learner = PPO("MlpPolicy", venv, learning_rate=5e-4, clip_range=0.1, vf_coef=0.1, **common)
        reward_net = BasicShapedRewardNet(
            venv.observation_space, venv.action_space, normalize_input_layer=RunningNorm
        )
        trainer = AIRL(
            demonstrations=demos,
            demo_batch_size=2048,
            gen_replay_buffer_capacity=512,
            n_disc_updates_per_round=16,
            venv=venv,
            gen_algo=learner,
            reward_net=reward_net,
            custom_logger=logger,
        )
    return learner, trainer


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--algo", choices=["gail", "airl"], default="gail")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=None, help="overrides --max-steps")
    parser.add_argument(
        "--max-steps", type=int, default=None, help="generator steps cap (800k gail, 400k airl)"
    )
    parser.add_argument("--eval-episodes", type=int, default=20, help="0: no evaluation")
    parser.add_argument("--target", type=float, default=500.0)
    parser.add_argument(
        "--stop-at-target", action="store_true", help="stop once the mean reaches --target"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    load_start = loadavg()
    seed = args.seed
    max_steps = args.max_steps or (800_000 if args.algo == "gail" else 400_000)
    tol = 0.5  # "500" means mean >= 499.5

    post = [lambda env, _: RolloutInfoWrapper(env)]
    venv = make_vec_env(ENV_ID, n_envs=8, rng=np.random.default_rng(seed), post_wrappers=post)
    eval_venv = make_vec_env(
        ENV_ID, n_envs=8, rng=np.random.default_rng(seed + 1000), post_wrappers=post
    )

    # The expert: checked, then 60 demonstration episodes (tutorial call).
    check = rollout.rollout(
        expert,
        eval_venv,
        rollout.make_sample_until(min_episodes=20),
        rng=np.random.default_rng(seed),
    )
    expert_mean = float(np.mean([t.rews.sum() for t in check]))
    assert expert_mean >= 495, expert_mean
    demos = rollout.rollout(
        expert,
        venv,
        rollout.make_sample_until(min_timesteps=None, min_episodes=60),
        rng=np.random.default_rng(seed),
    )
    print(f"expert: {expert_mean:.1f} on {len(check)} episodes; {len(demos)} demo episodes")

    log_dir = tempfile.mkdtemp(prefix=f"imitation-{args.algo}-")
    learner, trainer = build(args.algo, seed, venv, demos, log_dir)
    t_disc = trainer.train_disc = Timed(trainer.train_disc)
    t_gen = trainer.train_gen = Timed(trainer.train_gen)
    t_learn = learner.learn = Timed(learner.learn)
    t_update = learner.train = Timed(learner.train)
    t_reward = trainer.venv_wrapped.reward_fn = Timed(trainer.venv_wrapped.reward_fn)
    per_round_steps = trainer.gen_train_timesteps
    n_rounds = args.rounds or max(1, max_steps // per_round_steps)

    def evaluate() -> float:
        if args.eval_episodes <= 0:  # speed runs: no evaluation at all
            return float("nan")
        mean, _ = evaluate_policy(
            learner, eval_venv, n_eval_episodes=args.eval_episodes, deterministic=True
        )
        return float(mean)

    ret0 = evaluate()
    print(f"before training: true return {ret0:.1f}")
    rounds = []
    train_s = cpu_s = 0.0
    first = {"475": None, "target": None}
    for r in range(n_rounds):
        start, cpu_start = time.perf_counter(), time.process_time()
        trainer.train(per_round_steps)
        train_s += time.perf_counter() - start
        cpu_s += time.process_time() - cpu_start
        ret = evaluate()
        steps = int(learner.num_timesteps)
        rounds.append({"round": r, "steps": steps, "train_s": round(train_s, 3), "return": ret})
        print(
            f"round {r:3d}: {steps:7d} steps  train {train_s:7.1f} s  true return {ret:6.1f}"
            f"  (load {loadavg():.2f})",
            flush=True,
        )
        if first["475"] is None and ret >= 475:
            first["475"] = {"steps": steps, "train_s": round(train_s, 3)}
        if first["target"] is None and ret >= args.target - tol:
            first["target"] = {"steps": steps, "train_s": round(train_s, 3)}
            if args.stop_at_target:
                break

    steps = int(learner.num_timesteps)
    collection = t_learn.total - t_update.total
    split_s = {
        "collection": collection,
        "reward_inference_in_collection": t_reward.total,
        "gen_update": t_update.total,
        "disc": t_disc.total,
        "buffer_post": t_gen.total - t_learn.total,
        "other": train_s - t_gen.total - t_disc.total,
    }
    first_round = rounds[0]["train_s"]
    out = {
        "algo": args.algo,
        "seed": seed,
        "steps": steps,
        "rounds": len(rounds),
        "steps_per_round": per_round_steps,
        "train_s": round(train_s, 3),
        "s_per_100k_steps": train_s / steps * 1e5,
        "train_cpu_s": round(cpu_s, 3),
        "cpu_s_per_100k_steps": cpu_s / steps * 1e5,
        "s_per_100k_steps_excl_round0": (
            (train_s - first_round) / (steps - rounds[0]["steps"]) * 1e5
            if len(rounds) > 1
            else None
        ),
        "split_s": {k: round(v, 3) for k, v in split_s.items()},
        "split_frac": {k: round(v / train_s, 4) for k, v in split_s.items()},
        "return_before": ret0,
        "final_return": rounds[-1]["return"],
        "best_return": max(x["return"] for x in rounds),
        "first_475": first["475"],
        "first_target": first["target"],
        "target": args.target,
        "per_round": rounds,
        "expert_return": expert_mean,
        "n_demo_episodes": len(demos),
        "loadavg_1min_at_start": load_start,
        "loadavg_1min_at_end": loadavg(),
        "versions": {
            "imitation": __import__("imitation").__version__,
            "stable_baselines3": __import__("stable_baselines3").__version__,
            "torch": torch.__version__,
        },
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
