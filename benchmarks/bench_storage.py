"""Speed of trajectory storage: save_trajectories / load_trajectories on 1M transitions.

Run: ``python benchmarks/bench_storage.py [--transitions N] [--repeats R]``.

Data: CartPole-like transitions (obs float32 [4], int64 actions, float32 rewards) in
episodes with lengths uniform in [10, 500]. Times are the median of R runs with
``torch.set_num_threads(1)``, excluding imports. The reference figures for
``imitation`` 1.0.1 (``serialize.save`` / ``serialize.load`` + flattening to
transitions) were measured on this machine with the same data size.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from _reference import run_reference

IMITATION_SAVE_S = 5.7
IMITATION_LOAD_FLATTEN_S = 6.5


def make_data(n_transitions: int, seed: int = 0):
    import numpy as np
    import torch
    from tensordict import TensorDict

    rng = np.random.default_rng(seed)
    lengths = []
    total = 0
    while total < n_transitions:
        length = int(min(rng.integers(10, 501), n_transitions - total))
        lengths.append(length)
        total += length
    lengths = np.array(lengths)
    n_eps = lengths.size
    episode = np.repeat(np.arange(n_eps), lengths)
    full_obs = rng.standard_normal((n_transitions + n_eps, 4), dtype=np.float32)
    rows = np.arange(n_transitions) + episode
    last = np.cumsum(lengths) - 1
    terminated = np.zeros((n_transitions, 1), dtype=bool)
    truncated = np.zeros((n_transitions, 1), dtype=bool)
    # CartPole: episodes of 500 steps hit the time limit, the others fell over.
    full = lengths == 500
    terminated[last[~full], 0] = True
    truncated[last[full], 0] = True
    td = TensorDict(
        {
            "observation": torch.from_numpy(full_obs[rows]),
            "action": torch.from_numpy(rng.integers(0, 2, n_transitions)),
            "next": {
                "observation": torch.from_numpy(full_obs[rows + 1]),
                "reward": torch.ones(n_transitions, 1),
                "terminated": torch.from_numpy(terminated),
                "truncated": torch.from_numpy(truncated),
                "done": torch.from_numpy(terminated | truncated),
            },
            "episode": torch.from_numpy(episode),
        },
        batch_size=[n_transitions],
    )
    return td, n_eps


def dir_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def imitation_reference(transitions: int, repeats: int) -> dict | None:
    """imitation's save and load+flatten times from the reference venv, if it exists."""
    return run_reference("imitation_storage.py", "--transitions", transitions, "--repeats", repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--transitions", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import torch

    from tdimitation.data.storage import load_trajectories, save_trajectories

    torch.set_num_threads(1)
    td, n_eps = make_data(args.transitions)
    workdir = Path(tempfile.mkdtemp(prefix="bench_storage-"))
    try:
        # Warm-up: imports (datasets ~1 s) and first-touch costs stay out of the timings.
        save_trajectories(workdir / "warmup", make_data(2000)[0])
        load_trajectories(workdir / "warmup")

        save_times, overwrite_times, load_times = [], [], []
        for i in range(args.repeats):
            start = time.perf_counter()
            save_trajectories(workdir / f"fresh-{i}", td)
            save_times.append(time.perf_counter() - start)
        target = workdir / "fresh-0"
        for _ in range(args.repeats):
            start = time.perf_counter()
            save_trajectories(target, td)
            overwrite_times.append(time.perf_counter() - start)
        for _ in range(args.repeats):
            start = time.perf_counter()
            loaded = load_trajectories(target)
            load_times.append(time.perf_counter() - start)
        assert loaded.shape == td.shape
        assert torch.equal(loaded["observation"], td["observation"])
        size_mb = dir_size(target) / 1e6
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    save_s = statistics.median(save_times)
    overwrite_s = statistics.median(overwrite_times)
    load_s = statistics.median(load_times)
    reference = imitation_reference(args.transitions, args.repeats)
    imitation_save_s, imitation_load_s = IMITATION_SAVE_S, IMITATION_LOAD_FLATTEN_S
    source = "figures given in the issue (another run)"
    if reference:
        imitation_save_s = round(reference["imitation_save_s"], 3)
        imitation_load_s = round(reference["imitation_load_flatten_s"], 3)
        source = "measured in this run (reference venv)"
    print(
        f"\n{args.transitions:,} transitions, {n_eps:,} episodes (lengths 10-500), "
        f"median of {args.repeats}, torch threads 1\n"
    )
    print("| operation | tdimitation | imitation 1.0.1 | speed-up |")
    print("|---|---|---|---|")
    print(
        f"| save (new path) | {save_s:.3f} s | {imitation_save_s} s | "
        f"{imitation_save_s / save_s:.0f}x |"
    )
    print(f"| save (replace existing dataset) | {overwrite_s:.3f} s | - | - |")
    print(
        f"| load + flatten to TensorDict | {load_s:.3f} s | {imitation_load_s} s | "
        f"{imitation_load_s / load_s:.0f}x |"
    )
    print(f"| size on disk | {size_mb:.1f} MB | - | - |")
    print(f"\nimitation figures: {source}")
    target_s = imitation_load_s / 10
    verdict = "met" if load_s <= target_s else "MISSED"
    print(f"\ntarget load + flatten <= {target_s:.2f} s (10x imitation): {verdict}")


if __name__ == "__main__":  # importing torchrl elsewhere switches mp to spawn
    main()
