"""Lightning callbacks shared by the algorithms."""

from __future__ import annotations

import os
from pathlib import Path

import lightning as L

from tdimitation.utils import atomic_path


class PeriodicCheckpoint(L.Callback):
    """Save ``<dirpath>/last.ckpt`` every ``every_n_rounds`` training batches and at the end.

    Lightning's ``ModelCheckpoint(every_n_train_steps=...)`` counts optimizer steps, which
    jump by hundreds per round in online algorithms and can skip the multiples it waits
    for. This counts rounds instead, and writes atomically (temporary file, then rename), so
    a run killed mid-save still has its previous checkpoint.

    Args:
        dirpath: directory of the checkpoint.
        every_n_rounds: save after every this many training batches (rounds).
        filename: checkpoint file name.
    """

    def __init__(
        self, dirpath: str | os.PathLike, every_n_rounds: int = 1, filename: str = "last.ckpt"
    ) -> None:
        if every_n_rounds < 1:
            raise ValueError(f"every_n_rounds must be >= 1, got {every_n_rounds}")
        self.dirpath = Path(dirpath)
        self.every_n_rounds = int(every_n_rounds)
        self.filename = filename

    @property
    def path(self) -> Path:
        return self.dirpath / self.filename

    def _save(self, trainer: L.Trainer) -> None:
        with atomic_path(self.path) as tmp:
            trainer.save_checkpoint(tmp, weights_only=False)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if (batch_idx + 1) % self.every_n_rounds == 0:
            self._save(trainer)

    def on_train_end(self, trainer, pl_module) -> None:
        self._save(trainer)
