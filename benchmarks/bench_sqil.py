"""SQIL: quality over seeds, and time to a return of 475 on CartPole against `imitation`.

* ``--mode quality --env cartpole|pendulum``: the recipe (``recipes/sqil/<env>.yaml``) for
  each seed, from the recipe's scripted-expert demonstrations; a deterministic evaluation
  (``--eval-episodes`` episodes on a separate env) every ``--eval-every`` rounds and at the
  end. Reports the first evaluation at or above the target (CartPole 475, Pendulum -200)
  with the training wall time spent until then (evaluations excluded), and the final
  return.
* ``--mode speed``: the side-by-side time to 475 on CartPole-v1. For each seed, ours (the
  CartPole recipe) and then `imitation` 1.0.1's SQIL with its tutorial settings
  (``benchmarks/reference/imitation_sqil.py`` in the reference venv: one CartPole-v1 env,
  SB3 DQN defaults, ``MlpPolicy``), both from the same scripted-expert demonstrations
  (saved with ``save_trajectories``, which `imitation` reads), evaluated the same way.
  Each side stops at its first evaluation >= 475 or at its frame or time cap.

One torch thread. Usage: ``python benchmarks/bench_sqil.py --mode quality --env cartpole
[--seeds 0 1 2]``; ``--mode speed --eval-every 4 [--ref-max-steps 1000000
--ref-max-seconds 1800]`` (the figures in RESULTS.md; Pendulum quality used
``--eval-every 25``).
Each result is one JSON line.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import lightning as L
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _reference import REFERENCE_DIR, reference_python  # noqa: E402

TARGETS = {"cartpole": 475.0, "pendulum": -200.0}
ENV_IDS = {"cartpole": "CartPole-v1", "pendulum": "Pendulum-v1"}


def demonstrations(env: str, n_episodes: int, seed: int = 0):
    from tdimitation.data.rollout import rollout
    from tdimitation.envs import make_env
    from tdimitation.policies.registry import policy_from_string

    vec = make_env(ENV_IDS[env], num_envs=8, seed=seed)
    try:
        expert = policy_from_string("scripted", env=vec)
        return rollout(expert, vec, min_episodes=n_episodes, deterministic=True)
    finally:
        vec.close()


class EvalLog(L.Callback):
    """Training wall time per round (evaluations excluded) and periodic evaluations."""

    def __init__(self, target: float, every: int, episodes: int, stop_at_target: bool) -> None:
        self.target, self.every, self.episodes = target, every, episodes
        self.stop_at_target = stop_at_target
        self.train_seconds = 0.0
        self.first_target: dict | None = None
        self.returns: list[tuple[int, float]] = []
        self._mark = 0.0
        self._env = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._mark = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.train_seconds += time.perf_counter() - self._mark
        last = pl_module.frames + pl_module.frames_per_batch > pl_module.total_frames
        if (batch_idx + 1) % self.every and not last:
            return
        value = self._evaluate(pl_module)
        self.returns.append((pl_module.frames, round(value, 1)))
        if self.first_target is None and value >= self.target:
            self.first_target = {"frames": pl_module.frames, "seconds": self.train_seconds}
            if self.stop_at_target:
                trainer.should_stop = True

    def _evaluate(self, pl_module) -> float:
        from tdimitation.data import rollout, rollout_stats

        if self._env is None:
            self._env = pl_module.make_env(num_envs=10, seed=10_000 + (pl_module.seed or 0))
        with torch.no_grad():
            episodes = rollout(
                pl_module.export_policy(), self._env, min_episodes=self.episodes, deterministic=True
            )
        return float(rollout_stats(episodes)["return_mean"])


def run_ours(env: str, seed: int, demos, args, stop_at_target: bool) -> dict:
    from tdimitation.algorithms import SQIL

    config = yaml.safe_load((ROOT / "recipes" / "sqil" / f"{env}.yaml").read_text())
    init_args = dict(config["model"]["init_args"]) | {"seed": seed}
    if args.total_frames:
        init_args["total_frames"] = args.total_frames
    if args.agent_kwargs:
        init_args["agent_kwargs"] = init_args["agent_kwargs"] | json.loads(args.agent_kwargs)
    model = SQIL(demonstrations=demos, **init_args)
    log = EvalLog(TARGETS[env], args.eval_every, args.eval_episodes, stop_at_target)
    trainer = L.Trainer(
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[log],
    )
    trainer.fit(model)
    return {
        "library": "tdimitation",
        "env": env,
        "seed": seed,
        "target": TARGETS[env],
        "first_target": log.first_target,
        "final_eval_return": log.returns[-1][1] if log.returns else None,
        "train_seconds": round(log.train_seconds, 1),
        "frames": model.frames,
        "agent_kwargs_override": args.agent_kwargs or None,
        "returns": log.returns,
        "loadavg": os.getloadavg()[0],
    }


def run_reference(seed: int, demo_path: Path, args) -> dict | None:
    import subprocess

    python = reference_python()
    if python is None:
        return None
    cmd = [
        str(python),
        str(REFERENCE_DIR / "imitation_sqil.py"),
        "--demos",
        str(demo_path),
        "--seed",
        str(seed),
        "--max-steps",
        str(args.ref_max_steps),
        "--max-seconds",
        str(args.ref_max_seconds),
        "--eval-every",
        str(args.ref_eval_every),
        "--eval-episodes",
        str(args.eval_episodes),
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        print(f"reference run failed:\n{out.stderr[-2000:]}", file=sys.stderr)
        return None
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=["quality", "speed"], default="quality")
    parser.add_argument("--env", choices=sorted(TARGETS), default="cartpole")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--n-demos", type=int, default=20, help="expert episodes")
    parser.add_argument("--total-frames", type=int, default=0, help="override the recipe")
    parser.add_argument("--agent-kwargs", default="", help="JSON overriding the recipe's")
    parser.add_argument("--eval-every", type=int, default=8, help="rounds between evaluations")
    parser.add_argument("--eval-episodes", type=int, default=10)
    parser.add_argument("--ref-max-steps", type=int, default=1_000_000)
    parser.add_argument("--ref-max-seconds", type=float, default=1800.0)
    parser.add_argument("--ref-eval-every", type=int, default=5000, help="reference env steps")
    parser.add_argument("--skip-reference", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    logging.getLogger("torchrl").setLevel(logging.WARNING)

    env = "cartpole" if args.mode == "speed" else args.env
    demos = demonstrations(env, args.n_demos)
    if args.mode == "quality":
        for seed in args.seeds:
            print(json.dumps(run_ours(env, seed, demos, args, stop_at_target=False)), flush=True)
        return
    from tdimitation.data.storage import save_trajectories

    with tempfile.TemporaryDirectory() as tmp:
        demo_path = Path(tmp) / "cartpole_scripted"
        save_trajectories(demo_path, demos)
        for seed in args.seeds:  # interleaved: ours, then imitation's, seed by seed
            print(json.dumps(run_ours(env, seed, demos, args, stop_at_target=True)), flush=True)
            if not args.skip_reference:
                reference = run_reference(seed, demo_path, args)
                print(json.dumps({"library": "imitation", "seed": seed, **(reference or {})}))


if __name__ == "__main__":
    main()
