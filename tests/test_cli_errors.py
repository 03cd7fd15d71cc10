"""Bad input to the real ``tdimitation`` command: one line on stderr, exit 2, nothing written.

Each case runs the command in a subprocess (a refusal at parse time costs a few seconds).
"""

import importlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import lightning as L
import pytest
import torch

from tdimitation.callbacks import ORIGIN_KEY, PeriodicCheckpoint
from tdimitation.cli import ALGORITHMS
from tdimitation.rl import PPO

ROOT = Path(__file__).resolve().parents[1]

RECIPE = textwrap.dedent("""
    model:
      class_path: tdimitation.rl.ppo.PPO
      init_args:
        env_id: CartPole-v1
        num_envs: 4
        n_steps: 64
        total_frames: 768
        n_epochs: 1
        batch_size: 64
        hidden_sizes: [16]
    trainer:
      enable_progress_bar: false
      enable_model_summary: false
    run:
      experiment: errors
      name: tiny
      eval_episodes: 2
""")


def tdimitation(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run(
        [sys.executable, "-m", "tdimitation.cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cwd,
        env=env,
    )


@pytest.fixture(scope="module")
def ppo_checkpoint(tmp_path_factory) -> Path:
    """A real checkpoint of PPO on CartPole-v1 (with its origin recorded)."""
    directory = tmp_path_factory.mktemp("ckpt")
    model = PPO(
        "CartPole-v1",
        num_envs=4,
        n_steps=64,
        total_frames=256,
        n_epochs=1,
        batch_size=64,
        hidden_sizes=[16],
    )
    trainer = L.Trainer(
        max_epochs=-1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[PeriodicCheckpoint(directory)],
    )
    trainer.fit(model)
    return directory / "last.ckpt"


def _recipe(tmp_path: Path, text: str = RECIPE) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return path


def _dqn_recipe(tmp_path: Path) -> Path:
    return _recipe(
        tmp_path,
        textwrap.dedent("""
            model:
              class_path: tdimitation.rl.dqn.DQN
              init_args: {env_id: CartPole-v1, num_envs: 4, total_frames: 512}
        """),
    )


CASES = {
    "unknown env id": (["--model.init_args.env_id", "CartPol-v1"], "did you mean CartPole-v1"),
    "negative budget": (["--model.init_args.total_frames", "-5"], "total_frames (-5)"),
    "nested key typo": (
        ["--model.init_args.total_frame", "5"],
        "takes no argument 'total_frame'; did you mean total_frames?",
    ),
    "trainer key typo": (["--trainer.max_epoch", "3"], "did you mean --trainer.max_epochs?"),
    "run key typo": (["--run.data-di", "x"], "did you mean --run.data_dir?"),
    "class path typo": (
        ["--model.class_path", "tdimitation.rl.ppo.PPX"],
        "did you mean tdimitation.rl.ppo.PPO?",
    ),
    "wrong type": (["--model.init_args.n_steps", "lots"], "expected int, got 'lots'"),
    # The other Trainer limits are refused by the same check (tests/test_budget.py).
    "zero epochs": (["--trainer.max_epochs", "0"], "max_epochs=0 would train nothing"),
    "missing accelerator": (["--trainer.accelerator", "gpu"], "not available on this machine"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_fit_refuses_bad_options_in_one_line(case, tmp_path):
    if case == "missing accelerator" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    args, message = CASES[case]
    data = tmp_path / "data"
    recipe = _recipe(tmp_path)
    done = tdimitation(
        "fit", "--config", str(recipe), "--run.data_dir", str(data), *args, cwd=tmp_path
    )
    _assert_refused(done, message)
    assert not data.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["recipe.yaml"]


def _assert_refused(done: subprocess.CompletedProcess, message: str) -> None:
    err = done.stderr.strip()
    assert done.returncode == 2, (done.returncode, err[-2000:])
    assert len(err.splitlines()) == 1 and err.startswith("tdimitation fit: error: "), err
    assert message in err, err


def test_fit_refuses_a_bad_recipe_file_and_no_recipe(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  class_path: tdimitation.rl.ppo.PPO\n  init_args: {env_id: x\n")
    _assert_refused(tdimitation("fit", "--config", str(bad), cwd=tmp_path), "is not valid YAML at")
    _assert_refused(tdimitation("fit", cwd=tmp_path), "pass --config RECIPE.yaml")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml"]


@pytest.mark.parametrize("case", ["algorithm", "env", "older checkpoint", "finished run"])
def test_fit_refuses_a_checkpoint_of_another_run(case, ppo_checkpoint, tmp_path):
    ckpt = ppo_checkpoint
    args = []
    if case == "finished run":
        recipe = _recipe(tmp_path)
        args = ["--model.init_args.total_frames", "256"]
        message = "PPO has nothing left to train: 256 of 256 frames done"
    elif case == "env":
        recipe = _recipe(tmp_path)
        args = ["--model.init_args.env_id", "Acrobot-v1"]
        message = "is of tdimitation.rl.ppo.PPO on CartPole-v1, but this run trains "
        message += "tdimitation.rl.ppo.PPO on Acrobot-v1"
    else:
        recipe = _dqn_recipe(tmp_path)
        message = "tdimitation.rl.ppo.PPO on CartPole-v1, but this run trains "
        message += "tdimitation.rl.dqn.DQN on CartPole-v1"
    if case == "older checkpoint":
        state = torch.load(ckpt, weights_only=True)
        del state[ORIGIN_KEY]
        ckpt = tmp_path / "older.ckpt"
        torch.save(state, ckpt)
        message = "(another algorithm)"
    data = tmp_path / "data"
    done = tdimitation(
        "fit",
        "--config",
        str(recipe),
        "--run.data-dir",
        str(data),
        "--ckpt-path",
        str(ckpt),
        *args,
        cwd=tmp_path,
    )
    _assert_refused(done, message)
    assert not data.exists()


def test_fit_with_unlimited_epochs_trains_the_budget_once(tmp_path):
    # Before: PPO with --trainer.max_epochs -1 never stopped.
    data = tmp_path / "data"
    done = tdimitation(
        "fit",
        "--config",
        str(_recipe(tmp_path)),
        "--run.data_dir",
        str(data),
        "--trainer.max_epochs",
        "-1",
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    ckpt = data / "runs" / "errors" / "tiny" / "last.ckpt"
    assert torch.load(ckpt, weights_only=True)["tdimitation"]["frames"] == 768
    assert f"checkpoint: {ckpt}" in done.stdout


def test_help_lists_fit_and_the_algorithms_and_version_is_the_package_metadata(tmp_path):
    from importlib.metadata import version

    done = tdimitation("--help", cwd=tmp_path)
    assert done.returncode == 0
    assert "    fit " in done.stdout
    for name, path in ALGORITHMS.items():
        assert f"{name}" in done.stdout and path in done.stdout
    done = tdimitation("--version", cwd=tmp_path)
    assert done.stdout.strip() == f"tdimitation {version('tdimitation')}"


def test_algorithm_class_paths_in_help_import():
    for path in ALGORITHMS.values():
        module_name, _, name = path.rpartition(".")
        assert issubclass(getattr(importlib.import_module(module_name), name), L.LightningModule)


def test_subcommands_show_defaults_and_take_either_separator(capsys, tmp_path):
    from tdimitation.cli import main

    with pytest.raises(SystemExit):
        main(["rollout", "--help"])
    out = " ".join(capsys.readouterr().out.split())  # help text wraps at the terminal width
    assert "(default: 8)" in out and "(default: scripted)" in out
    assert main(["stats", str(tmp_path / "missing"), "--allow_pickle"]) == 2
    assert "no trajectory file or dataset" in capsys.readouterr().err
