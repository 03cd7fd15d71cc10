"""DQN learning speed on CartPole-v1: frames and wall-clock to a greedy return of 475.

Trains ``tdimitation.rl.dqn.DQN`` from scratch in this process (Lightning ``Trainer``, no
logger, no checkpoints) with the hyperparameters of ``recipes/dqn/cartpole.yaml`` (the
rl-baselines3-zoo ones), for each seed. Every ``--eval-every`` rounds the greedy policy is
evaluated on 10 episodes (``rollout(policy, make_env("CartPole-v1", num_envs=10, seed=...),
min_episodes=10, deterministic=True)``); evaluation time is excluded from the wall-clock.
The run stops once ``--consecutive`` evaluations in a row (default 1: the first one) have a
mean return >= ``--target`` (unless ``--no-stop``), else at the frame budget, and reports
the best evaluation reached. DQN's greedy policy on CartPole often scores 500 early and then
collapses for a while, so ``--consecutive 3`` is the steadier measure.

Wall-clock is split into collection (the collector's ``rollout`` calls), updates (replay
sampling and gradient steps) and the rest (Lightning, buffer writes, logging).

With ``--sb3``, Stable-Baselines3's DQN with the same zoo hyperparameters (1 env, as the
zoo) runs in the ``imitation`` reference venv (``$IMITATION_VENV`` or
``/work/imitation-venv``, see ``benchmarks/reference/``), evaluated the same way every
``--eval-every * frames_per_batch`` steps. Both keep the recipe's epsilon decay length
(8k frames) whatever the budget.

Run: ``python benchmarks/bench_dqn.py [--seeds 0 1 2] [--frames 100000] [--sb3]``.
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
from tdimitation.rl.dqn import DQN

HERE = Path(__file__).resolve().parent
RECIPE = HERE.parent / "recipes" / "dqn" / "cartpole.yaml"


def recipe_args() -> dict:
    return dict(yaml.safe_load(RECIPE.read_text())["model"]["init_args"])


def exploration_fraction(args: argparse.Namespace) -> float:
    # Epsilon decays over a fraction of the budget: keep the recipe's decay length in frames
    # (0.16 * 50k = 8k) whatever --frames is, so the budget is only a cap.
    recipe = recipe_args()
    return recipe["exploration_fraction"] * recipe["total_frames"] / args.frames


class TimedDQN(DQN):
    """DQN that accumulates the time spent in gradient updates."""

    update_seconds = 0.0

    def _update(self, n_steps: int) -> dict[str, float]:
        start = time.perf_counter()
        try:
            return super()._update(n_steps)
        finally:
            self.update_seconds += time.perf_counter() - start


class Progress(L.Callback):
    """Times collection, evaluates greedily every few rounds and stops at the target."""

    def __init__(self, args: argparse.Namespace, seed: int) -> None:
        self.eval_every, self.target, self.seed = args.eval_every, args.target, seed
        self.stop, self.consecutive = not args.no_stop, args.consecutive
        self.collect_seconds = 0.0
        self.eval_seconds = 0.0
        self.evals: list[tuple[int, float]] = []
        self.reached: dict | None = None
        self.start = 0.0

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
        if (batch_idx + 1) % self.eval_every:
            return
        start = time.perf_counter()
        env = make_env("CartPole-v1", num_envs=10, seed=10_000 * (self.seed + 1) + batch_idx)
        episodes = rollout(pl_module.actor, env, min_episodes=10, deterministic=True)
        env.close()
        mean_return = float(episode_returns(episodes).mean())
        self.eval_seconds += time.perf_counter() - start
        self.evals.append((pl_module.frames, mean_return))
        recent = [r for _, r in self.evals[-self.consecutive :]]
        if self.reached is None and len(recent) == self.consecutive and min(recent) >= self.target:
            wall = time.perf_counter() - self.start - self.eval_seconds
            self.reached = {"frames": pl_module.frames, "seconds": wall}
            if self.stop:
                trainer.should_stop = True


def run_ours(seed: int, args: argparse.Namespace) -> dict:
    init_args = recipe_args()
    init_args.update(
        seed=seed, total_frames=args.frames, exploration_fraction=exploration_fraction(args)
    )
    model = TimedDQN(**init_args)
    progress = Progress(args, seed)
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
    return {
        "impl": "tdimitation",
        "seed": seed,
        "reached": progress.reached,
        "best_return": best[1],
        "best_at_frames": best[0],
        "frames": model.frames,
        "updates": model.num_updates,
        "train_seconds": round(wall, 2),
        "collect_seconds": round(progress.collect_seconds, 2),
        "update_seconds": round(model.update_seconds, 2),
        "other_seconds": round(wall - progress.collect_seconds - model.update_seconds, 2),
        "evals": [(f, round(r, 1)) for f, r in progress.evals],
    }


SB3_SCRIPT = r"""
import json, sys, time
import numpy as np, torch
torch.set_num_threads(1)
from stable_baselines3 import DQN
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.env_util import make_vec_env

seed, frames, eval_freq, target, stop, exploration_fraction, consecutive = (
    int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), sys.argv[5] == "1",
    float(sys.argv[6]), int(sys.argv[7]))

def greedy_return(model, eval_seed):
    env = make_vec_env("CartPole-v1", n_envs=10, seed=eval_seed)
    obs, returns, current, done_eps = env.reset(), [], np.zeros(10), np.zeros(10, bool)
    while len(returns) < 10:
        action, _ = model.predict(obs, deterministic=True)
        obs, reward, done, _ = env.step(action)
        current += reward
        for i in np.nonzero(done)[0]:
            if not done_eps[i]:   # first episode of each sub-env: no short-episode bias
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
        r = greedy_return(self.model, 10_000 * (seed + 1) + self.num_timesteps)
        self.eval_s += time.perf_counter() - t
        self.evals.append((self.num_timesteps, round(r, 1)))
        recent = [v for _, v in self.evals[-consecutive:]]
        if self.reached is None and len(recent) == consecutive and min(recent) >= target:
            self.reached = {"frames": self.num_timesteps,
                            "seconds": time.perf_counter() - self.t0 - self.eval_s}
            return not stop
        return True

model = DQN("MlpPolicy", "CartPole-v1", learning_rate=2.3e-3, batch_size=64, buffer_size=100000,
            learning_starts=1000, gamma=0.99, target_update_interval=10, train_freq=256,
            gradient_steps=128, exploration_fraction=exploration_fraction,
            exploration_final_eps=0.04,
            policy_kwargs=dict(net_arch=[256, 256]), seed=seed, device="cpu")
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
                  "updates": model._n_updates,
                  "train_seconds": round(wall, 2), "update_seconds": round(update_s[0], 2),
                  "collect_and_other_seconds": round(wall - update_s[0], 2),
                  "evals": cb.evals}))
"""


def run_sb3(seed: int, args: argparse.Namespace, python: Path) -> dict | None:
    stop = "0" if args.no_stop else "1"
    return run_reference_source(
        python, SB3_SCRIPT, seed, args.frames, args.eval_every * 256, args.target, stop,
        exploration_fraction(args), args.consecutive,
    )  # fmt: skip


def summarize(results: list[dict]) -> None:
    for impl in sorted({r["impl"] for r in results}):
        rows = [r for r in results if r["impl"] == impl]
        reached = [r["reached"] for r in rows if r["reached"]]
        print(f"\n== {impl}: {len(reached)}/{len(rows)} seeds reached the target")
        updates = sum(r["update_seconds"] for r in rows)
        if all("updates" in r for r in rows):
            print(f"update cost: {1000 * updates / sum(r['updates'] for r in rows):.2f} ms/step")
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
                f"{r['train_seconds']} s ({split})"
            )
        if reached:
            print(
                f"median to target: {statistics.median(h['frames'] for h in reached):.0f} "
                f"frames, {statistics.median(h['seconds'] for h in reached):.1f} s"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--frames", type=int, default=100_000, help="frame budget per run")
    parser.add_argument("--eval-every", type=int, default=4, help="rounds between evaluations")
    parser.add_argument("--target", type=float, default=475.0)
    parser.add_argument(
        "--consecutive", type=int, default=1, help="evaluations in a row at the target"
    )
    parser.add_argument("--no-stop", action="store_true", help="train to the budget")
    parser.add_argument("--sb3", action="store_true", help="also run Stable-Baselines3's DQN")
    parser.add_argument("--json", type=Path, help="write all results to this file")
    run_seeds(parser.parse_args(), run_ours, run_sb3, summarize)


if __name__ == "__main__":
    main()
