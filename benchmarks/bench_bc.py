"""BC training throughput: tdimitation's BC in a Lightning Trainer vs a bare torch loop.

50,000 CartPole-like transitions, 32-32 tanh policy, batch 32 and 256. In the same run:

* ``bare``: the ceiling the issue defines: same MLP, ``torch.optim.Adam`` (default
  implementation), cross-entropy, slicing pre-shuffled tensors, no Lightning;
* ``bare_fused``: the same with ``Adam(fused=True)``;
* ``ours``: ``tdimitation.algorithms.BC`` in ``lightning.Trainer`` (defaults: 64 fused
  optimizer steps per ``training_step``, analytic gradients, logging once per block; entropy
  term included);
* ``imitation``: imitation 1.0.1's BC in the reference venv, if present, run once per
  repeat between ours (so that every ratio compares figures taken minutes apart).

Samples/s exclude start-up (a warm-up fit runs first). The table gives the median rate of
``--repeats`` and the median of the per-repeat ratios (the machine's load moves the absolute
rates; ratios taken in the same repeat move less). ``--slow-path`` adds ``ours`` with
``fast_updates=False`` (every step through ``manual_backward`` and Lightning's optimizer
wrapper, autograd gradients).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import warnings

import torch
import torch.nn.functional as F
from _reference import run_reference
from torch import nn

N = 50_000


def make_demos():
    from tensordict import TensorDict

    g = torch.Generator().manual_seed(0)
    obs = torch.randn(N, 4, generator=g)
    done = torch.zeros(N, 1, dtype=torch.bool)
    done[499::500] = True
    return TensorDict(
        {
            "observation": obs,
            "action": torch.randint(0, 2, (N,), generator=g),
            "episode": torch.arange(N) // 500,
            "next": {
                "observation": obs,
                "done": done,
                "terminated": done,
                "truncated": torch.zeros_like(done),
                "reward": torch.ones(N, 1),
            },
        },
        batch_size=[N],
    )


def bare(batch_size: int, samples: int, fused: bool) -> float:
    g = torch.Generator().manual_seed(0)
    obs, act = torch.randn(N, 4, generator=g), torch.randint(0, 2, (N,), generator=g)
    net = nn.Sequential(nn.Linear(4, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 2))
    opt = torch.optim.Adam(net.parameters(), lr=1e-3, fused=fused)
    steps = samples // batch_size
    per_epoch = N // batch_size
    perm = torch.randperm(N)
    o, a = obs[perm], act[perm]
    start = time.perf_counter()
    for i in range(steps):
        j = i % per_epoch
        if j == 0 and i:
            perm = torch.randperm(N)
            o, a = obs[perm], act[perm]
        loss = F.cross_entropy(
            net(o[j * batch_size : (j + 1) * batch_size]), a[j * batch_size : (j + 1) * batch_size]
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
    return steps * batch_size / (time.perf_counter() - start)


def ours(batch_size: int, samples: int, demos, **kwargs) -> float:
    import lightning as L

    from tdimitation.algorithms import BC, DemonstrationData

    steps = samples // batch_size
    model = BC("CartPole-v1", n_batches=steps, batch_size=batch_size, seed=0, **kwargs)
    trainer = L.Trainer(
        max_epochs=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    data = DemonstrationData("CartPole-v1", trajectories=demos)
    start = {}

    class Clock(L.Callback):
        def on_train_start(self, *args):
            start["t"] = time.perf_counter()

    trainer.callbacks.append(Clock())
    trainer.fit(model, datamodule=data)
    return steps * batch_size / (time.perf_counter() - start["t"])


def imitation(samples: int) -> dict | None:
    return run_reference("imitation_bc.py", "--samples", samples)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=300_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--slow-path", action="store_true")
    parser.add_argument("--no-imitation", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    demos = make_demos()
    ours(32, 20_000, demos)  # warm-up (imports, first fit)
    results: dict[str, list[float]] = {}
    ratios: dict[str, list[float]] = {}
    for _ in range(args.repeats):
        run: dict[str, float] = {}
        for bs in (32, 256):
            samples = args.samples if bs == 32 else args.samples * 4
            run[f"bare_{bs}"] = bare(bs, samples, fused=False)
            run[f"bare_fused_{bs}"] = bare(bs, samples, fused=True)
            run[f"ours_{bs}"] = ours(bs, samples, demos)
            if args.slow_path:
                run[f"ours_slow_{bs}"] = ours(bs, samples, demos, fast_updates=False)
        ref = None if args.no_imitation else imitation(args.samples // 2)
        for bs in (32, 256):
            if ref:
                run[f"imitation_{bs}"] = ref[f"imitation_bc_{bs}"]
                ratios.setdefault(f"imitation_{bs}", []).append(
                    run[f"ours_{bs}"] / run[f"imitation_{bs}"]
                )
            ratios.setdefault(f"bare_{bs}", []).append(run[f"ours_{bs}"] / run[f"bare_{bs}"])
        for key, value in run.items():
            results.setdefault(key, []).append(value)
        print(json.dumps({"repeat": run}), flush=True)
    med = {k: statistics.median(v) for k, v in results.items()}
    ratio = {k: statistics.median(v) for k, v in ratios.items()}
    print(
        f"\nBC throughput (samples/s), 50,000 transitions, 32-32 policy, median of {args.repeats}\n"
    )
    header = [
        "batch",
        "tdimitation BC (Lightning)",
        *(["BC, fast_updates=False"] if args.slow_path else []),
        "bare loop (Adam)",
        "bare loop (fused Adam)",
        "imitation 1.0.1",
        "ours / bare",
        "ours / imitation",
    ]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for bs in (32, 256):
        im = med.get(f"imitation_{bs}")
        cells = [
            str(bs),
            f"{med[f'ours_{bs}']:,.0f}",
            *([f"{med[f'ours_slow_{bs}']:,.0f}"] if args.slow_path else []),
            f"{med[f'bare_{bs}']:,.0f}",
            f"{med[f'bare_fused_{bs}']:,.0f}",
            "-" if im is None else f"{im:,.0f}",
            f"{ratio[f'bare_{bs}']:.2f}",
            "-" if im is None else f"{ratio[f'imitation_{bs}']:.2f}",
        ]
        print("| " + " | ".join(cells) + " |")
    print(json.dumps({"medians": med, "ratios": ratios}))


if __name__ == "__main__":
    main()
