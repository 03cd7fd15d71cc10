"""PPO on CartPole-v1: throughput and time to solve, side by side with Stable-Baselines3.

* Throughput: SB3's default PPO hyperparameters with 8 envs (2048 steps per env per round,
  minibatch 64) and 5 epochs (imitation's tutorial setting); frames/s over 3 rounds after
  a warm-up round, split into collection and update time, and the update time per
  optimizer step (1,280 per round). Ours in three variants: the default fast update
  (closed-form gradients, flat Adam), the same compiled (``compile_loss=True``), and the
  autograd path (``fast_update=False``: ``PPOClipLoss`` + ``backward`` + ``optimizer.step``,
  the implementation before the fast path). SB3 runs in the reference virtualenv
  (``benchmarks/reference/``), interleaved with ours, ``--repeats`` times each.
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
from pathlib import Path

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


ROUNDS, STEPS_PER_ROUND = 3, 5 * 8 * 2048 // 64

VARIANTS = {
    "tdimitation (fast update)": {},
    "tdimitation, compile_loss=True": {"compile_loss": True},
    "tdimitation, autograd path (fast_update=False)": {"fast_update": False},
}


def ours_throughput(rounds: int = ROUNDS, n_epochs: int = 5, **kwargs) -> dict:
    from tdimitation.rl.ppo import PPO

    model = PPO(
        env_id="CartPole-v1",
        num_envs=8,
        n_steps=2048,
        batch_size=64,
        n_epochs=n_epochs,
        total_frames=8 * 2048 * (rounds + 1),
        seed=0,
        **kwargs,
    )
    timer = RoundTimer()
    trainer([timer]).fit(model)
    # The first round (warm-up; with compile_loss it includes compilation) is not timed.
    collect, update = sum(timer.collect[1:]), sum(timer.update[1:])
    return {
        "fps": 8 * 2048 * rounds / (collect + update),
        "collect_s": collect,
        "update_s": update,
        "path": model.update_path,
    }


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
    parser.add_argument("--out", help="also write the result as JSON to this file")
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")

    runs: dict[str, list[dict]] = {name: [] for name in VARIANTS}
    sb3: list[dict] = []
    # Repeat by repeat, SB3 runs between our variants (before the first and after each), so
    # every variant is compared with the SB3 runs taken right beside it.
    pair_ratios: dict[str, list[float]] = {name: [] for name in VARIANTS}

    def sb3_run() -> dict | None:
        ref = reference(["--mode", "throughput", "--rounds", str(ROUNDS)])
        if not ref:
            return None
        row = {k.removeprefix("sb3_"): v for k, v in ref.items()}
        sb3.append(row)
        return row

    for _ in range(args.repeats):
        before = sb3_run()
        for name, kwargs in VARIANTS.items():
            ours = ours_throughput(**kwargs)
            runs[name].append(ours)
            after = sb3_run()
            beside = [r["fps"] for r in (before, after) if r]
            if beside:
                pair_ratios[name].append(ours["fps"] / statistics.mean(beside))
            before = after
    print(
        f"\nPPO CartPole-v1, 8 envs x 2048 steps, batch 64, 5 epochs (median of {args.repeats}; "
        f"{STEPS_PER_ROUND} optimizer steps per round)\n"
    )
    print("| | frames/s | vs SB3 | collect s / round | update s / round | µs / optimizer step |")
    print("|---|---|---|---|---|---|")
    sb3_fps = statistics.median(r["fps"] for r in sb3) if sb3 else None
    result: dict = {"runs": runs, "sb3": sb3}
    for name, rows in (*runs.items(), ("SB3 2.2.1", sb3)):
        if not rows:
            continue
        fps = statistics.median(r["fps"] for r in rows)
        collect = statistics.median(r["collect_s"] for r in rows) / ROUNDS
        update = statistics.median(r["update_s"] for r in rows) / ROUNDS
        ratio = f"{fps / sb3_fps:.2f}x" if sb3_fps else "-"
        print(
            f"| {name} | {fps:,.0f} | {ratio} | {collect:.2f} | {update:.2f} | "
            f"{update / STEPS_PER_ROUND * 1e6:,.0f} |"
        )
        if sb3_fps:
            result.setdefault("ratio", {})[name] = fps / sb3_fps
    for name, ratios in pair_ratios.items():
        if ratios:
            print(
                f"{name}: vs the SB3 runs beside it, median {statistics.median(ratios):.2f}x "
                f"(per repeat: {', '.join(f'{r:.2f}' for r in ratios)})"
            )
    result["pair_ratios"] = pair_ratios
    for name, rows in runs.items():
        print(f"{name}: update path {rows[-1]['path']!r}")
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
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
