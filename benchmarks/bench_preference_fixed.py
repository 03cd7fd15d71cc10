"""Fixed-dataset preference comparisons: does the learned reward track Pendulum's true one?

The recipe ``recipes/preference/pendulum_fixed_dataset.yaml`` (its ``model.init_args``) is
trained on 20 episodes of a uniformly random policy (seed ``s``) with synthetic labels,
no agent. The learned per-step reward is then compared with the true one by Pearson
correlation on fresh episodes the model never saw:

* ``random``: 20 episodes of the random policy on another env/policy seed (``1000 + s``),
  the distribution the model was trained on (target: >= 0.8);
* ``expert``: 20 episodes of the scripted swing-up expert (``PendulumExpert``), mostly
  near upright, where a model trained on random play has seen few states (informative).

Run (several seeds; JSON in ``benchmarks/results/``; ``--write`` regenerates the
``<!-- preference-fixed:begin/end -->`` section of RESULTS.md from that JSON)::

    PYTHONPATH=$PWD python benchmarks/bench_preference_fixed.py --seeds 0 1 2 3 4 \
        --json benchmarks/results/preference_fixed_dataset.json
    PYTHONPATH=$PWD python benchmarks/bench_preference_fixed.py --summary --write \
        --json benchmarks/results/preference_fixed_dataset.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "preference" / "pendulum_fixed_dataset.yaml"
DEFAULT_JSON = ROOT / "benchmarks" / "results" / "preference_fixed_dataset.json"
TRAIN_EPISODES, EVAL_EPISODES, TARGET = 20, 20, 0.8


def recipe_options(recipe: Path = RECIPE) -> dict:
    """The recipe's ``model.init_args`` (the module's constructor arguments)."""
    import yaml

    return dict(yaml.safe_load(recipe.read_text())["model"]["init_args"])


def episodes(policy_name: str, seed: int, n_episodes: int):
    """``n_episodes`` whole Pendulum episodes of the random policy or the scripted expert."""
    from tdimitation.data.rollout import rollout
    from tdimitation.envs import make_env
    from tdimitation.policies.base import RandomPolicy
    from tdimitation.policies.scripted import PendulumExpert

    env = make_env("Pendulum-v1", num_envs=4, seed=seed)
    try:
        policy = RandomPolicy(env, seed=seed) if policy_name == "random" else PendulumExpert()
        return rollout(policy, env, min_episodes=n_episodes, deterministic=True)
    finally:
        env.close()


def pearson(learned, true) -> float:
    import torch

    return float(torch.corrcoef(torch.stack([learned.double(), true.double()]))[0, 1])


def learned_rewards(module, trajectories):
    net = module.reward_net
    return net.predict_processed(
        trajectories["observation"],
        trajectories["action"],
        trajectories["next", "observation"],
        trajectories["next", "done"][..., 0],
    )


def run_seed(seed: int, overrides: dict | None = None) -> dict:
    import lightning as L
    import torch

    from tdimitation.algorithms import PreferenceComparisons

    options = recipe_options() | {"seed": seed} | (overrides or {})
    train = episodes("random", seed, TRAIN_EPISODES)
    module = PreferenceComparisons(trajectories=train, **options)
    trainer = L.Trainer(
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    start = time.perf_counter()
    trainer.fit(module)
    fit_s = time.perf_counter() - start
    row = {
        "seed": seed,
        "fit_s": fit_s,
        "train_transitions": int(train.numel()),
        "comparisons": len(module.dataset),
        "accuracy": float(module.last_query_metrics["reward/accuracy"]),
        "overrides": overrides or {},
    }
    with torch.no_grad():
        for name in ("random", "expert"):
            fresh = episodes(name, 1000 + seed, EVAL_EPISODES)
            true = fresh["next", "reward"][..., 0]
            row[f"pearson_{name}"] = pearson(learned_rewards(module, fresh), true)
            row[f"{name}_true_return"] = float(true.sum() / EVAL_EPISODES)
        row["pearson_train"] = pearson(
            learned_rewards(module, train), train["next", "reward"][..., 0]
        )
    return row


def summary(rows: list[dict]) -> str:
    rows = [r for r in rows if not r.get("overrides")]
    if not rows:
        return "(no runs)"
    options = recipe_options()
    rand = [r["pearson_random"] for r in rows]
    expert = [r["pearson_expert"] for r in rows]
    dates = sorted({r["date"] for r in rows})
    lines = [
        f"Measured {', '.join(dates)} with `benchmarks/bench_preference_fixed.py`: the recipe "
        f"`preference/pendulum_fixed_dataset` ({options['total_comparisons']:,} synthetic "
        f"comparisons of {options['fragment_length']}-step fragments, "
        f"{options['num_iterations']} iterations after the initial query) on "
        f"{TRAIN_EPISODES} random-policy Pendulum-v1 episodes, no agent; Pearson correlation"
        f" of the learned and the true per-step reward on {EVAL_EPISODES} fresh episodes of"
        f" the random policy (other seeds) and of the scripted swing-up expert. Target"
        f" (random): >= {TARGET}.",
        "",
        "| seed | Pearson, fresh random | Pearson, expert | Pearson, training episodes"
        " | reward accuracy | fit s |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in sorted(rows, key=lambda r: r["seed"]):
        lines.append(
            f"| {r['seed']} | {r['pearson_random']:.3f} | {r['pearson_expert']:.3f} | "
            f"{r['pearson_train']:.3f} | {r['accuracy']:.3f} | {r['fit_s']:.1f} |"
        )
    lines += [
        "",
        f"Fresh random episodes: median {statistics.median(rand):.3f}, min {min(rand):.3f} "
        f"over {len(rows)} seeds (target >= {TARGET}: "
        f"{'met' if min(rand) >= TARGET else 'not met'} on every seed); expert episodes: "
        f"median {statistics.median(expert):.3f}, min {min(expert):.3f}.",
    ]
    return "\n".join(lines)


def write_section(text: str, name: str = "preference-fixed") -> None:
    results_md = ROOT / "benchmarks" / "RESULTS.md"
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    content = results_md.read_text()
    head, rest = content.split(begin, 1)
    _, tail = rest.split(end, 1)
    results_md.write_text(f"{head}{begin}\n{text}\n{end}{tail}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON)
    parser.add_argument(
        "--set", default="{}", help="JSON of constructor overrides (diagnostic runs)"
    )
    parser.add_argument("--summary", action="store_true", help="print the RESULTS.md section")
    parser.add_argument("--write", action="store_true", help="with --summary: into RESULTS.md")
    args = parser.parse_args()
    rows = json.loads(args.json.read_text()) if args.json.exists() else []
    if args.summary:
        text = summary(rows)
        print(text)
        if args.write:
            write_section(text)
        return
    import torch

    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    overrides = json.loads(args.set)
    for seed in args.seeds:
        row = run_seed(seed, overrides)
        row["date"] = time.strftime("%Y-%m-%d")
        row["loadavg_1min"] = os.getloadavg()[0]
        print(json.dumps(row), flush=True)
        rows.append(row)
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
