"""The main job behind ``make demo``: the data pipeline end to end, tracked in MLflow.

1. collect expert demonstrations on CartPole-v1 with the scripted expert;
2. save them as a trajectory dataset (imitation-compatible) and load them back;
3. log the rollout statistics to a local MLflow store and say how to browse it.

Run: ``python -m tdimitation.demo [--data-dir DIR] [--episodes N]``.
"""

from __future__ import annotations

import argparse
import sys
import time


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None, help="caches, datasets and mlflow.db")
    parser.add_argument("--env", default="CartPole-v1")
    parser.add_argument("--episodes", type=int, default=50)
    parser.add_argument("--num-envs", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    import torch

    from tdimitation.data import check_matches_env, rollout, rollout_stats
    from tdimitation.data.storage import load_trajectories, save_trajectories
    from tdimitation.envs import make_env
    from tdimitation.policies import policy_from_string
    from tdimitation.tracking import browse_hint, data_dir, make_mlflow_logger, tracking_uri

    torch.set_num_threads(1)
    root = data_dir(args.data_dir)
    env = make_env(args.env, num_envs=args.num_envs, seed=args.seed)
    expert = policy_from_string("scripted", env=env)
    start = time.perf_counter()
    demos = rollout(expert, env, min_episodes=args.episodes, deterministic=True, progress=True)
    collect_s = time.perf_counter() - start
    path = save_trajectories(
        root / "demos" / f"{args.env}_scripted",
        demos,
        env_id=args.env,
        metadata={"seed": args.seed},
    )
    reloaded = load_trajectories(path)
    check_matches_env(reloaded, env)
    env.close()
    stats = rollout_stats(reloaded)

    uri = tracking_uri(root)
    logger = make_mlflow_logger("demo", run_name=f"{args.env}-scripted-demos", uri=uri)
    logger.log_hyperparams(vars(args) | {"dataset": str(path)})
    logger.log_metrics(
        {f"demos/{k}": v for k, v in stats.items()}
        | {"collect/transitions_per_s": stats["n_transitions"] / collect_s}
    )
    logger.finalize("success")
    print(f"saved {int(stats['n_traj'])} expert episodes to {path}")
    rate = stats["n_transitions"] / collect_s
    print(f"mean return {stats['return_mean']:.1f}, collected at {rate:.0f} transitions/s")
    print(f"browse the run: {browse_hint(uri)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
