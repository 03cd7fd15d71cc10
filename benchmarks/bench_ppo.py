"""PPO on CartPole-v1: throughput and time to solve, side by side with Stable-Baselines3.

* Throughput: SB3's default PPO hyperparameters with 8 envs (2048 steps per env per round,
  minibatch 64) and 5 epochs (imitation's tutorial setting); frames/s over 3 rounds after
  a warm-up round, split into collection and update time. SB3 runs in the reference
  virtualenv (``benchmarks/reference/``), interleaved with ours, ``--repeats`` times each.
* Solve: identical hyperparameters on both sides (the SB3-zoo CartPole settings, constant
  clip range); wall-clock of training (evaluation excluded) until a deterministic
  10-episode evaluation after a round reaches a mean return of 475.

Run: ``python benchmarks/bench_ppo.py [--repeats 2] [--skip-solve]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import warnings

import lightning as L
import torch
from _reference import run_reference


class RoundTimer(L.Callback):
    """Per-round collection and update time (the module times its own collection)."""

    def __init__(self) -> None:
        self.collect: list[float] = []
        self.update: list[float] = []
        self._mark = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._mark = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        total = time.perf_counter() - self._mark
        self.collect.append(pl_module._collect_seconds)
        self.update.append(total - pl_module._collect_seconds)


class SolveWatch(L.Callback):
    """Evaluate after every round; stop when the mean return reaches the target."""

    def __init__(self, target: float = 475.0) -> None:
        from tdimitation.envs import make_env

        self.env = make_env("CartPole-v1", num_envs=10, seed=10_000)
        self.target = target
        self.eval_time = 0.0
        self.solved_at: tuple[int, float] | None = None
        self.start = 0.0

    def on_train_start(self, trainer, pl_module) -> None:
        self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        from tdimitation.data import rollout, rollout_stats

        t = time.perf_counter()
        stats = rollout_stats(
            rollout(pl_module.actor, self.env, min_episodes=10, deterministic=True)
        )
        self.eval_time += time.perf_counter() - t
        if stats["return_mean"] >= self.target:
            self.solved_at = (pl_module.frames, time.perf_counter() - self.start - self.eval_time)
            trainer.should_stop = True


def trainer(callbacks) -> L.Trainer:
    return L.Trainer(
        max_epochs=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        callbacks=callbacks,
    )


def ours_throughput(rounds: int = 3, n_epochs: int = 5, compile_loss: bool = False) -> dict:
    from tdimitation.rl.ppo import PPO

    model = PPO(
        env_id="CartPole-v1",
        num_envs=8,
        n_steps=2048,
        batch_size=64,
        n_epochs=n_epochs,
        total_frames=8 * 2048 * (rounds + 1),
        seed=0,
        compile_loss=compile_loss,
    )
    timer = RoundTimer()
    trainer([timer]).fit(model)
    # The first round (warm-up; with compile_loss it includes compilation) is not timed.
    collect, update = sum(timer.collect[1:]), sum(timer.update[1:])
    return {"fps": 8 * 2048 * rounds / (collect + update), "collect_s": collect, "update_s": update}


def ours_solve(seed: int = 0, max_frames: int = 300_000) -> dict[str, float | None]:
    from tdimitation.rl.ppo import PPO

    model = PPO(
        env_id="CartPole-v1",
        num_envs=8,
        n_steps=32,
        batch_size=256,
        gae_lambda=0.8,
        gamma=0.98,
        n_epochs=20,
        ent_coef=0.0,
        learning_rate=1e-3,
        lr_schedule="linear",
        total_frames=max_frames,
        seed=seed,
    )
    watch = SolveWatch()
    trainer([watch]).fit(model)
    frames, seconds = watch.solved_at if watch.solved_at else (None, None)
    return {"solve_frames": frames, "solve_s": seconds}


def reference(args: list[str]) -> dict | None:
    return run_reference("sb3_ppo.py", *args)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--skip-solve", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")

    ours, ours_compiled, sb3 = [], [], []
    for _ in range(args.repeats):
        ours.append(ours_throughput())
        ours_compiled.append(ours_throughput(compile_loss=True))
        ref = reference(["--mode", "throughput", "--rounds", "3"])
        if ref:
            sb3.append(ref)
    fps = statistics.median(r["fps"] for r in ours)
    print(
        f"\nPPO CartPole-v1, 8 envs x 2048 steps, batch 64, 5 epochs (median of {args.repeats})\n"
    )
    print("| | frames/s | collect s / round | update s / round |")
    print("|---|---|---|---|")
    rows = (
        ("tdimitation", ours, ""),
        ("tdimitation, compile_loss=True", ours_compiled, ""),
        ("SB3 2.2.1", sb3, "sb3_"),
    )
    for name, runs, prefix in rows:
        if not runs:
            continue
        key = f"{prefix}fps"
        collect_key, update_key = f"{prefix}collect_s", f"{prefix}update_s"
        print(
            f"| {name} | {statistics.median(r[key] for r in runs):,.0f} | "
            f"{statistics.median(r[collect_key] for r in runs) / 3:.2f} | "
            f"{statistics.median(r[update_key] for r in runs) / 3:.2f} |"
        )
    result = {"ours": ours, "ours_compiled": ours_compiled, "sb3": sb3}
    if sb3:
        sb3_fps = statistics.median(r["sb3_fps"] for r in sb3)
        compiled_fps = statistics.median(r["fps"] for r in ours_compiled)
        result["ratio"], result["ratio_compiled"] = fps / sb3_fps, compiled_fps / sb3_fps
        print(
            f"\nthroughput ratio tdimitation / SB3 = {result['ratio']:.2f} (eager), "
            f"{result['ratio_compiled']:.2f} (compile_loss=True, after compilation)"
        )
    if not args.skip_solve:
        solve = ours_solve()
        ref = reference(["--mode", "solve"])
        print(
            f"\ntime to a mean return of 475 (training only): tdimitation "
            f"{solve['solve_s']} s at {solve['solve_frames']} frames; SB3 "
            f"{ref and ref['sb3_solve_s']} s at {ref and ref['sb3_solve_frames']} frames"
        )
        result |= {"solve": solve, "sb3_solve": ref}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
