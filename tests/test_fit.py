import textwrap

import pytest
import torch
from mlflow import MlflowClient

from tdimitation.cli import main

RECIPE = textwrap.dedent("""
    model:
      class_path: tdimitation.rl.ppo.PPO
      init_args:
        env_id: CartPole-v1
        num_envs: 4
        n_steps: 64
        total_frames: 768
        n_epochs: 2
        batch_size: 64
    trainer:
      enable_progress_bar: false
      enable_model_summary: false
    run:
      experiment: fit-test
      name: tiny
      eval_episodes: 4
      checkpoint_every: 1
""")


@pytest.fixture
def recipe(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text(RECIPE)
    return path


def test_fit_logs_everything_to_mlflow(recipe, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    data = tmp_path / "data"
    assert main(["fit", "--config", str(recipe), "--run.data_dir", str(data)]) == 0
    out = capsys.readouterr().out
    assert "mlflow ui --backend-store-uri" in out and "evaluation over" in out
    client = MlflowClient(f"sqlite:///{data.resolve()}/mlflow.db")
    run = client.search_runs([client.get_experiment_by_name("fit-test").experiment_id])[0]
    assert run.info.run_name == "tiny"
    assert run.data.params["env_id"] == "CartPole-v1" and run.data.params["n_steps"] == "64"
    metrics = run.data.metrics
    assert metrics["frames"] == 768 and "eval/return_mean" in metrics
    assert "episode/return" in metrics or "train/loss_critic" in metrics
    history = client.get_metric_history(run.info.run_id, "frames")
    assert [m.value for m in history] == [256.0, 512.0, 768.0]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "checkpoints"} <= artifacts
    ckpt = data / "runs" / "fit-test" / "tiny" / "last.ckpt"
    assert torch.load(ckpt, weights_only=True)["tdimitation"]["frames"] == 768


GAIL_RECIPE = textwrap.dedent("""
    model:
      class_path: tdimitation.algorithms.GAIL
      init_args:
        env_id: tdimitation/CartPoleFixed-v1
        num_envs: 4
        total_frames: 512
        generator_kwargs: {n_steps: 64, batch_size: 64, n_epochs: 1, hidden_sizes: [16]}
        demo_batch_size: 128
        n_disc_updates_per_round: 2
        reward_kwargs: {use_action: false}
        generator_reward: logit
    data:
      class_path: tdimitation.algorithms.DemonstrationData
      init_args:
        env_id: tdimitation/CartPoleFixed-v1
        expert: scripted
        n_episodes: 2
    trainer:
      enable_progress_bar: false
      enable_model_summary: false
    run:
      experiment: gail-test
      name: tiny
      eval_episodes: 2
""")


def test_fit_gail_recipe_caches_demos_in_the_data_dir_and_logs_the_discriminator(
    tmp_path, monkeypatch
):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("TDIMITATION_DATA_DIR", raising=False)
    monkeypatch.chdir(tmp_path)  # so a cache in the default ./tdimitation_data would show
    recipe = tmp_path / "gail.yaml"
    recipe.write_text(GAIL_RECIPE)
    data = tmp_path / "data"
    assert main(["fit", "--config", str(recipe), "--run.data_dir", str(data)]) == 0
    assert any((data / "demos").iterdir())
    assert not (tmp_path / "tdimitation_data").exists()
    client = MlflowClient(f"sqlite:///{data.resolve()}/mlflow.db")
    run = client.search_runs([client.get_experiment_by_name("gail-test").experiment_id])[0]
    metrics = run.data.metrics
    assert metrics["frames"] == 512 and "eval/return_mean" in metrics
    for key in ("train/disc/accuracy", "train/disc/loss_discriminator", "train/time/disc_s"):
        assert key in metrics, key
    assert run.data.params["generator_reward"] == "logit"
    ckpt = data / "runs" / "gail-test" / "tiny" / "last.ckpt"
    assert "reward_net" in torch.load(ckpt, weights_only=True)["tdimitation"]


def test_fit_resumes_from_checkpoint_with_a_larger_budget(recipe, tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    data = tmp_path / "data"
    assert (
        main(
            [
                "fit",
                "--config",
                str(recipe),
                "--run.data_dir",
                str(data),
                "--trainer.max_epochs",
                "1",
            ]
        )
        == 0
    )
    ckpt = data / "runs" / "fit-test" / "tiny" / "last.ckpt"
    # A finished run resumed with a larger budget continues in a second epoch.
    assert (
        main(
            [
                "fit",
                "--config",
                str(recipe),
                "--run.data_dir",
                str(data),
                "--run.name",
                "more",
                "--model.init_args.total_frames",
                "1280",
                "--trainer.max_epochs",
                "2",
                "--ckpt_path",
                str(ckpt),
            ]
        )
        == 0
    )
    more = data / "runs" / "fit-test" / "more" / "last.ckpt"
    assert torch.load(more, weights_only=True)["tdimitation"]["frames"] == 1280


def test_fit_rejects_bad_recipe_values(recipe, tmp_path, capsys):
    assert main(["fit", "--config", str(recipe), "--model.init_args.n_steps", "lots"]) == 2
    assert "expected int, got 'lots'" in capsys.readouterr().err


@pytest.mark.parametrize(
    "content, message",
    [
        (b"garbage bytes, not a checkpoint", "corrupted"),
        (None, "does not exist"),
    ],
)
def test_fit_refuses_a_bad_checkpoint(recipe, tmp_path, capsys, content, message):
    ckpt = tmp_path / "last.ckpt"
    if content is not None:
        ckpt.write_bytes(content)
    rc = main(
        [
            "fit",
            "--config",
            str(recipe),
            "--run.data_dir",
            str(tmp_path / "d"),
            "--ckpt_path",
            str(ckpt),
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2 and message in err and "Traceback" not in err


def test_fit_refuses_a_foreign_checkpoint(recipe, tmp_path, capsys):
    ckpt = tmp_path / "other.ckpt"
    torch.save({"state_dict": {}, "epoch": 0}, ckpt)
    rc = main(
        [
            "fit",
            "--config",
            str(recipe),
            "--run.data_dir",
            str(tmp_path / "d"),
            "--ckpt_path",
            str(ckpt),
        ]
    )
    assert rc == 2 and "not a checkpoint of a tdimitation" in capsys.readouterr().err
