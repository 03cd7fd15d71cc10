"""Reference preference comparisons of imitation 1.0.1 on Pendulum-v1 (tutorial settings).

Run with the imitation venv (see setup_venv.sh), not the project's own venv:

    /work/imitation-venv/bin/python benchmarks/reference/imitation_preference.py \
        [--seed 0] [--steps 50000] [--comparisons 200] [--iterations 5] \
        [--fragment-length 100] [--eval-episodes 10]

The settings of imitation's preference-comparisons tutorial: ``make_vec_env("Pendulum-v1",
n_envs=8)``, ``BasicRewardNet`` (state + action, ``RunningNorm`` input), ``RandomFragmenter``,
``SyntheticGatherer``, ``BasicRewardTrainer`` (3 epochs, ``CrossEntropyRewardLoss``), SB3
PPO with ``FeedForward32Policy`` and a ``RunningNorm`` features extractor (n_steps 256 per
env, batch 64, ent 0.01, lr 2e-3, clip 0.1, gae 0.95, gamma 0.97, 10 epochs),
``AgentTrainer`` with exploration_frac 0.05, initial_comparison_frac 0.1,
initial_epoch_multiplier 4, hyperbolic schedule; ``train(steps, comparisons)``.

Times (``torch.set_num_threads(1)``; construction and evaluation excluded): ``wall_s``
(the ``train`` call) split by timers wrapped around the instances' methods: ``agent_s``
(``AgentTrainer.train``: PPO collection + updates), ``reward_s`` (``reward_trainer.train``),
``fragments_s`` (``AgentTrainer.sample`` + fragmenter + gatherer). The last stdout line is
one JSON object. The final accuracy is what ``train`` returns (the reward trainer's
accuracy in its last epoch); the true return is the mean of ``--eval-episodes``
deterministic episodes on a separate venv. With ``--heldout PATH`` (an .npz of fragment
pairs written by ``bench_preference.heldout_pairs``) the final reward model is also scored
on those pairs against noiseless true-return preferences (``heldout_accuracy``).
"""

from __future__ import annotations

import argparse
import json
import os
import time

import imitation
import numpy as np
import stable_baselines3
import torch
from imitation.algorithms import preference_comparisons as pc
from imitation.policies.base import FeedForward32Policy, NormalizeFeaturesExtractor
from imitation.rewards.reward_nets import BasicRewardNet
from imitation.util.logger import configure
from imitation.util.networks import RunningNorm
from imitation.util.util import make_vec_env
from stable_baselines3 import PPO
from stable_baselines3.common.evaluation import evaluate_policy


class Timers:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def wrap(self, obj, name: str, key: str) -> None:
        inner = getattr(obj, name)

        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                self.seconds[key] = self.seconds.get(key, 0.0) + time.perf_counter() - start

        setattr(obj, name, timed)


def heldout_accuracy(reward_net, path: str) -> float:
    """Share of held-out pairs (``bench_preference.heldout_pairs``) ranked as the true return."""
    data = np.load(path)
    pairs_shape = data["dones"].shape  # [P, 2, L]

    def flat(key):
        array = data[key]
        return array.reshape(-1, *array.shape[len(pairs_shape) :])

    reward = reward_net.predict_processed(
        flat("obs"), flat("acts"), flat("next_obs"), flat("dones")
    )
    learned = reward.reshape(pairs_shape).astype(np.float64).sum(-1)
    true = data["true_returns"]
    agree = np.sign(learned[:, 0] - learned[:, 1]) == np.sign(true[:, 0] - true[:, 1])
    return float(np.mean(agree))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=50_000)
    parser.add_argument("--comparisons", type=int, default=200)
    parser.add_argument("--iterations", type=int, default=5)
    parser.add_argument("--fragment-length", type=int, default=100)
    parser.add_argument("--eval-episodes", type=int, default=10)
    parser.add_argument("--heldout", help="npz of held-out pairs to score the reward model on")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rng = np.random.default_rng(args.seed)
    torch.manual_seed(args.seed)
    venv = make_vec_env("Pendulum-v1", rng=rng, n_envs=8)
    reward_net = BasicRewardNet(
        venv.observation_space, venv.action_space, normalize_input_layer=RunningNorm
    )
    fragmenter = pc.RandomFragmenter(warning_threshold=0, rng=rng)
    gatherer = pc.SyntheticGatherer(rng=rng)
    preference_model = pc.PreferenceModel(reward_net)
    reward_trainer = pc.BasicRewardTrainer(
        preference_model=preference_model,
        loss=pc.CrossEntropyRewardLoss(),
        epochs=3,
        rng=rng,
    )
    agent = PPO(
        policy=FeedForward32Policy,
        policy_kwargs=dict(
            features_extractor_class=NormalizeFeaturesExtractor,
            features_extractor_kwargs=dict(normalize_class=RunningNorm),
        ),
        env=venv,
        seed=args.seed,
        n_steps=2048 // venv.num_envs,
        batch_size=64,
        ent_coef=0.01,
        learning_rate=2e-3,
        clip_range=0.1,
        gae_lambda=0.95,
        gamma=0.97,
        n_epochs=10,
    )
    logger = configure(folder=None, format_strs=[])
    trajectory_generator = pc.AgentTrainer(
        algorithm=agent,
        reward_fn=reward_net,
        venv=venv,
        exploration_frac=0.05,
        rng=rng,
        custom_logger=logger,
    )
    trainer = pc.PreferenceComparisons(
        trajectory_generator,
        reward_net,
        num_iterations=args.iterations,
        fragmenter=fragmenter,
        preference_gatherer=gatherer,
        reward_trainer=reward_trainer,
        fragment_length=args.fragment_length,
        transition_oversampling=1,
        initial_comparison_frac=0.1,
        allow_variable_horizon=False,
        initial_epoch_multiplier=4,
        query_schedule="hyperbolic",
        custom_logger=logger,
    )
    timers = Timers()
    timers.wrap(trajectory_generator, "train", "agent_s")
    timers.wrap(trajectory_generator, "sample", "fragments_s")
    timers.wrap(trainer, "fragmenter", "fragments_s")
    timers.wrap(trainer, "preference_gatherer", "fragments_s")
    timers.wrap(reward_trainer, "train", "reward_s")
    loadavg = os.getloadavg()[0]
    start = time.perf_counter()
    cpu_start = time.process_time()
    out = trainer.train(total_timesteps=args.steps, total_comparisons=args.comparisons)
    wall_s = time.perf_counter() - start
    cpu_s = time.process_time() - cpu_start
    eval_venv = make_vec_env("Pendulum-v1", rng=np.random.default_rng(10_000 + args.seed), n_envs=8)
    returns, _ = evaluate_policy(
        agent.policy, eval_venv, n_eval_episodes=args.eval_episodes, return_episode_rewards=True
    )
    extra = {}
    if args.heldout:
        extra["heldout_accuracy"] = heldout_accuracy(reward_net, args.heldout)
    print(
        json.dumps(
            {
                "library": "imitation",
                "seed": args.seed,
                "wall_s": wall_s,
                "cpu_s": cpu_s,
                **{k: timers.seconds.get(k, 0.0) for k in ("agent_s", "reward_s", "fragments_s")},
                "accuracy": float(out["reward_accuracy"]),
                "reward_loss": float(out["reward_loss"]),
                "true_return": float(np.mean(returns)),
                "agent_steps": int(agent.num_timesteps),
                "comparisons": len(trainer.dataset),
                "loadavg_1min_at_start": loadavg,
                **extra,
                "versions": {
                    "imitation": imitation.__version__,
                    "stable_baselines3": stable_baselines3.__version__,
                    "torch": torch.__version__,
                },
            }
        )
    )


if __name__ == "__main__":
    main()
