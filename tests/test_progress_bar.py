"""The budget progress bar from Python: the Trainer's default replaced, a user's bar kept,
the terminal's streams given back after the fit."""

import sys

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import TQDMProgressBar

from tdimitation.algorithms import BC, DemonstrationData
from tdimitation.data import rollout
from tdimitation.envs import make_env
from tdimitation.policies import policy_from_string
from tdimitation.progress import BudgetProgressBar, compact_number


@pytest.fixture(scope="module")
def demos():
    env = make_env("CartPole-v1", 4, seed=0)
    episodes = rollout(policy_from_string("scripted", env=env), env, min_episodes=4)
    env.close()
    return episodes


def _fit(demos, module: L.LightningModule | None = None, **trainer_kwargs) -> L.Trainer:
    trainer = L.Trainer(
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        **trainer_kwargs,
    )
    module = module or BC("CartPole-v1", n_batches=20, batch_size=32, seed=0)
    trainer.fit(module, datamodule=DemonstrationData("CartPole-v1", trajectories=demos))
    return trainer


def test_default_bar_is_the_budget_bar_and_streams_are_restored(demos, capsys):
    streams = sys.stdout, sys.stderr
    trainer = _fit(demos, log_every_n_steps=1)  # BC computes its loss on logged steps only
    assert isinstance(trainer.progress_bar_callback, BudgetProgressBar)
    assert (sys.stdout, sys.stderr) == streams
    err = capsys.readouterr().err
    assert "BC: 100%" in err and "20/20 batches" in err and "loss=" in err


def test_a_users_bar_is_kept_and_a_disabled_bar_stays_off(demos):
    own = TQDMProgressBar(refresh_rate=5)
    assert _fit(demos, callbacks=[own]).progress_bar_callback is own
    assert _fit(demos, enable_progress_bar=False).progress_bar_callback is None


class _FailingBC(BC):
    def training_step(self, block, batch_idx):
        print("about to fail")
        raise RuntimeError("training failed")


def test_streams_are_restored_when_the_fit_fails(demos, capsys):
    streams = sys.stdout, sys.stderr
    with pytest.raises(RuntimeError, match="training failed"):
        _fit(demos, _FailingBC("CartPole-v1", n_batches=20, batch_size=32, seed=0))
    assert (sys.stdout, sys.stderr) == streams
    assert "about to fail" in capsys.readouterr().out


@pytest.mark.parametrize(
    "value, text",
    [(1024.0, "1024"), (-3.0, "-3"), (487.25, "487.2"), (0.38912, "0.389"), (12345.6, "12346")],
)
def test_compact_number(value, text):
    assert compact_number(value) == text


class _Plain(L.LightningModule):
    """A module without a training budget."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)

    def training_step(self, batch, batch_idx):
        loss = self.layer(batch).pow(2).mean()
        self.log("plain_loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self):
        return torch.utils.data.DataLoader(torch.ones(6, 2), batch_size=2)


def test_a_module_without_budget_gets_lightnings_counts_on_the_bar(capsys):
    trainer = L.Trainer(
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        callbacks=[BudgetProgressBar()],
    )
    trainer.fit(_Plain())
    err = capsys.readouterr().err
    assert "3/3" in err and "plain_loss=" in err
