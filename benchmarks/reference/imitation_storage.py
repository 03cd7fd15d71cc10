"""Reference trajectory-storage speed of imitation 1.0.1 on 1M CartPole-like transitions.

Run with the imitation venv (see setup_venv.sh), not the project's own venv:

    /work/imitation-venv/bin/python benchmarks/reference/imitation_storage.py \
        [--transitions N] [--repeats R]

Data: N transitions as a list of ``imitation.data.types.TrajectoryWithRew``
(obs float32 [T+1, 4] standard normal, acts int64 in {0, 1}, rews float32 ones,
infos None, terminal = episode shorter than 500), episode lengths uniform in
[10, 500] drawn with ``numpy.random.default_rng(0)``; the last episode is cut so
the total is exactly N. The draws are made in the same order as
``benchmarks/bench_storage.py`` makes its TensorDict, so both sides hold the same
numbers.

Times (median of R repeats, ``torch.set_num_threads(1)``, imports and data
building excluded):

* ``imitation_save_s``: ``imitation.data.serialize.save(path, trajs)`` into a fresh
  directory (HuggingFace ``datasets`` format).
* ``imitation_load_flatten_s``: ``imitation.data.serialize.load(path)`` followed by
  ``imitation.data.rollout.flatten_trajectories_with_rew(...)`` (what training code
  does to get transitions). Note: the loaded arrays are float64 (obs, rews) although
  the files hold float32 -- that is imitation's loader, not this script.

The last stdout line is one JSON object with both times (and a ``details`` object
with per-repeat figures, the split of load vs. flatten, size on disk, versions).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path


def make_trajectories(n_transitions: int, seed: int = 0):
    import numpy as np
    from imitation.data.types import TrajectoryWithRew

    rng = np.random.default_rng(seed)
    lengths = []
    total = 0
    while total < n_transitions:
        length = int(min(rng.integers(10, 501), n_transitions - total))
        lengths.append(length)
        total += length
    n_eps = len(lengths)
    full_obs = rng.standard_normal((n_transitions + n_eps, 4), dtype=np.float32)
    acts = rng.integers(0, 2, n_transitions)  # int64
    trajs = []
    start = 0  # first transition of the episode
    for i, length in enumerate(lengths):
        row = start + i  # its first observation row (each episode owns T+1 rows)
        trajs.append(
            TrajectoryWithRew(
                obs=full_obs[row : row + length + 1].copy(),
                acts=acts[start : start + length].copy(),
                infos=None,
                terminal=length != 500,  # CartPole: 500 steps = time limit
                rews=np.ones(length, dtype=np.float32),
            )
        )
        start += length
    return trajs


def dir_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--transitions", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import datasets
    import imitation
    import numpy as np
    import torch
    from imitation.data import rollout, serialize

    torch.set_num_threads(1)
    datasets.disable_progress_bars()
    loadavg = os.getloadavg()[0]

    trajs = make_trajectories(args.transitions)
    assert sum(len(t.acts) for t in trajs) == args.transitions

    tmp = Path(tempfile.mkdtemp(prefix="imitation_storage_"))
    try:
        save_s, load_s, flatten_s, total_s = [], [], [], []
        size = 0
        for r in range(args.repeats):
            path = tmp / f"trajs_{r}"
            t0 = time.perf_counter()
            serialize.save(path, trajs)
            save_s.append(time.perf_counter() - t0)
            size = dir_size(path)

        path = tmp / "trajs_0"
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            loaded = serialize.load(path)
            t1 = time.perf_counter()
            transitions = rollout.flatten_trajectories_with_rew(loaded)
            t2 = time.perf_counter()
            load_s.append(t1 - t0)
            flatten_s.append(t2 - t1)
            total_s.append(t2 - t0)
            assert len(transitions) == args.transitions
            assert transitions.obs.shape == (args.transitions, 4)
            # imitation's HF loader builds arrays with np.asarray() on python lists, so
            # float32 observations come back as float64 (the files hold float32).
            loaded_dtypes = {k: str(getattr(transitions, k).dtype) for k in ("obs", "acts", "rews")}
            del loaded, transitions
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    print(
        f"imitation serialize.save: {statistics.median(save_s):.2f} s "
        f"(repeats {[round(s, 2) for s in save_s]}); {size / 2**20:.1f} MiB on disk",
        flush=True,
    )
    print(
        f"imitation serialize.load + flatten_trajectories_with_rew: "
        f"{statistics.median(total_s):.2f} s (repeats {[round(s, 2) for s in total_s]}; "
        f"load {statistics.median(load_s):.3f} s, flatten {statistics.median(flatten_s):.2f} s)",
        flush=True,
    )
    result = {
        "imitation_save_s": statistics.median(save_s),
        "imitation_load_flatten_s": statistics.median(total_s),
        "details": {
            "transitions": args.transitions,
            "episodes": len(trajs),
            "repeats": args.repeats,
            "save_best_s": min(save_s),
            "load_flatten_best_s": min(total_s),
            "save_s": save_s,
            "load_flatten_s": total_s,
            "load_only_s": load_s,
            "flatten_only_s": flatten_s,
            "bytes_on_disk": size,
            "loaded_dtypes": loaded_dtypes,
            "loadavg_1min_at_start": loadavg,
            "versions": {
                "imitation": imitation.__version__,
                "datasets": datasets.__version__,
                "torch": torch.__version__,
                "numpy": np.__version__,
            },
        },
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
