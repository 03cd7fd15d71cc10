"""``tdimitation analyze`` on real MLflow stores.

A store is filled with runs carrying what ``tdimitation fit`` records (algorithm tag, env
and seed parameters, the final evaluation at the last step, frames and training returns
along the way) and known final returns; the table must reproduce the hand-computed IQM,
mean and normalised scores, and intervals equal to a plain bootstrap loop within sampling
tolerance. A real BC fit checks that the random and expert returns travel from the
demonstrations to the run and into the normalised columns.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import pytest
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag

from tdimitation.analysis.statistics import iqm
from tdimitation.cli import main
from tdimitation.data.rollout import rollout
from tdimitation.data.storage import save_trajectories, trajectory_metadata
from tdimitation.envs import make_env
from tdimitation.policies.registry import policy_from_string
from tdimitation.runs import TAG_ALGORITHM, TAG_EXPERT_RETURN, TAG_RANDOM_RETURN

BC_RETURNS = [50.0, 10, 1000, 30, 20, 60, 40, 70]  # IQM 45, mean 160
GAIL_RETURNS = [35.0, 55, 65]


@pytest.fixture(autouse=True)
def _store_from_data_dir(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("TDIMITATION_DATA_DIR", raising=False)


def _client(data: Path) -> MlflowClient:
    data.mkdir(parents=True, exist_ok=True)
    return MlflowClient(f"sqlite:///{data.resolve()}/mlflow.db")


def _fit_like_run(client, experiment_id, algorithm, env, seed, final, references=None):
    """A finished run as fit records it: curve of 5 rounds, final evaluation at the end."""
    run = client.create_run(experiment_id, run_name=f"{algorithm}-{seed}")
    tags = [RunTag(TAG_ALGORITHM, f"tdimitation.algorithms.{algorithm}")]
    if references is not None:
        tags += [
            RunTag(TAG_RANDOM_RETURN, repr(references[0])),
            RunTag(TAG_EXPERT_RETURN, repr(references[1])),
        ]
    metrics = []
    for step in range(5):
        frames = 1000.0 * (step + 1)
        metrics += [
            Metric("frames", frames, 0, step),
            Metric("episode/return", final * (step + 1) / 5, 0, step),
        ]
    metrics += [Metric("eval/return_mean", final, 0, 4), Metric("eval/n_traj", 10.0, 0, 4)]
    params = [Param("env_id", env), Param("seed", str(seed))]
    client.log_batch(run.info.run_id, metrics=metrics, params=params, tags=tags)
    client.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    data = tmp_path_factory.mktemp("analyze") / "data"
    client = _client(data)
    bench = client.create_experiment("bench")
    for seed, final in enumerate(BC_RETURNS):
        _fit_like_run(client, bench, "BC", "CartPole-v1", seed, final, references=(10.0, 110.0))
    for seed, final in enumerate(GAIL_RETURNS):
        _fit_like_run(client, bench, "GAIL", "CartPole-v1", seed, final)
    # Not analysed: unfinished, and not a fit run.
    crashed = client.create_run(bench, run_name="crashed")
    client.log_batch(
        crashed.info.run_id,
        metrics=[Metric("eval/return_mean", 1e6, 0, 0)],
        tags=[RunTag(TAG_ALGORITHM, "tdimitation.algorithms.BC")],
    )
    client.set_terminated(crashed.info.run_id, "FAILED")
    other = client.create_experiment("eval")
    foreign = client.create_run(other, run_name="eval")
    client.log_metric(foreign.info.run_id, "eval/return_mean", -5.0)
    client.set_terminated(foreign.info.run_id, "FINISHED")
    return data


def _loop_interval(values, aggregate, reps=4_000, seed=1):
    rng = np.random.default_rng(seed)
    values = np.asarray(values)
    boots = [aggregate(values[rng.integers(0, len(values), len(values))]) for _ in range(reps)]
    return np.percentile(boots, [2.5, 97.5])


def test_table_reproduces_hand_computed_statistics(store, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["analyze", "--data-dir", str(store), "--out", str(out), "--reps", "20000"]
    assert main([*argv, "--compare", "BC", "GAIL"]) == 0
    printed = capsys.readouterr().out
    document = json.loads((out / "analysis.json").read_text())
    rows = {row["group"]: row for row in document["table"]}
    assert set(rows) == {"BC", "GAIL"}  # the failed and the foreign run are left out
    bc, gail = rows["BC"], rows["GAIL"]
    assert (bc["runs"], bc["episodes"], bc["env"]) == (8, 80, "CartPole-v1")
    assert bc["iqm"] == pytest.approx(45.0)
    assert bc["mean"] == pytest.approx(160.0)
    # Normalised with random 10 and expert 110: (45 - 10) / 100.
    assert bc["norm_iqm"] == pytest.approx(0.35)
    assert bc["norm_mean"] == pytest.approx(1.5)
    for key, aggregate in (("iqm", iqm), ("mean", np.mean)):
        low, high = _loop_interval(BC_RETURNS, aggregate)
        spread = max(BC_RETURNS) - min(BC_RETURNS)
        assert bc[f"{key}_low"] == pytest.approx(low, abs=0.03 * spread)
        assert bc[f"{key}_high"] == pytest.approx(high, abs=0.03 * spread)
        assert bc[f"norm_{key}_low"] == pytest.approx((bc[f"{key}_low"] - 10) / 100)
    # GAIL's runs learnt from no measured demonstrations: blank, with a note.
    assert gail["norm_iqm"] is None and gail["iqm"] == pytest.approx(np.mean(GAIL_RETURNS))
    notes = document["notes"]
    assert any(note.startswith("GAIL on CartPole-v1: no normalised score") for note in notes)
    # P(BC > GAIL): pairs with BC's return above GAIL's, of 8 x 3.
    expected = np.mean([[b > g for g in GAIL_RETURNS] for b in BC_RETURNS])
    (comparison,) = document["improvement"]
    assert comparison["probability"] == pytest.approx(expected)
    assert comparison["low"] <= expected <= comparison["high"]
    # The printed markdown is the saved one; the CSV has one line per row.
    assert printed == (out / "analysis.md").read_text()
    assert "| BC | CartPole-v1 | 8 | 80 | 160.0 [" in printed
    assert len((out / "analysis.csv").read_text().splitlines()) == 3
    # A learning curve with bands, saved and logged to an `analyze` run of its own.
    png = out / "learning_curve_CartPole-v1.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    client = _client(store)
    (run,) = client.search_runs([client.get_experiment_by_name("analyze").experiment_id])
    run_id = run.info.run_id
    logged = {a.path for d in ("plots", "tables") for a in client.list_artifacts(run_id, d)}
    assert logged == {
        "plots/learning_curve_CartPole-v1.png",
        "tables/analysis.md",
        "tables/analysis.csv",
        "tables/analysis.json",
    }
    # Same seed, same intervals; the analyze run itself is not analysed next time.
    again = tmp_path / "again"
    assert main([*argv[:-4], "--out", str(again), "--reps", "20000", "--no-mlflow"]) == 0
    capsys.readouterr()
    assert json.loads((again / "analysis.json").read_text())["table"][0] == document["table"][0]


def test_no_matching_runs_is_one_line(store, capsys):
    for argv in (
        ["analyze", "--data-dir", str(store), "--tag", "tdimitation.recipe=nowhere.yaml"],
        ["analyze", "--data-dir", str(store), "--experiment", "eval"],
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1, err
        assert err.startswith("tdimitation analyze: error: no finished fit run")
        assert "tdimitation runs" in err
    assert main(["analyze", "--data-dir", str(store), "--compare", "BC", "SQIL"]) == 2
    err = capsys.readouterr().err
    assert "'SQIL' names no group" in err and "BC, GAIL" in err
    assert main(["analyze", "--data-dir", str(store), "--reps", "10"]) == 2
    assert "--reps must be at least 100" in capsys.readouterr().err


BC_RECIPE = """
model:
  class_path: tdimitation.algorithms.BC
  init_args:
    env_id: CartPole-v1
    n_epochs: 1
    batch_size: 32
    hidden_sizes: [16]
data:
  class_path: tdimitation.algorithms.DemonstrationData
  init_args:
    env_id: CartPole-v1
    expert: scripted
    n_episodes: 4
trainer:
  enable_progress_bar: false
  enable_model_summary: false
run:
  experiment: bc-analyze
  eval_episodes: 2
  video: false
"""


def _fit_bc_on_collected_demonstrations(tmp_path: Path, data: Path) -> tuple[Path, dict]:
    """Fit the BC recipe; its demonstrations' directory and their stored metadata."""
    recipe = tmp_path / "bc.yaml"
    recipe.write_text(textwrap.dedent(BC_RECIPE))
    assert main(["fit", "--config", str(recipe), "--run.data_dir", str(data)]) == 0
    (dataset,) = (data / "demos").iterdir()
    return dataset, trajectory_metadata(dataset)["metadata"]


def _assert_normalised_by(meta: dict, data: Path, experiment: str, out: Path, capsys) -> None:
    """The experiment's one run is tagged with ``meta``'s returns and normalised by them."""
    client = _client(data)
    (run,) = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    assert float(run.data.tags[TAG_EXPERT_RETURN]) == meta["expert_return"]
    assert float(run.data.tags[TAG_RANDOM_RETURN]) == meta["random_return"]
    capsys.readouterr()
    argv = ["analyze", "--data-dir", str(data), "--experiment", experiment, "--reps", "1000"]
    assert main([*argv, "--no-mlflow", "--out", str(out)]) == 0
    (row,) = json.loads((out / "analysis.json").read_text())["table"]
    final = run.data.metrics["eval/return_mean"]
    expected = (final - meta["random_return"]) / (meta["expert_return"] - meta["random_return"])
    assert row["norm_iqm"] == pytest.approx(expected)


def test_fit_records_reference_returns_for_normalised_scores(tmp_path, capsys):
    data = tmp_path / "data"
    _, meta = _fit_bc_on_collected_demonstrations(tmp_path, data)
    # The scripted expert keeps CartPole up for 500 steps; a random policy falls in ~20.
    assert meta["expert_return"] == 500.0
    assert 5 < meta["random_return"] < 100 and meta["random_episodes"] >= 4
    _assert_normalised_by(meta, data, "bc-analyze", tmp_path / "out", capsys)


DAGGER_RECIPE = """
model:
  class_path: tdimitation.algorithms.DAgger
  init_args:
    env_id: CartPole-v1
    expert: scripted
    n_rounds: 1
    num_envs: 2
    min_episodes: 2
    bc_epochs: 1
    batch_size: 32
    hidden_sizes: [16]
    reference_data: {reference}
trainer:
  enable_progress_bar: false
  enable_model_summary: false
run:
  experiment: dagger-analyze
  eval_episodes: 2
  video: false
"""


def test_dagger_takes_its_reference_returns_from_the_experts_demonstrations(tmp_path, capsys):
    data = tmp_path / "data"
    dataset, meta = _fit_bc_on_collected_demonstrations(tmp_path, data)
    recipe = tmp_path / "dagger.yaml"
    recipe.write_text(DAGGER_RECIPE.format(reference=dataset))
    assert main(["fit", "--config", str(recipe), "--run.data_dir", str(data)]) == 0
    _assert_normalised_by(meta, data, "dagger-analyze", tmp_path / "out", capsys)


def test_dagger_refuses_reference_data_without_stored_returns(tmp_path, capsys):
    data = tmp_path / "data"
    bare = tmp_path / "bare"
    env = make_env("CartPole-v1")
    save_trajectories(bare, rollout(policy_from_string("scripted", env=env), env, min_episodes=1))
    recipe = tmp_path / "dagger.yaml"
    recipe.write_text(DAGGER_RECIPE.format(reference=bare))
    assert main(["fit", "--config", str(recipe), "--run.data_dir", str(data)]) != 0
    err = capsys.readouterr().err
    assert f"the dataset at {bare} stores no expert and random returns" in err
