"""Lightning callbacks shared by the algorithms."""

from __future__ import annotations

import os
from pathlib import Path

import lightning as L
import torch

from tdimitation.utils import atomic_path, default_num_threads


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


class ThreadCount(L.Callback):
    """Run a fit at ``num_threads`` torch threads and restore the previous count after.

    The algorithms add it themselves (``configure_callbacks``), so ``trainer.fit`` from
    Python runs as fast as the command line. The count is restored when the fit ends or
    fails, so the caller's own torch code keeps its setting.

    Args:
        num_threads: intra-op threads during the fit; None: :func:`default_num_threads`
            (``$TDIMITATION_NUM_THREADS``, else 1).
    """

    def __init__(self, num_threads: int | None = None) -> None:
        if num_threads is not None and int(num_threads) < 1:
            raise ValueError(f"num_threads must be a positive integer, got {num_threads}")
        self.num_threads = num_threads
        self._previous: int | None = None

    def setup(self, trainer, pl_module, stage: str) -> None:
        if self._previous is None:
            self._previous = torch.get_num_threads()
        torch.set_num_threads(self.num_threads or default_num_threads())

    def _restore(self) -> None:
        if self._previous is not None:
            torch.set_num_threads(self._previous)
            self._previous = None

    def teardown(self, trainer, pl_module, stage: str) -> None:
        self._restore()

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self._restore()


class FitThreads:
    """Mixin of the algorithms: every fit runs under :class:`ThreadCount`.

    Set ``module.num_threads`` (or ``$TDIMITATION_NUM_THREADS``) to override the count;
    ``module.num_threads = 0`` leaves torch's setting alone.
    """

    #: Torch threads during a fit: None for the default, 0 to leave torch's setting alone.
    num_threads: int | None = None

    def configure_callbacks(self) -> list[L.Callback]:
        if self.num_threads == 0:
            return []
        return [ThreadCount(self.num_threads)]
