"""PPO on CartPole-v1: frames per second on 1 process and on 2 processes under ``ddp``.

Three variants, each a fresh ``python`` process running ``trainer.fit`` on the CPU:

* 1 process, the default update (the fused closed-form update);
* 1 process, ``fast_update=False`` (the autograd update, which ``ddp`` trains with:
  DDP averages gradients in the backward pass);
* 2 processes, ``strategy="ddp"``, gloo (each collects ``num_envs * n_steps`` frames a
  round; ``total_frames`` counts both).

Settings are ``recipes/ppo/cartpole.yaml``'s (8 envs x 256 steps a round, 10 epochs of
batch 256) with the same ``total_frames`` for every variant. Frames per second are
``total_frames`` over the training loop's wall-clock time (``on_train_start`` to
``on_train_end`` on rank 0: Python start-up, imports and ``ddp``'s process launch are
left out, and reported separately as the whole fit's time). Each repeat runs every
variant once, in turn (interleaved); the table gives medians.

    python benchmarks/bench_ddp.py --repeats 3 --frames 65536
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VARIANTS = {
    "1 process, fused update (default)": {"devices": 1, "fast_update": True},
    "1 process, autograd update (fast_update=False)": {"devices": 1, "fast_update": False},
    "2 processes, ddp (autograd update)": {"devices": 2, "fast_update": True},
}


def worker(devices: int, fast_update: bool, frames: int, out: Path) -> None:
    """One fit; rank 0 writes its training-loop and whole-fit seconds to ``out``."""
    import warnings

    warnings.filterwarnings("ignore")
    import logging

    import lightning as L

    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    from tdimitation.rl import PPO

    class LoopTimer(L.Callback):
        def on_train_start(self, trainer, pl_module) -> None:
            self.start = time.perf_counter()

        def on_train_end(self, trainer, pl_module) -> None:
            self.seconds = time.perf_counter() - self.start

    model = PPO(
        "CartPole-v1",
        num_envs=8,
        n_steps=256,
        total_frames=frames,
        n_epochs=10,
        batch_size=256,
        learning_rate=1e-3,
        lr_schedule="linear",
        gamma=0.98,
        gae_lambda=0.8,
        seed=0,
        fast_update=fast_update,
    )
    timer = LoopTimer()
    multi = {"strategy": "ddp", "devices": devices} if devices > 1 else {"devices": 1}
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        callbacks=[timer],
        **multi,
    )
    start = time.perf_counter()
    trainer.fit(model)
    fit_seconds = time.perf_counter() - start
    if trainer.global_rank == 0:
        record = {
            "loop_s": timer.seconds,
            "fit_s": fit_seconds,
            "frames": model.frames,
            "update_path": model.update_path,
        }
        out.write_text(json.dumps(record))


def run_variant(options: dict, frames: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        command = [
            sys.executable,
            os.path.abspath(__file__),
            "--worker",
            "--devices",
            str(options["devices"]),
            "--fast-update",
            str(int(options["fast_update"])),
            "--frames",
            str(frames),
            "--out",
            str(out),
        ]
        subprocess.run(command, check=True, capture_output=True, text=True, timeout=3600)
        return json.loads(out.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--frames", type=int, default=65536)
    parser.add_argument("--json", help="also write the raw results here")
    parser.add_argument("--from-json", help="print the table of a saved run and exit")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--devices", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--fast-update", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.devices, bool(args.fast_update), args.frames, Path(args.out))
        return
    if args.from_json:
        print_table(json.loads(Path(args.from_json).read_text()))
        return
    results: dict[str, list[dict]] = {name: [] for name in VARIANTS}
    total = args.repeats * len(VARIANTS)
    started = time.perf_counter()
    done = 0
    for repeat in range(args.repeats):
        for name, options in VARIANTS.items():
            record = run_variant(options, args.frames)
            results[name].append(record)
            done += 1
            elapsed = time.perf_counter() - started
            eta = elapsed / done * (total - done)
            print(
                f"[{done}/{total}, ETA {eta:.0f} s] repeat {repeat + 1}: {name}: "
                f"{record['frames'] / record['loop_s']:,.0f} frames/s",
                flush=True,
            )
    record = {
        "results": results,
        "load": os.getloadavg()[0],
        "frames": args.frames,
        "date": time.strftime("%Y-%m-%d"),
        "cores": os.cpu_count(),
    }
    print_table(record)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(record, f, indent=1)


def print_table(record: dict) -> None:
    """The markdown table of a run (``--from-json`` prints a saved run's again)."""
    results = record["results"]
    repeats = len(next(iter(results.values())))
    print(
        f"\nPPO CartPole-v1, {record['frames']:,} frames per fit, median of {repeats} "
        f"interleaved repeats, {record['date']}, {record['cores']} cores, 1-min load at the "
        f"end {record['load']:.2f}\n"
    )
    print(
        "| variant | frames/s (training loop) | / 1 process, fused | / 1 process, autograd "
        "| whole fit | update path |"
    )
    print("|---|---|---|---|---|---|")
    fps = {
        name: statistics.median(r["frames"] / r["loop_s"] for r in records)
        for name, records in results.items()
    }
    fused, autograd = (fps[name] for name in list(VARIANTS)[:2])
    for name, records in results.items():
        fit = statistics.median(r["fit_s"] for r in records)
        path = records[0]["update_path"].split(":")[0]
        print(
            f"| {name} | {fps[name]:,.0f} | {fps[name] / fused:.2f} | "
            f"{fps[name] / autograd:.2f} | {fit:.1f} s | {path} |"
        )


if __name__ == "__main__":
    main()
