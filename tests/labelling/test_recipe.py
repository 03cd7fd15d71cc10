"""The human-preference recipe, shrunk, runs through `tdimitation fit` while a scripted
labeller answers on the server; the run logs to MLflow what it learned from them."""

from __future__ import annotations

import json
import math
import threading
from pathlib import Path

from mlflow import MlflowClient

from tdimitation.cli import main
from tdimitation.labelling import LabelStore
from tests.labelling.helpers import live_server, person

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "preference" / "pendulum_human.yaml"
SEC = "--model.init_args."


def test_pendulum_human_recipe_with_a_scripted_labeller(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    database = f"sqlite:///{tmp_path / 'labels.db'}"
    store = LabelStore(database)
    token = store.add_labeller("scripted")
    human = {
        "database": database,
        "clip_dir": str(tmp_path / "clips"),
        "session": "tiny",
        "min_answers": 1,
        "timeout": 600,
        "agreement_frac": 0.1,
        "poll_interval": 0.05,
    }
    agent = {"frames_per_batch": 400, "learning_starts": 100, "batch_size": 32, "utd_ratio": 0.05}
    data = tmp_path / "data"
    argv = ["fit", "--config", str(RECIPE), "--run.data_dir", str(data), "--run.name", "tiny"]
    argv += ["--run.eval_episodes", "2", "--run.checkpoint_every", "1"]
    argv += ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
    argv += [SEC + "agent_kwargs", json.dumps(agent), SEC + "human_gatherer", json.dumps(human)]
    argv += [SEC + "num_envs=2", SEC + "total_frames=400", SEC + "total_comparisons=6"]
    argv += [SEC + "num_iterations=1", SEC + "reward_epochs=1", SEC + "initial_epoch_multiplier=1"]
    (tmp_path / "clips").mkdir()
    stop, answered = threading.Event(), []
    with live_server(store, tmp_path / "clips") as port:
        thread = threading.Thread(target=person, args=(port, token, store, stop, answered))
        thread.start()
        try:
            assert main(argv) == 0
        finally:
            stop.set()
            thread.join(60)
    client = MlflowClient(f"sqlite:///{data.resolve()}/mlflow.db")
    run = client.search_runs([client.get_experiment_by_name("preference").experiment_id])[0]
    metrics = run.data.metrics
    assert math.isfinite(metrics["reward/accuracy"]) and math.isfinite(metrics["episode/return"])
    # At least one label of each query reached the dataset; all came through the page's API.
    assert 2 <= metrics["preferences/dataset_size"] <= len(answered) <= 6
    # The clips of each pair were rendered from Pendulum's observations.
    queries = store.query_rows("tiny")
    assert len(queries) == 6
    assert all((tmp_path / "clips" / q["left_clip"]).stat().st_size > 500 for q in queries)
