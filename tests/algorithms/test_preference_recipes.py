"""Every preference recipe, shrunk, runs through `tdimitation fit` and logs to MLflow.

Each run is the recipe as shipped (its networks, env and options) with budgets cut to one
agent round and a few comparisons; the MLflow store the run wrote (a local sqlite store
under the run's data directory) is then read back with MLflow's client. The Atari recipe's
run is its build and first iteration with the Nature-CNN policy and reward.
"""

import json
import math
from pathlib import Path

import pytest
from mlflow import MlflowClient

from tdimitation.cli import main

RECIPES = Path(__file__).resolve().parents[2] / "recipes" / "preference"
SEC = "--model.init_args."


def _agent(**kwargs) -> list[str]:
    return [SEC + "agent_kwargs", json.dumps(kwargs)]


# One agent round in which every sub-env finishes an episode (so returns are logged), one
# iteration, a handful of comparisons.
TINY = {
    "cartpole_fixed": [
        *_agent(n_steps=512, n_epochs=1, batch_size=512, hidden_sizes=[16]),
        SEC + "num_envs=2",
        SEC + "total_frames=1024",
        SEC + "total_comparisons=6",
        SEC + "comparison_queue_size=6",
    ],
    "lunarlander_fixed": [
        *_agent(n_steps=512, n_epochs=1, batch_size=512, hidden_sizes=[16]),
        SEC + "num_envs=2",
        SEC + "total_frames=1024",
        SEC + "total_comparisons=6",
    ],
    "pendulum": [
        *_agent(frames_per_batch=400, learning_starts=100, batch_size=32, utd_ratio=0.05),
        SEC + "num_envs=2",
        SEC + "total_frames=400",
        SEC + "total_comparisons=6",
    ],
    "pendulum_fixed_dataset": [
        SEC + "total_comparisons=6",
        "--data.init_args.n_episodes=2",
    ],
    # The Atari recipe's networks as shipped; 16-step episodes, two 5-step fragment pairs.
    "atari_pong": [
        *_agent(n_steps=16, n_epochs=1, batch_size=32, hidden_sizes=[]),
        SEC + "num_envs=2",
        SEC + "fixed_horizon=16",
        SEC + "total_frames=32",
        SEC + "total_comparisons=4",
        SEC + "fragment_length=5",
        SEC + "reward_batch_size=4",
    ],
}
COMMON = [SEC + "num_iterations=1", SEC + "reward_epochs=1", SEC + "initial_epoch_multiplier=1"]


def test_every_preference_recipe_has_a_tiny_run():
    # pendulum_human needs a labeller: tests/labelling/test_recipe.py runs it with a
    # scripted one.
    assert set(TINY) == {p.stem for p in RECIPES.glob("*.yaml")} - {"pendulum_human"}


@pytest.mark.parametrize("name", sorted(TINY))
def test_preference_recipe_logs_accuracy_returns_and_dataset_size(name, tmp_path, monkeypatch):
    if name.startswith("atari"):
        pytest.importorskip("ale_py", reason="the Atari recipe needs the [atari] extra")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    data = tmp_path / "data"
    argv = ["fit", "--config", str(RECIPES / f"{name}.yaml"), "--run.data_dir", str(data)]
    # The fixed-dataset recipe trains no policy: nothing to evaluate.
    episodes = "0" if name.endswith("fixed_dataset") else "2"
    argv += ["--run.name", "tiny", "--run.eval_episodes", episodes, "--run.checkpoint_every", "1"]
    argv += ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
    assert main(argv + COMMON + TINY[name]) == 0
    client = MlflowClient(f"sqlite:///{data.resolve()}/mlflow.db")
    experiment = client.get_experiment_by_name("preference")
    run = client.search_runs([experiment.experiment_id])[0]
    metrics = run.data.metrics
    for key in ("reward/accuracy", "episode/return", "episode/learned_return"):
        assert key in metrics and math.isfinite(metrics[key]), (key, sorted(metrics))
    assert 0.0 <= metrics["reward/accuracy"] <= 1.0
    # Every comparison of the two queries (initial + one iteration) was labelled and stored.
    assert metrics["preferences/dataset_size"] == 6 if name != "atari_pong" else 4
    assert run.data.params["total_comparisons"] in ("6", "4")
