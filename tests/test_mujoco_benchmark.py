"""The MuJoCo benchmark's bookkeeping: curves recorded from a real run, table, PNGs.

The benchmark's own fits take hours; here a short GAIL fit on fixed-horizon CartPole
(a real ``tdimitation fit`` process and MLflow store) stands in for a cell.
"""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _benchmark():
    spec = importlib.util.spec_from_file_location("mujoco_benchmark", ROOT / "benchmarks/mujoco.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_curve_is_recorded_from_the_store_and_drawn_from_the_results(tmp_path):
    bench = _benchmark()
    command = [sys.executable, "-m", "tdimitation.cli", "fit"]
    command += ["--config", str(ROOT / "recipes/gail/cartpole_fixed.yaml")]
    command += ["--run.data_dir", str(tmp_path), "--run.experiment", bench.EXPERIMENT]
    command += ["--run.name", "gail-halfcheetah-seed0", "--run.video", "false"]
    command += ["--model.init_args.total_frames", "16384", "--run.eval_episodes", "2"]
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}  # --data_dir
    subprocess.run(command, cwd=ROOT, env=env, check=True, capture_output=True)

    # A run made with another version of the recipe (here: without the recipe's
    # fingerprint in its name) does not stand in for the current recipe's cell.
    assert bench.finished_run(tmp_path, "gail-halfcheetah-seed0")
    current = {"algorithm": "gail", "task": "halfcheetah", "seed": 0}
    current["recipe_digest"] = bench.recipe_digest("gail/halfcheetah_fixed")
    assert bench.cell_run_name(current).startswith("gail-halfcheetah-seed0-")
    assert not bench.finished_run(tmp_path, bench.cell_run_name(current))
    assert bench.recipe_digest("gail/hopper_fixed") != current["recipe_digest"]
    # The fingerprint is the settings': a rewritten header keeps it, a changed value does not.
    recipe = (ROOT / "recipes/gail/halfcheetah_fixed.yaml").read_text()
    (tmp_path / "gail").mkdir()
    copy = tmp_path / "gail" / "halfcheetah_fixed.yaml"
    copy.write_text("# another header\n\n" + recipe.replace("total_frames:", "total_frames:  "))
    assert bench.recipe_digest("gail/halfcheetah_fixed", tmp_path) == current["recipe_digest"]
    copy.write_text(recipe.replace("disc_lr: 0.0003", "disc_lr: 0.0001"))
    assert bench.recipe_digest("gail/halfcheetah_fixed", tmp_path) != current["recipe_digest"]

    metric, x_axis, xs, ys = bench.run_curve(tmp_path, "gail-halfcheetah-seed0")
    assert (metric, x_axis) == ("episode/return", "frames")
    assert len(xs) == 4 and xs[-1] == 16384 and np.all(np.diff(xs) > 0)  # 4 rounds of 4,096
    record = bench.curve_record((metric, x_axis, xs, ys))
    assert record["x"] == [float(x) for x in xs] and len(record["y"]) == 4
    long = (metric, x_axis, np.arange(1000.0), np.arange(1000.0))
    thinned = bench.curve_record(long)
    assert len(thinned["x"]) == bench.CURVE_POINTS and thinned["x"][-1] == 999.0
    assert bench.frames_to_reach(long, 500.5) == 501
    assert bench.frames_to_reach(long, 1e9) is None
    assert bench.frames_to_reach(("eval/return_mean", "bc/epoch", xs, ys), -1e9) is None

    rows = [
        {
            "stage": "expert",
            "task": "halfcheetah",
            "return_mean": 100.0,
            "return_std": 1.0,
            "episodes": 50,
            "frames": 16384,
            "fit_seconds": 1.0,
            "date": "d",
            "curve": record,
        },
        {
            "stage": "demos",
            "task": "halfcheetah",
            "expert_return_mean": 100.0,
            "random_return_mean": -100.0,
            "date": "d",
        },
    ]
    for seed, shift in enumerate((0.0, 10.0, -5.0)):
        curve = dict(record, y=[y + shift for y in record["y"]])
        rows.append(
            {
                "stage": "cell",
                "task": "halfcheetah",
                "algorithm": "gail",
                "seed": seed,
                "return_mean": 90.0 + shift,
                "ratio": (90.0 + shift) / 100.0,
                "process_seconds": 5.0,
                "frames_to_0.9_expert": None,
                "date": "d",
                "curve": curve,
            }
        )
    text = bench.table(rows)
    line = next(s for s in text.splitlines() if s.startswith("| gail | halfcheetah | 3 |"))
    assert "| 0.917 (0.90 / 1.00 / 0.85) |" in line
    assert "| 0.96 [" in line  # normalised (R + 100) / 200: 0.95, 1.0, 0.925; 3 seeds' IQM

    # The expert made again elsewhere returns 150: recorded cells keep the expert they
    # divided by (the table lists both), a cell run since divides by the new one.
    remade = dict(rows[0], return_mean=150.0, date="e")
    demos = dict(rows[1], expert_return_mean=150.0, random_return_mean=-50.0, date="e")
    new_cell = dict(rows[2], seed=3, return_mean=150.0, ratio=1.0, expert_return=150.0)
    text = bench.table([*rows, remade, demos, new_cell])
    experts = [s for s in text.splitlines() if s.startswith("| halfcheetah |")]
    assert [s.split(" | ")[1] for s in experts] == ["100.0 ± 1.0", "150.0 ± 1.0"]
    assert [s.split(" | ")[-1] for s in experts] == ["3 |", "1 |"]
    line = next(s for s in text.splitlines() if s.startswith("| gail | halfcheetah |"))
    assert "| 4 (2 experts) | 0.938 (0.90 / 1.00 / 0.85 / 1.00) |" in line
    # Normalised by each cell's own expert and random return: 0.95, 1.0, 0.925 and 1.0.
    assert "| 0.97 [" in line
    paths = bench.plot_learning_curves(rows, tmp_path / "curves")
    assert [p.name for p in paths] == ["learning_curve_tdimitation-HalfCheetahFixed-v5.png"]
    assert paths[0].stat().st_size > 10_000


def test_trials_table_sets_each_trial_beside_its_base_recipes_cells_on_its_seeds():
    spec = importlib.util.spec_from_file_location(
        "mujoco_trials", ROOT / "benchmarks/mujoco_trials.py"
    )
    trials = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(trials)
    override = {"model.init_args.gradient_penalty": 10}
    rows = [
        {
            "stage": "trial",
            "task": "hopper",
            "algorithm": "gail",
            "seed": seed,
            "ratio": ratio,
            "overrides": override,
            "recipe_digest": "0ld0ld00",
            "run_name": f"gail-hopper-gp10-seed{seed}",
        }
        for seed, ratio in ((1, 1.02), (0, 0.95))
    ]
    rows.append(dict(rows[0], seed=7, ratio=0.5, run_name="gail-hopper-5M-seed7"))
    # A trial recorded before fingerprints were kept: set beside the current recipe.
    legacy = dict(rows[0], seed=0, ratio=0.9, run_name="gail-hopper-legacy-seed0")
    del legacy["recipe_digest"]
    rows.append(legacy)
    cell = {"stage": "cell", "task": "hopper", "algorithm": "gail"}
    cells = [
        # The recipe the trials changed, since superseded.
        dict(cell, seed=0, ratio=0.89, recipe_digest="0ld0ld00", superseded="changed"),
        dict(cell, seed=1, ratio=0.91, recipe_digest="0ld0ld00", superseded="changed"),
        # The current recipe's cells on the same seeds, one recorded without a fingerprint.
        dict(cell, seed=0, ratio=0.99),
        dict(cell, seed=1, ratio=0.98, recipe_digest="ffffffff"),
    ]
    for row in rows + cells:
        row["return_mean"] = row["ratio"] * 2000.0  # all learnt from an expert of 2,000
    lines = trials.table(rows, cells).splitlines()
    assert len(lines) == 5  # header, rule, one line per trial
    gp10 = next(line for line in lines if "| gp10 |" in line)
    assert "`gradient_penalty: 10`" in gp10
    assert "| 0 1 | 0.985 (0.95 / 1.02) | 0.900 (0.89 / 0.91) |" in gp10  # seeds in order
    assert next(line for line in lines if "| 5M |" in line).endswith("| not recorded |")
    assert next(line for line in lines if "| legacy |" in line).endswith("| 0.990 (0.99) |")

    # Beside an expert made again on another CPU (2,400), the recorded cells are no base;
    # the recipe run again there unchanged is, and it is itself set beside the cells.
    current = trials.bench.recipe_digest("gail/hopper_fixed")
    elsewhere = {"stage": "trial", "task": "hopper", "algorithm": "gail", "expert_return": 2400.0}
    rerun = dict(elsewhere, seed=0, ratio=1.01, overrides={}, run_name="gail-hopper-rerun-seed0")
    longer = dict(elsewhere, seed=0, ratio=1.03, run_name="gail-hopper-10M-seed0")
    longer["overrides"] = {"model.init_args.total_frames": 10_000_000}
    for row in (rerun, longer):
        row["recipe_digest"], row["return_mean"] = current, row["ratio"] * 2400.0
    lines = trials.table([longer], cells).splitlines()
    assert lines[-1].endswith("| 0 | 1.030 (1.03) | not recorded |")
    lines = trials.table([rerun, longer], cells).splitlines()
    assert "| none: the recipe run again" in lines[2]
    assert lines[2].endswith("| 0 | 1.010 (1.01) | 0.990 (0.99) |")
    assert lines[3].endswith("| 0 | 1.030 (1.03) | 1.010 (1.01) |")

    # Beside the cells' own expert (2,000): on seeds no cell used, the recipe run
    # unchanged is a held-out measurement, set beside every cell on that expert; on a
    # cell's seed it is a repeat of that cell; and it is the base of a trial on its seed.
    here = {"stage": "trial", "task": "hopper", "algorithm": "gail", "overrides": {}}
    held_out = [
        dict(here, seed=seed, ratio=ratio, run_name=f"gail-hopper-heldout-seed{seed}")
        for seed, ratio in ((6, 0.97), (5, 0.93))
    ]
    repeat = dict(here, seed=1, ratio=0.98, run_name="gail-hopper-again-seed1")
    on_held_out = dict(
        here, seed=5, ratio=0.95, run_name="gail-hopper-wider-seed5", overrides=override
    )
    for row in (*held_out, repeat, on_held_out):
        row["recipe_digest"], row["return_mean"] = current, row["ratio"] * 2000.0
    cells[2]["recipe_digest"] = current  # the current recipe's cells: seeds 0 and 1
    cells[3]["recipe_digest"] = current
    lines = trials.table([*held_out, repeat, on_held_out], cells).splitlines()
    assert lines[2] == (
        f"| hopper | gail | heldout | {trials.HELD_OUT} | 5 6 | 0.950 (0.93 / 0.97) "
        "| seeds 0 1: 0.985 (0.99 / 0.98) |"
    )
    assert lines[3].endswith(f"| {trials.REPEAT} | 1 | 0.980 (0.98) | 0.980 (0.98) |")
    assert lines[4].endswith("| 5 | 0.950 (0.95) | 0.930 (0.93) |")


def test_sampled_evaluation_scores_each_cell_against_the_expert_it_learnt_from():
    spec = importlib.util.spec_from_file_location(
        "mujoco_sampled_eval", ROOT / "benchmarks/mujoco_sampled_eval.py"
    )
    sampled = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sampled)
    # Two Hopper experts (made on two kinds of CPU); each cell learnt from one of them.
    current = [
        {"task": "hopper", "policy": "gail-hopper-seed0", "expert_return": 2587.8},
        {"task": "hopper", "policy": "gail-hopper-seed1", "expert_return": 2389.5},
        {"task": "hopper", "policy": "gail-hopper-seed2", "expert_return": 2499.1},
    ]
    evaluated = [
        {"task": "hopper", "policy": "expert", "expert_return": 2389.5, "greedy": 2400.0},
        {"task": "hopper", "policy": "expert", "expert_return": 2587.8, "greedy": 2600.0},
        {"task": "hopper", "policy": "gail-hopper-seed0", "greedy": 2652.0},
        {"task": "hopper", "policy": "gail-hopper-seed1", "greedy": 2352.0},
        {"task": "hopper", "policy": "gail-hopper-seed2", "greedy": 2000.0},
        {"task": "hopper", "policy": "gail-hopper-seed9", "greedy": 1.0},  # not current
    ]
    for row in evaluated:
        row["sampled"] = row["greedy"] / 2
    # The experts' keys differ, so a second expert is evaluated, not taken as done.
    assert sampled.key(evaluated[0]) != sampled.key(evaluated[1])
    assert sampled.key(dict(evaluated[0], expert_return=2389.5000000001)) == sampled.key(
        evaluated[0]
    )
    rows, missing = sampled.scored(evaluated, current)
    assert [r["policy"] for r in rows] == ["gail-hopper-seed0", "gail-hopper-seed1"]
    assert [r["expert_greedy"] for r in rows] == [2600.0, 2400.0]
    assert len(missing) == 1 and "gail-hopper-seed2" in missing[0] and "2499.1" in missing[0]
    line = sampled.table(rows, "gail").splitlines()[-1]
    assert line == "| hopper | 2 | 1.00 (1.02 / 0.98) | 1.00 (1.02 / 0.98) |"
