"""One budget per run, from Python: the Trainer's limits cannot repeat or cut it; nothing is
written outside the data directory."""

import importlib

import lightning as L
import pytest
import torch

from tdimitation.algorithms import BC, DemonstrationData
from tdimitation.budget import TrainingBudget
from tdimitation.callbacks import FitCallbacks
from tdimitation.cli import ALGORITHMS
from tdimitation.errors import BudgetError
from tdimitation.rl import PPO
from tdimitation.tracking import make_mlflow_logger

# Lightning warns that an unset max_epochs becomes 1000 epochs; the budget ends the fit.
pytestmark = pytest.mark.filterwarnings("ignore:`max_epochs` was not set")

QUIET = {"enable_progress_bar": False, "enable_model_summary": False}


def tiny_ppo(total_frames: int = 512, **kwargs) -> PPO:
    return PPO(
        "CartPole-v1",
        num_envs=4,
        n_steps=64,
        total_frames=total_frames,
        n_epochs=1,
        batch_size=64,
        hidden_sizes=[16],
        **kwargs,
    )


@pytest.mark.parametrize("max_epochs", [None, -1])
def test_unlimited_or_unset_max_epochs_train_exactly_the_budget(max_epochs):
    # Before: -1 never stopped and Lightning's default (1000 epochs) repeated the budget.
    model = tiny_ppo()
    L.Trainer(max_epochs=max_epochs, logger=False, enable_checkpointing=False, **QUIET).fit(model)
    assert model.frames == 512


@pytest.mark.parametrize(
    "limits, named",
    [
        ({"max_epochs": 0}, "max_epochs=0 would train nothing"),
        ({"max_epochs": 3}, "max_epochs=3 would repeat or cut"),
        ({"max_steps": 5}, "max_steps=5"),
        ({"min_epochs": 2}, "min_epochs=2"),
        ({"limit_train_batches": 2}, "limit_train_batches=2"),
        ({"fast_dev_run": True}, "is not a budget here"),
    ],
)
def test_conflicting_trainer_limits_are_refused_before_training(limits, named):
    model = tiny_ppo()
    trainer = L.Trainer(logger=False, enable_checkpointing=False, **QUIET, **limits)
    with pytest.raises(BudgetError, match=named) as caught:
        trainer.fit(model)
    assert "total_frames=512" in str(caught.value) and model.frames == 0


def test_bc_budget_is_its_epochs_not_the_trainers(tmp_path):
    data = DemonstrationData(
        "CartPole-v1", expert="scripted", n_episodes=4, cache_dir=str(tmp_path)
    )
    with pytest.raises(BudgetError, match="BC's budget is n_epochs=1"):
        L.Trainer(max_epochs=2, logger=False, enable_checkpointing=False, **QUIET).fit(
            BC("CartPole-v1", n_epochs=1, batch_size=32), datamodule=data
        )
    model = BC("CartPole-v1", n_epochs=2, batch_size=32)
    # Lightning's default Trainer (1000 epochs) trains BC's two epochs once.
    L.Trainer(logger=False, enable_checkpointing=False, **QUIET).fit(model, datamodule=data)
    budget = model.training_budget()
    assert budget.total == 2 * model._per_epoch and model.batches_done == budget.total


def test_resuming_a_finished_run_needs_a_larger_budget(tmp_path):
    model = tiny_ppo()
    trainer = L.Trainer(logger=False, enable_checkpointing=False, **QUIET)
    trainer.fit(model)
    ckpt = tmp_path / "done.ckpt"
    trainer.save_checkpoint(ckpt)
    same = tiny_ppo()
    with pytest.raises(BudgetError, match=r"nothing left to train: 512 of 512 frames"):
        L.Trainer(logger=False, enable_checkpointing=False, **QUIET).fit(
            same, ckpt_path=str(ckpt), weights_only=True
        )
    # A larger budget continues, with no max_epochs arithmetic (the old run finished an epoch).
    more = tiny_ppo(total_frames=768)
    L.Trainer(logger=False, enable_checkpointing=False, **QUIET).fit(
        more, ckpt_path=str(ckpt), weights_only=True
    )
    assert more.frames == 768


def test_every_algorithm_runs_under_the_fit_callbacks():
    for name, path in ALGORITHMS.items():
        module_name, _, class_name = path.rpartition(".")
        cls = getattr(importlib.import_module(module_name), class_name)
        assert issubclass(cls, FitCallbacks) and issubclass(cls, L.LightningModule), name
        assert callable(getattr(cls, "training_budget", None)), name


@pytest.mark.filterwarnings("ignore:Starting from v1.9.0")
@pytest.mark.parametrize("logger", ["default", "none", "mlflow"])
def test_a_python_fit_writes_nothing_in_the_working_directory(logger, tmp_path, monkeypatch):
    cwd, data = tmp_path / "cwd", tmp_path / "data"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("TDIMITATION_DATA_DIR", str(data))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    chosen = {"default": True, "none": False, "mlflow": None}[logger]
    if chosen is None:
        chosen = make_mlflow_logger("outputs-test")
    # Autograd updates: Lightning's default ModelCheckpoint saves only after optimizer
    # steps it counts (the fused updates take theirs directly).
    trainer = L.Trainer(logger=chosen, **QUIET)
    if logger == "default":
        model = BC("CartPole-v1", n_epochs=1, batch_size=32, fast_updates=False)
        trainer.fit(
            model, datamodule=DemonstrationData("CartPole-v1", expert="scripted", n_episodes=2)
        )
    else:
        trainer.fit(tiny_ppo(fast_update=False))
    assert list(cwd.iterdir()) == []
    checkpoints = list((data / "lightning").rglob("*.ckpt"))
    assert len(checkpoints) == 1 and "checkpoints" in checkpoints[0].parts
    assert torch.load(checkpoints[0], weights_only=True)["tdimitation"]


def test_budget_used_up_counts_whole_steps():
    assert TrainingBudget("total_frames", 700, "frames", 512, 700, 256).used_up
    assert not TrainingBudget("total_frames", 768, "frames", 512, 768, 256).used_up
    assert not TrainingBudget("n_epochs", 2, "batches", 0, None).used_up
