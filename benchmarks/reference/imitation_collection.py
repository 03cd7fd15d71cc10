"""Reference collection speed of imitation 1.0.1 on CartPole-v1 (8 envs).

Run with the imitation venv (see setup_venv.sh), not the project's own venv:

    /work/imitation-venv/bin/python benchmarks/reference/imitation_collection.py \
        [--transitions N] [--repeats R] [--n-envs E]

Measures, in transitions per second (median of R repeats after one warm-up run):

* ``imitation_scripted``: ``imitation.data.rollout.rollout`` with a scripted expert
  (push right iff theta + 0.5 * theta_dot > 0), given as a numpy callable on the
  batch of observations, on an SB3 ``DummyVecEnv`` made by
  ``imitation.util.util.make_vec_env`` with ``RolloutInfoWrapper`` (as imitation's
  docs do), collecting at least N transitions.
* ``imitation_sb3_mlp``: the same with an untrained SB3 PPO ``MlpPolicy``
  (net_arch 64-64, tanh), stochastic actions (``deterministic_policy=False``).
* ``gym_sync_random_ceiling``: gymnasium's ``gym.vector.SyncVectorEnv`` of the same
  E CartPole-v1 envs stepped with uniformly random actions (numpy), nothing
  recorded: what raw stepping costs in this process.

Transitions counted are the ones actually returned (rollout() completes every
episode that is running when the target is reached, so it returns a little more
than N); the rate is that count over the wall time of the ``rollout()`` call.
Environment and policy construction are excluded. ``torch.set_num_threads(1)``.

The last stdout line is one JSON object with the three rates above (and a
``details`` object with the per-repeat figures and versions).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time


def scripted_expert(observations, states, episode_starts):
    """CartPole expert as an imitation policy callable: (obs, state, starts) -> acts."""
    import numpy as np

    obs = np.asarray(observations)
    acts = (obs[:, 2] + 0.5 * obs[:, 3] > 0).astype(np.int64)
    return acts, None


def make_imitation_venv(n_envs: int, seed: int):
    import numpy as np
    from imitation.data.wrappers import RolloutInfoWrapper
    from imitation.util.util import make_vec_env

    return make_vec_env(
        "CartPole-v1",
        rng=np.random.default_rng(seed),
        n_envs=n_envs,
        post_wrappers=[lambda env, _: RolloutInfoWrapper(env)],  # as in imitation's docs
    )


def time_rollout(policy, venv, n_transitions: int, seed: int) -> tuple[float, int]:
    """Returns (seconds, transitions collected) of one ``rollout.rollout`` call."""
    import numpy as np
    from imitation.data import rollout

    rng = np.random.default_rng(seed)
    sample_until = rollout.make_sample_until(min_timesteps=n_transitions, min_episodes=None)
    t0 = time.perf_counter()
    trajs = rollout.rollout(policy, venv, sample_until, rng=rng)
    elapsed = time.perf_counter() - t0
    n = sum(len(t.acts) for t in trajs)
    assert n >= n_transitions, (n, n_transitions)
    return elapsed, n


def bench_imitation(policy, venv, n_transitions: int, repeats: int) -> dict:
    time_rollout(policy, venv, max(1000, n_transitions // 10), seed=1000)  # warm-up
    rates, counts = [], []
    for r in range(repeats):
        elapsed, n = time_rollout(policy, venv, n_transitions, seed=r)
        rates.append(n / elapsed)
        counts.append(n)
    return {
        "median": statistics.median(rates),
        "best": max(rates),
        "rates": rates,
        "transitions": counts,
    }


def bench_gym_sync(n_envs: int, n_transitions: int, repeats: int, seed: int = 0) -> dict:
    import gymnasium as gym
    import numpy as np

    if not hasattr(gym, "vector") or not hasattr(gym.vector, "SyncVectorEnv"):
        return {"median": None, "error": "gymnasium has no vector.SyncVectorEnv"}
    envs = gym.vector.SyncVectorEnv([lambda: gym.make("CartPole-v1") for _ in range(n_envs)])
    envs.reset(seed=seed)
    rng = np.random.default_rng(seed)
    n_steps = -(-n_transitions // n_envs)

    def run(steps: int) -> float:
        actions = rng.integers(0, 2, size=(steps, n_envs))
        t0 = time.perf_counter()
        for i in range(steps):
            envs.step(actions[i])
        return time.perf_counter() - t0

    run(max(100, n_steps // 10))  # warm-up
    rates = [n_steps * n_envs / run(n_steps) for _ in range(repeats)]
    envs.close()
    return {"median": statistics.median(rates), "best": max(rates), "rates": rates}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--transitions", type=int, default=50_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--n-envs", type=int, default=8)
    args = parser.parse_args()

    import gymnasium
    import imitation
    import numpy as np
    import stable_baselines3
    import torch
    from stable_baselines3 import PPO

    torch.set_num_threads(1)
    loadavg = os.getloadavg()[0]

    venv = make_imitation_venv(args.n_envs, seed=0)

    scripted = bench_imitation(scripted_expert, venv, args.transitions, args.repeats)
    print(
        f"imitation rollout, scripted expert: {scripted['median']:,.0f} transitions/s "
        f"(repeats {[round(r) for r in scripted['rates']]})",
        flush=True,
    )

    model = PPO(
        "MlpPolicy",
        venv,
        policy_kwargs=dict(net_arch=dict(pi=[64, 64], vf=[64, 64]), activation_fn=torch.nn.Tanh),
        seed=0,
        device="cpu",
        verbose=0,
    )
    mlp = bench_imitation(model, venv, args.transitions, args.repeats)
    print(
        f"imitation rollout, SB3 PPO MlpPolicy (stochastic): {mlp['median']:,.0f} "
        f"transitions/s (repeats {[round(r) for r in mlp['rates']]})",
        flush=True,
    )
    venv.close()

    ceiling = bench_gym_sync(args.n_envs, args.transitions, args.repeats)
    if ceiling["median"] is not None:
        print(
            f"gymnasium SyncVectorEnv, random actions: {ceiling['median']:,.0f} "
            f"transitions/s (repeats {[round(r) for r in ceiling['rates']]})",
            flush=True,
        )

    result = {
        "imitation_scripted": scripted["median"],
        "imitation_sb3_mlp": mlp["median"],
        "gym_sync_random_ceiling": ceiling["median"],
        "details": {
            "n_envs": args.n_envs,
            "min_transitions": args.transitions,
            "repeats": args.repeats,
            "loadavg_1min_at_start": loadavg,
            "imitation_scripted": scripted,
            "imitation_sb3_mlp": mlp,
            "gym_sync_random_ceiling": ceiling,
            "versions": {
                "imitation": imitation.__version__,
                "stable_baselines3": stable_baselines3.__version__,
                "gymnasium": gymnasium.__version__,
                "torch": torch.__version__,
                "numpy": np.__version__,
            },
        },
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
