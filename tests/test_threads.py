"""Fits run at tdimitation's thread count and give the caller's count back afterwards."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from tdimitation.callbacks import ThreadCount
from tdimitation.rl import PPO
from tests.helpers import quiet_trainer


class RecordThreads(L.Callback):
    def __init__(self) -> None:
        self.seen: list[int] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.seen.append(torch.get_num_threads())


def _ppo() -> PPO:
    return PPO("CartPole-v1", num_envs=2, n_steps=32, total_frames=128, batch_size=32, n_epochs=1)


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_fit_runs_at_one_thread_and_restores_the_callers_count(two_threads, monkeypatch):
    monkeypatch.delenv("TDIMITATION_NUM_THREADS", raising=False)
    record = RecordThreads()
    quiet_trainer([record]).fit(_ppo())
    assert record.seen and set(record.seen) == {1}
    assert torch.get_num_threads() == 2


def test_thread_count_is_overridable(two_threads, monkeypatch):
    monkeypatch.delenv("TDIMITATION_NUM_THREADS", raising=False)
    model, record = _ppo(), RecordThreads()
    model.num_threads = 0  # leave torch's setting alone
    quiet_trainer([record]).fit(model)
    assert set(record.seen) == {2}
    monkeypatch.setenv("TDIMITATION_NUM_THREADS", "2")
    torch.set_num_threads(1)
    record = RecordThreads()
    quiet_trainer([record]).fit(_ppo())
    assert set(record.seen) == {2} and torch.get_num_threads() == 1


def test_count_is_restored_when_the_fit_fails(two_threads):
    class Boom(L.Callback):
        def on_train_batch_start(self, *args) -> None:
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        quiet_trainer([Boom()]).fit(_ppo())
    assert torch.get_num_threads() == 2


def test_bad_thread_counts_are_refused(monkeypatch):
    with pytest.raises(ValueError, match="num_threads"):
        ThreadCount(-1)
    monkeypatch.setenv("TDIMITATION_NUM_THREADS", "many")
    with pytest.raises(ValueError, match="TDIMITATION_NUM_THREADS"):
        quiet_trainer().fit(_ppo())
