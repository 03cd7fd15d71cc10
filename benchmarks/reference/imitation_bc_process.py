"""imitation 1.0.1's equivalent of ``tdimitation fit --config recipes/bc/cartpole.yaml``.

Run in the reference venv as a whole process (``benchmarks/bench_startup.py`` times it
from outside, side by side with our recipe)::

    /work/imitation-venv/bin/python benchmarks/reference/imitation_bc_process.py \
        --data-dir DIR [--episodes 50] [--epochs 4] [--batch-size 32] [--eval-episodes 20]

What it does, as a user of imitation would write it: load 50 CartPole-v1 episodes of the
scripted expert (push right iff theta + 0.5 * theta_dot > 0) saved with
``imitation.data.serialize`` under ``DIR`` (collected with ``rollout.rollout`` on an
8-env ``make_vec_env`` and saved there by the first run), train ``bc.BC`` (its default
32-32 policy, Adam, batch 32) for 4 epochs, evaluate the policy deterministically with
SB3's ``evaluate_policy`` on an 8-env vec env (20 episodes), and save the policy with
``policy.save``. One torch thread, as our side. The last stdout line is JSON: the seconds
of each phase measured inside the process (``import_s``, ``load_s``, ``train_s``,
``eval_s``, ``save_s``), ``collected`` (whether this run had to collect the episodes)
and the evaluation's ``return_mean``.
"""

from __future__ import annotations

import time

STARTED = time.perf_counter()

import argparse  # noqa: E402
import json  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from imitation.algorithms import bc  # noqa: E402
from imitation.data import rollout, serialize  # noqa: E402
from imitation.data.wrappers import RolloutInfoWrapper  # noqa: E402
from imitation.util.util import make_vec_env  # noqa: E402
from stable_baselines3.common.evaluation import evaluate_policy  # noqa: E402

IMPORTED = time.perf_counter()


def scripted_expert(observations, states, episode_starts):
    """CartPole expert as an imitation policy callable: (obs, state, starts) -> acts."""
    obs = np.asarray(observations)
    return (obs[:, 2] + 0.5 * obs[:, 3] > 0).astype(np.int64), None


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--episodes", type=int, default=50)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--eval-episodes", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    rng = np.random.default_rng(args.seed)
    venv = make_vec_env(
        "CartPole-v1",
        rng=rng,
        n_envs=8,
        post_wrappers=[lambda env, _: RolloutInfoWrapper(env)],
    )
    cache = args.data_dir / f"imitation_cartpole_scripted_{args.episodes}"
    start = time.perf_counter()
    collected = not cache.exists()
    if collected:
        trajectories = rollout.rollout(
            scripted_expert,
            venv,
            rollout.make_sample_until(min_timesteps=None, min_episodes=args.episodes),
            rng=rng,
        )
        serialize.save(cache, trajectories)
    trajectories = serialize.load(cache)[: args.episodes]
    loaded = time.perf_counter()
    trainer = bc.BC(
        observation_space=venv.observation_space,
        action_space=venv.action_space,
        rng=rng,
        demonstrations=trajectories,
        batch_size=args.batch_size,
        device="cpu",
    )
    trainer.train(n_epochs=args.epochs)
    trained = time.perf_counter()
    returns, _ = evaluate_policy(
        trainer.policy, venv, n_eval_episodes=args.eval_episodes, return_episode_rewards=True
    )
    evaluated = time.perf_counter()
    trainer.policy.save(str(args.data_dir / "imitation_bc_policy.zip"))
    saved = time.perf_counter()
    print(
        json.dumps(
            {
                "import_s": IMPORTED - STARTED,
                "load_s": loaded - start,
                "train_s": trained - loaded,
                "eval_s": evaluated - trained,
                "save_s": saved - evaluated,
                "collected": collected,
                "n_transitions": int(sum(len(t.acts) for t in trajectories)),
                "return_mean": float(np.mean(returns)),
            }
        )
    )


if __name__ == "__main__":
    main()
