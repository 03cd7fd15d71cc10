"""SAC learning speed on Pendulum-v1: frames and wall-clock to a deterministic return of -200.

Trains ``tdimitation.rl.sac.SAC`` from scratch in this process (Lightning ``Trainer``, no
logger, no checkpoints) with the hyperparameters of ``recipes/sac/pendulum.yaml`` (the
rl-baselines3-zoo ones: lr 1e-3, batch 256, 256-256 ReLU networks, one gradient step per
frame, learned temperature), for each seed. Every ``--eval-every`` frames the
deterministic policy is evaluated on 10 episodes (``rollout(policy,
make_env("Pendulum-v1", num_envs=10, seed=...), min_episodes=10, deterministic=True)``);
evaluation time is excluded from the wall-clock. The run stops at the first evaluation
with mean return >= ``--target`` (unless ``--no-stop``), else at the frame budget.

Wall-clock is split into collection (the collector's ``rollout`` calls), updates (replay
sampling and gradient steps) and the rest (Lightning, buffer writes, logging).

With ``--sb3``, Stable-Baselines3's SAC with the zoo hyperparameters (1 env, one gradient
step per env step, ``learning_starts`` 100) runs in the ``imitation`` reference venv
(``$IMITATION_VENV`` or ``/work/imitation-venv``, see ``benchmarks/reference/``),
evaluated the same way.

Run: ``python benchmarks/bench_sac.py [--seeds 0 1 2] [--frames 30000] [--sb3]``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import lightning as L
import yaml
from _reference import run_reference_source, run_seeds

from tdimitation.data import episode_returns, rollout
from tdimitation.envs import make_env
from tdimitation.rl.sac import SAC

HERE = Path(__file__).resolve().parent
RECIPE = HERE.parent / "recipes" / "sac" / "pendulum.yaml"


def recipe_args() -> dict:
    return dict(yaml.safe_load(RECIPE.read_text())["model"]["init_args"])


def deterministic_return(policy, seed: int) -> float:
    env = make_env("Pendulum-v1", num_envs=10, seed=seed)
    episodes = rollout(policy, env, min_episodes=10, deterministic=True)
    env.close()
    return float(episode_returns(episodes).mean())


class Progress(L.Callback):
    """Times collection, evaluates every ``eval_every`` frames and stops at the target."""

    def __init__(self, eval_every: int, target: float, stop: bool, seed: int) -> None:
        self.eval_every, self.target, self.stop, self.seed = eval_every, target, stop, seed
        self.collect_seconds = 0.0
        self.eval_seconds = 0.0
        self.evals: list[tuple[int, float]] = []
        self.reached: dict | None = None
        self.start = 0.0
        self.next_eval = eval_every

    def on_train_start(self, trainer, pl_module) -> None:
        collector = pl_module.collector
        inner = collector.rollout

        def timed_rollout():
            start = time.perf_counter()
            try:
                return inner()
            finally:
                self.collect_seconds += time.perf_counter() - start

        collector.rollout = timed_rollout
        self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if pl_module.frames < self.next_eval:
            return
        self.next_eval += self.eval_every
        start = time.perf_counter()
        mean_return = deterministic_return(
            pl_module.actor, seed=10_000 * (self.seed + 1) + pl_module.frames
        )
        self.eval_seconds += time.perf_counter() - start
        self.evals.append((pl_module.frames, mean_return))
        if self.reached is None and mean_return >= self.target:
            wall = time.perf_counter() - self.start - self.eval_seconds
            self.reached = {"frames": pl_module.frames, "seconds": round(wall, 2)}
            if self.stop:
                trainer.should_stop = True


def run_ours(seed: int, args: argparse.Namespace) -> dict:
    init_args = recipe_args()
    init_args.update(seed=seed, total_frames=args.frames)
    model = SAC(**init_args)
    progress = Progress(args.eval_every, args.target, not args.no_stop, seed)
    trainer = L.Trainer(
        max_epochs=1,
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        callbacks=[progress],
    )
    start = time.perf_counter()
    trainer.fit(model)
    wall = time.perf_counter() - start - progress.eval_seconds
    best = max(progress.evals, key=lambda e: e[1]) if progress.evals else (0, float("nan"))
    steps = trainer.global_step
    return {
        "impl": "tdimitation",
        "seed": seed,
        "reached": progress.reached,
        "best_return": round(best[1], 1),
        "best_at_frames": best[0],
        "frames": model.frames,
        "gradient_steps": steps,
        "train_seconds": round(wall, 2),
        "collect_seconds": round(progress.collect_seconds, 2),
        "update_seconds": round(model.update_seconds, 2),
        "other_seconds": round(wall - progress.collect_seconds - model.update_seconds, 2),
        "ms_per_gradient_step": round(1e3 * model.update_seconds / max(steps, 1), 2),
        "evals": [(f, round(r, 1)) for f, r in progress.evals],
    }


SB3_SCRIPT = r"""
import json, sys, time
import numpy as np, torch
torch.set_num_threads(1)
from stable_baselines3 import SAC
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.env_util import make_vec_env

seed, frames, eval_freq, target, stop = (
    int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), sys.argv[5] == "1")

def deterministic_return(model, eval_seed):
    env = make_vec_env("Pendulum-v1", n_envs=10, seed=eval_seed)
    obs, returns, current, done_eps = env.reset(), [], np.zeros(10), np.zeros(10, bool)
    while len(returns) < 10:
        action, _ = model.predict(obs, deterministic=True)
        obs, reward, done, _ = env.step(action)
        current += reward
        for i in np.nonzero(done)[0]:
            if not done_eps[i]:
                returns.append(current[i]); done_eps[i] = True
            current[i] = 0
    env.close()
    return float(np.mean(returns))

class Progress(BaseCallback):
    def __init__(self):
        super().__init__(); self.evals = []; self.eval_s = 0.0; self.reached = None
    def _on_training_start(self): self.t0 = time.perf_counter()
    def _on_step(self):
        if self.num_timesteps % eval_freq:
            return True
        t = time.perf_counter()
        r = deterministic_return(self.model, 10_000 * (seed + 1) + self.num_timesteps)
        self.eval_s += time.perf_counter() - t
        self.evals.append((self.num_timesteps, round(r, 1)))
        if self.reached is None and r >= target:
            self.reached = {"frames": self.num_timesteps,
                            "seconds": round(time.perf_counter() - self.t0 - self.eval_s, 2)}
            return not stop
        return True

model = SAC("MlpPolicy", "Pendulum-v1", learning_rate=1e-3, seed=seed, device="cpu")
update_s = [0.0]
inner_train = model.train
def timed_train(*a, **k):
    t = time.perf_counter(); inner_train(*a, **k); update_s[0] += time.perf_counter() - t
model.train = timed_train
cb = Progress()
t0 = time.perf_counter()
model.learn(frames, callback=cb)
wall = time.perf_counter() - t0 - cb.eval_s
best = max(cb.evals, key=lambda e: e[1]) if cb.evals else (0, float("nan"))
print(json.dumps({"impl": "sb3", "seed": seed, "reached": cb.reached, "best_return": best[1],
                  "best_at_frames": best[0], "frames": model.num_timesteps,
                  "train_seconds": round(wall, 2), "update_seconds": round(update_s[0], 2),
                  "collect_and_other_seconds": round(wall - update_s[0], 2),
                  "ms_per_gradient_step": round(1e3 * update_s[0] / max(model._n_updates, 1), 2),
                  "evals": cb.evals}))
"""


def run_sb3(seed: int, args: argparse.Namespace, python: Path) -> dict | None:
    stop = "0" if args.no_stop else "1"
    return run_reference_source(
        python, SB3_SCRIPT, seed, args.frames, args.eval_every, args.target, stop
    )


def summarize(results: list[dict]) -> None:
    for impl in sorted({r["impl"] for r in results}):
        rows = [r for r in results if r["impl"] == impl]
        reached = [r["reached"] for r in rows if r["reached"]]
        print(f"\n== {impl}: {len(reached)}/{len(rows)} seeds reached the target")
        for r in rows:
            hit = r["reached"]
            hit_s = f"{hit['frames']} frames / {hit['seconds']:.1f} s" if hit else "not reached"
            split = (
                f"collect {r['collect_seconds']} s, update {r['update_seconds']} s, "
                f"other {r['other_seconds']} s"
                if "collect_seconds" in r
                else f"update {r['update_seconds']} s, "
                f"collect+other {r['collect_and_other_seconds']} s"
            )
            print(
                f"seed {r['seed']}: {hit_s}; best {r['best_return']:.1f} at "
                f"{r['best_at_frames']} frames; {r['frames']} frames in "
                f"{r['train_seconds']} s ({split}; {r['ms_per_gradient_step']} ms/gradient step)"
            )
        if reached:
            print(
                f"median to target: {statistics.median(h['frames'] for h in reached):.0f} "
                f"frames, {statistics.median(h['seconds'] for h in reached):.1f} s"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--frames", type=int, default=30_000, help="frame budget per run")
    parser.add_argument("--eval-every", type=int, default=1024, help="frames between evaluations")
    parser.add_argument("--target", type=float, default=-200.0)
    parser.add_argument("--no-stop", action="store_true", help="train to the budget")
    parser.add_argument("--sb3", action="store_true", help="also run Stable-Baselines3's SAC")
    parser.add_argument("--json", type=Path, help="write all results to this file")
    run_seeds(parser.parse_args(), run_ours, run_sb3, summarize)


if __name__ == "__main__":
    main()
