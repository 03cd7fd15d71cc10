"""Preference comparisons: speed against imitation 1.0.1, and recipe quality over seeds.

Speed mode (default): imitation's preference-comparisons tutorial on Pendulum-v1 (50,000
agent steps, 200 comparisons, 5 iterations, fragment length 100), run side by side with
ours in one interleaved run (imitation, ours, imitation, ours, ... for ``--repeats``)::

    PYTHONPATH=$PWD python benchmarks/bench_preference.py [--repeats 2] [--json out.json]

imitation runs in the reference venv (``benchmarks/reference/imitation_preference.py``,
whose docstring gives its settings). Ours is ``PreferenceComparisons`` with the same
settings as far as the algorithm allows (``OURS`` below): a PPO agent with 8 envs x 256
steps, batch 64, 10 epochs, lr 2e-3, clip 0.1, gamma 0.97, gae 0.95, ent 0.01, a [32, 32]
tanh policy on running-normalised observations; a [32, 32] ReLU state-action reward net on
running-normalised input; 3 reward epochs of batch 32 at lr 1e-3 (x4 in the first
training); hyperbolic schedule, initial fraction 0.1, exploration fraction 0.05, sampled
labels at temperature 1, no reward-output normalisation (imitation's tutorial feeds the
raw reward net to the agent).

Agent steps: imitation's agent runs whole PPO rollouts and ends up taking 61,440 steps
for the 50,000 budget (``agent_steps``, SB3's ``num_timesteps``, measured); ours is given
the same 61,440 frames (30 rounds of 2,048), so both sides do the same agent work. Times are
wall seconds of the training call (``trainer.train`` there, ``Trainer.fit`` here, which
includes Lightning's setup), one torch thread on both sides, evaluation excluded.

Split: ``agent_s`` (collection + PPO updates + relabelling with the learned reward),
``reward_s`` (reward-model training), ``fragments_s`` (trajectories for fragments,
fragmenting, gathering labels). Ours: ``reward_s`` and ``fragments_s`` from timers wrapped
around the module's reward trainer and ``_sample_trajectories`` / ``preference_query``;
``agent_s`` is the rest of the fit. ``accuracy`` is the reward trainer's mean training
accuracy in its last epoch on both sides (against the sampled labels);
``heldout_accuracy`` the share of 1,000 held-out pairs of 100-step fragments (fresh
episodes of a random, a mixed and an expert policy, built once per run by
``heldout_pairs`` and read by both sides) whose higher-true-return fragment the final
reward model ranks higher; ``true_return`` the mean of 10 deterministic episodes on a
separate env.

Quality mode: the shipped recipes over seeds, each a whole ``tdimitation fit`` process,
through ``benchmarks/run_recipes.py`` (results as JSON lines)::

    python benchmarks/run_recipes.py --recipes preference/pendulum preference/cartpole_fixed \
        --seeds 0 1 2 --results benchmarks/results/preference.jsonl

``--summary`` prints the section of RESULTS.md from the JSON files (speed JSON and the
recipes' JSON lines)::

    python benchmarks/bench_preference.py --summary --json benchmarks/results/preference_speed.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECIPE_RESULTS = ROOT / "benchmarks" / "results" / "preference.jsonl"

STEPS, COMPARISONS, ITERATIONS, FRAGMENT_LENGTH = 50_000, 200, 5, 100
# imitation's agent takes 61,440 steps for the 50,000-step budget (SB3's num_timesteps after
# train(); 6 PPO rollouts of 2,048 per iteration): ours gets the same number of agent frames,
# 30 rounds of 8 x 256 (--ours-frames to change).
OUR_FRAMES = 61_440

OURS = dict(
    agent="ppo",
    agent_kwargs=dict(
        n_steps=256,
        batch_size=64,
        n_epochs=10,
        learning_rate=2e-3,
        clip_epsilon=0.1,
        gamma=0.97,
        gae_lambda=0.95,
        ent_coef=0.01,
        hidden_sizes=[32, 32],
        activation="tanh",
        normalize_observations=True,
    ),
    num_envs=8,
    num_iterations=ITERATIONS,
    fragment_length=FRAGMENT_LENGTH,
    transition_oversampling=1.0,
    initial_comparison_frac=0.1,
    query_schedule="hyperbolic",
    reward_kwargs=dict(hidden_sizes=[32, 32]),
    reward_lr=1e-3,
    reward_batch_size=32,
    reward_epochs=3,
    initial_epoch_multiplier=4,
    exploration_frac=0.05,
    temperature=1.0,
    sample_labels=True,
    normalize_reward=False,
)


#: The held-out comparisons both sides' final reward models are scored on (built once per
#: run by ``heldout_pairs`` into a temporary .npz that the reference script reads too).
HELDOUT_SEED, HELDOUT_EPISODES, HELDOUT_PAIRS = 4242, 32, 1000


def heldout_pairs(path: Path) -> Path:
    """Write ``HELDOUT_PAIRS`` pairs of ``FRAGMENT_LENGTH``-step Pendulum fragments to ``path``.

    Fragments come from ``HELDOUT_EPISODES`` fresh episodes of each of three policies:
    uniformly random, the scripted swing-up expert, and a mixture (expert and random
    actions, each sub-env re-choosing with probability 0.1 per step), so pairs span the
    qualities an agent passes through. Labels are noiseless: the fragment with the higher
    true return is preferred. Arrays: ``obs``, ``acts``, ``next_obs``, ``dones`` of shape
    ``[P, 2, L, ...]`` and ``true_returns`` ``[P, 2]``.
    """
    import numpy as np
    import torch

    from tdimitation.algorithms.preference import ExplorationPolicy, RandomFragmenter
    from tdimitation.data.rollout import rollout
    from tdimitation.data.trajectory import concat_trajectories
    from tdimitation.envs import make_env
    from tdimitation.policies.base import RandomPolicy
    from tdimitation.policies.scripted import PendulumExpert

    sets = []
    for i, kind in enumerate(("random", "mixed", "expert")):
        env = make_env("Pendulum-v1", num_envs=8, seed=HELDOUT_SEED + 100 * i)
        try:
            if kind == "random":
                policy = RandomPolicy(env, seed=HELDOUT_SEED + i)
            elif kind == "expert":
                policy = PendulumExpert()
            else:
                policy = ExplorationPolicy(PendulumExpert(), RandomPolicy(env).spec, 0.1, 0.5)
                policy.rng, policy.explore = torch.Generator().manual_seed(HELDOUT_SEED + i), True
            sets.append(rollout(policy, env, min_episodes=HELDOUT_EPISODES, deterministic=True))
        finally:
            env.close()
    trajectories = concat_trajectories(sets)
    fragmenter = RandomFragmenter(torch.Generator().manual_seed(HELDOUT_SEED), 0.0)
    pairs = fragmenter(trajectories, FRAGMENT_LENGTH, HELDOUT_PAIRS)
    np.savez(
        path,
        obs=pairs["observation"].numpy(),
        acts=pairs["action"].numpy(),
        next_obs=pairs["next", "observation"].numpy(),
        dones=pairs["next", "done"][..., 0].numpy(),
        true_returns=pairs["next", "reward"][..., 0].double().sum(-1).numpy(),
    )
    return path


def heldout_accuracy(module, path: Path) -> float:
    """Share of the held-out pairs whose better fragment the learned reward ranks higher."""
    import numpy as np
    import torch

    data = np.load(path)
    net = module.reward_net
    with torch.no_grad():
        reward = net.predict_processed(
            torch.from_numpy(data["obs"]),
            torch.from_numpy(data["acts"]),
            torch.from_numpy(data["next_obs"]),
            torch.from_numpy(data["dones"]),
        )
    learned = reward.double().sum(-1).numpy()
    true = data["true_returns"]
    return float(
        np.mean(np.sign(learned[:, 0] - learned[:, 1]) == np.sign(true[:, 0] - true[:, 1]))
    )


class Timers:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def wrap(self, obj, name: str, key: str) -> None:
        inner = getattr(obj, name)

        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                self.seconds[key] = self.seconds.get(key, 0.0) + time.perf_counter() - start

        setattr(obj, name, timed)


def run_ours(
    seed: int,
    eval_episodes: int,
    total_frames: int = OUR_FRAMES,
    heldout: Path | None = None,
    overrides: dict | None = None,
) -> dict:
    import lightning as L

    from tdimitation.algorithms import PreferenceComparisons
    from tdimitation.evaluation import evaluate_module

    module = PreferenceComparisons(
        "Pendulum-v1",
        total_frames=total_frames,
        total_comparisons=COMPARISONS,
        seed=seed,
        **(OURS | (overrides or {})),
    )
    timers = Timers()
    timers.wrap(module, "_sample_trajectories", "sample_s")
    timers.wrap(module, "preference_query", "query_s")
    timers.wrap(module.reward_trainer, "train", "reward_s")
    trainer = L.Trainer(
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    loadavg = os.getloadavg()[0]
    start = time.perf_counter()
    cpu_start = time.process_time()
    trainer.fit(module)
    wall_s = time.perf_counter() - start
    cpu_s = time.process_time() - cpu_start
    t = timers.seconds
    reward_s = t.get("reward_s", 0.0)
    fragments_s = t.get("sample_s", 0.0) + t.get("query_s", 0.0) - reward_s
    stats = evaluate_module(module, eval_episodes)
    return {
        "library": "tdimitation",
        "seed": seed,
        "wall_s": wall_s,
        "cpu_s": cpu_s,
        "agent_s": wall_s - reward_s - fragments_s,
        "reward_s": reward_s,
        "fragments_s": fragments_s,
        "accuracy": float(module.last_query_metrics["reward/accuracy"]),
        "reward_loss": float(module.last_query_metrics["reward/loss"]),
        "true_return": float(stats["return_mean"]),
        "agent_steps": int(module.frames),
        "comparisons": len(module.dataset),
        "loadavg_1min_at_start": loadavg,
        **({"heldout_accuracy": heldout_accuracy(module, heldout)} if heldout else {}),
        **({"overrides": overrides} if overrides else {}),
    }


def run_imitation(seed: int, eval_episodes: int, heldout: Path | None = None) -> dict | None:
    from _reference import run_reference

    return run_reference(
        "imitation_preference.py",
        "--seed", seed, "--steps", STEPS, "--comparisons", COMPARISONS,
        "--iterations", ITERATIONS, "--fragment-length", FRAGMENT_LENGTH,
        "--eval-episodes", eval_episodes,
        *(["--heldout", heldout] if heldout else []),
    )  # fmt: skip


def speed(args: argparse.Namespace) -> list[dict]:
    import torch

    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    logging.getLogger("torchrl").setLevel(logging.WARNING)
    # An existing --json file is extended (more repeats later, from --seed on).
    results = json.loads(args.json.read_text()) if args.json and args.json.exists() else []
    heldout_dir = tempfile.mkdtemp(prefix="preference_heldout_")
    heldout = heldout_pairs(Path(heldout_dir) / "pairs.npz")
    for repeat in range(args.seed, args.seed + args.repeats):
        seed = repeat
        for side in (
            ("imitation", "tdimitation") if repeat % 2 == 0 else ("tdimitation", "imitation")
        ):
            result = (
                run_imitation(seed, args.eval_episodes, heldout)
                if side == "imitation"
                else run_ours(seed, args.eval_episodes, args.ours_frames, heldout)
            )
            if result is None:
                print("no imitation result (venv missing or script failed)")
                continue
            result["repeat"] = repeat
            result["date"] = time.strftime("%Y-%m-%d")
            print(json.dumps(result), flush=True)
            results.append(result)
            if args.json:
                args.json.write_text(json.dumps(results, indent=1))
    shutil.rmtree(heldout_dir, ignore_errors=True)
    return results


def _median(rows: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in rows)


def _heldout(rows: list[dict]) -> str:
    values = [r["heldout_accuracy"] for r in rows if "heldout_accuracy" in r]
    return f"{statistics.median(values):.3f}" if values else "-"


def summary(speed_rows: list[dict], recipe_rows: list[dict]) -> str:
    lines = []
    if speed_rows:
        loads = [r["loadavg_1min_at_start"] for r in speed_rows]
        dates = sorted({r["date"] for r in speed_rows + recipe_rows if "date" in r})
        lines += [
            f"Measured {', '.join(dates)} on a {os.cpu_count()}-core VM shared with another"
            " worker's jobs (and, during the speed runs, with the recipe runs below); one torch"
            " thread per process.",
            "",
            f"Speed: imitation's tutorial settings on Pendulum-v1 ({STEPS:,} agent steps, "
            f"{COMPARISONS} comparisons, {ITERATIONS} iterations, fragment length "
            f"{FRAGMENT_LENGTH}), interleaved runs, 1-min load average "
            f"{min(loads):.1f}-{max(loads):.1f} at the starts. Medians over "
            f"{len({r['repeat'] for r in speed_rows})} repeat(s) (seconds):",
            "",
            "| library | wall | agent | reward model | fragments | CPU | accuracy | held-out"
            " accuracy | true return | agent steps |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for lib in ("imitation", "tdimitation"):
            rows = [r for r in speed_rows if r["library"] == lib]
            if not rows:
                continue
            lines.append(
                f"| {lib} | {_median(rows, 'wall_s'):.1f} | {_median(rows, 'agent_s'):.1f} | "
                f"{_median(rows, 'reward_s'):.1f} | {_median(rows, 'fragments_s'):.1f} | "
                f"{_median(rows, 'cpu_s'):.1f} | {_median(rows, 'accuracy'):.3f} | "
                f"{_heldout(rows)} | "
                f"{_median(rows, 'true_return'):.0f} | {rows[0]['agent_steps']:,} |"
            )
        ours = [r for r in speed_rows if r["library"] == "tdimitation"]
        ref = [r for r in speed_rows if r["library"] == "imitation"]
        if ours and ref:
            lines += [
                "",
                f"Wall-time ratio ours / imitation: "
                f"{_median(ours, 'wall_s') / _median(ref, 'wall_s'):.2f} "
                f"(per repeat: "
                + ", ".join(
                    f"{o['wall_s'] / i['wall_s']:.2f}"
                    for o, i in zip(
                        sorted(ours, key=lambda r: r["repeat"]),
                        sorted(ref, key=lambda r: r["repeat"]),
                        strict=False,
                    )
                )
                + f"); CPU-time ratio "
                f"{_median(ours, 'cpu_s') / _median(ref, 'cpu_s'):.2f}.",
                "",
                "Per run (seed: accuracy, held-out accuracy, true return; imitation | ours): "
                + "; ".join(
                    f"{i['repeat']}: {i['accuracy']:.3f}, {_heldout([i])}, {i['true_return']:.0f}"
                    f" | {o['accuracy']:.3f}, {_heldout([o])}, {o['true_return']:.0f}"
                    for o, i in zip(
                        sorted(ours, key=lambda r: r["repeat"]),
                        sorted(ref, key=lambda r: r["repeat"]),
                        strict=False,
                    )
                )
                + ".",
            ]
    if recipe_rows:
        lines += [
            "",
            "Recipes: whole `tdimitation fit` processes (`benchmarks/run_recipes.py`), the final"
            " deterministic evaluation of the agent on the true reward, and the reward model's"
            " training accuracy at its last query:",
            "",
            "| recipe | seed | true return (mean ± std) | reward accuracy | frames | fit s"
            " | date |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        for r in sorted(recipe_rows, key=lambda r: (r["recipe"], r["seed"], r["repeat"])):
            acc = r.get("reward_accuracy")
            lines.append(
                f"| {r['recipe']} | {r['seed']} | {r['return_mean']:.1f} ± {r['return_std']:.1f} | "
                f"{'-' if acc is None else f'{acc:.3f}'} | {int(r['frames']):,} | "
                f"{r['fit_seconds']:.0f} | {r['date']} |"
            )
    return "\n".join(lines)


def recipe_accuracy(row: dict, data_dirs: list[Path]) -> float | None:
    """The last ``reward/accuracy`` a recipe run logged to its MLflow store, if found."""
    from run_recipes import final_metrics

    name = row["recipe"].replace("/", "-")
    for data_dir in data_dirs:
        try:
            metrics = final_metrics(
                data_dir, f"recipes-{name}", f"{name}-seed{row['seed']}-r{row['repeat']}"
            )
        except Exception:  # noqa: BLE001 - not in this store
            continue
        return metrics.get("reward/accuracy")
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-episodes", type=int, default=10)
    parser.add_argument("--ours-frames", type=int, default=OUR_FRAMES)
    parser.add_argument("--json", type=Path, help="speed results (written / read by --summary)")
    parser.add_argument("--summary", action="store_true", help="print the RESULTS.md section")
    parser.add_argument("--write", action="store_true", help="with --summary: into RESULTS.md")
    parser.add_argument("--recipe-results", type=Path, default=RECIPE_RESULTS)
    parser.add_argument(
        "--data-dir", type=Path, nargs="*", default=[],
        help="MLflow stores of the recipe runs (accuracy of rows recorded without it)",
    )  # fmt: skip
    args = parser.parse_args()
    if args.summary:
        speed_rows = json.loads(args.json.read_text()) if args.json and args.json.exists() else []
        recipe_rows = (
            [json.loads(x) for x in args.recipe_results.read_text().splitlines() if x.strip()]
            if args.recipe_results.exists()
            else []
        )
        for row in recipe_rows:  # runs recorded before run_recipes kept the accuracy
            if "reward_accuracy" not in row and args.data_dir:
                row["reward_accuracy"] = recipe_accuracy(row, args.data_dir)
        text = summary(speed_rows, recipe_rows)
        print(text)
        if args.write:
            results_md = ROOT / "benchmarks" / "RESULTS.md"
            begin, end = "<!-- preference:begin -->", "<!-- preference:end -->"
            content = results_md.read_text()
            head, rest = content.split(begin, 1)
            _, tail = rest.split(end, 1)
            results_md.write_text(f"{head}{begin}\n{text}\n{end}{tail}")
        return
    speed(args)


if __name__ == "__main__":
    main()
