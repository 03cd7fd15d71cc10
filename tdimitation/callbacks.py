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
        # Metrics a logger buffers reach the store first: a run resumed from this
        # checkpoint repeats only what came after it.
        for logger in trainer.loggers:
            if callable(getattr(logger, "flush", None)):
                logger.flush()
        if not trainer.is_global_zero:
            # Every process takes part (the hooks run, the processes meet at a barrier);
            # only the first writes, so the file is written once.
            trainer.save_checkpoint(self.path, weights_only=False)
            return
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


def keep_outputs_in_data_dir(trainer: L.Trainer) -> None:
    """Move what Lightning writes by default from the working directory to the data dir.

    A ``Trainer`` without ``default_root_dir`` writes its default logger's files
    (``lightning_logs/``) and its default checkpoints (``checkpoints/``, or
    ``<experiment>/<run>/checkpoints/`` beside an MLflow logger on a database store) in the
    working directory. This moves them under ``<data dir>/lightning/``
    (:func:`~tdimitation.tracking.data_dir`). A Trainer given ``default_root_dir``, a logger
    with a directory of its own, or a ``ModelCheckpoint`` with a ``dirpath`` is left alone.
    Called when the algorithm's callbacks are attached: Lightning creates its loggers'
    directories in the very next step, before any callback hook runs.
    """
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    from tdimitation.tracking import data_dir

    cwd = os.getcwd()
    if trainer.default_root_dir != cwd:
        return  # the user chose where Lightning writes
    root = data_dir() / "lightning"
    loggers = []
    for logger in trainer.loggers:
        if isinstance(logger, CSVLogger | TensorBoardLogger) and logger.save_dir == cwd:
            # Lightning's default logger (the only one rooted at the cwd by default).
            logger = type(logger)(save_dir=str(root), name=logger.name)
        loggers.append(logger)
    trainer.loggers = loggers
    for callback in trainer.checkpoint_callbacks:
        if not isinstance(callback, ModelCheckpoint) or callback.dirpath is not None:
            continue
        if not loggers:
            callback.dirpath = str(root / "checkpoints")
        elif loggers[0].save_dir is None:
            # Lightning would use <cwd>/<name>/<version>/checkpoints (MLflow on sqlite).
            first = loggers[0]
            version = first.version
            version = version if isinstance(version, str) else f"version_{version}"
            callback.dirpath = str(root / str(first.name) / version / "checkpoints")


#: Checkpoint key naming the algorithm and env that wrote it (see :func:`module_origin`).
ORIGIN_KEY = "tdimitation_origin"


def module_origin(module: L.LightningModule) -> dict[str, str | None]:
    """``{"algorithm": class path, "env_id": id or None}`` of an algorithm."""
    cls = type(module)
    env_id = getattr(module, "env_id", None)
    if env_id is None:
        env_id = getattr(module, "hparams", {}).get("env_id")
    return {
        "algorithm": f"{cls.__module__}.{cls.__qualname__}",
        "env_id": env_id if isinstance(env_id, str) else None,
    }


class CheckpointOrigin(L.Callback):
    """Record the algorithm and env in every checkpoint, so a resume can check them."""

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        checkpoint[ORIGIN_KEY] = module_origin(pl_module)


class FitCallbacks:
    """Mixin of the algorithms: the callbacks every fit runs under, from Python or the CLI.

    :class:`~tdimitation.budget.BudgetGuard` (the algorithm's budget is the only one),
    :func:`keep_outputs_in_data_dir` (nothing written in the working directory),
    :class:`CheckpointOrigin` (checkpoints name their algorithm and env),
    :class:`~tdimitation.distributed.StrategyCheck` (a strategy the algorithm cannot train
    under is refused), :class:`ThreadCount` and, in place of the Trainer's default progress
    bar, :class:`~tdimitation.progress.BudgetProgressBar`. Set ``module.num_threads`` (or
    ``$TDIMITATION_NUM_THREADS``) to override the thread count; ``module.num_threads = 0``
    leaves torch's setting alone. A progress bar given to the Trainer is kept.
    """

    #: Torch threads during a fit: None for the default, 0 to leave torch's setting alone.
    num_threads: int | None = None
    #: The progress bar's figures: logged metric key -> label (see tdimitation.progress).
    progress_figures: dict[str, str] = {}
    #: Whether the algorithm trains under the ``ddp`` strategy (:mod:`tdimitation.distributed`).
    multi_process: bool = False

    def configure_callbacks(self) -> list[L.Callback]:
        from tdimitation.budget import BudgetGuard
        from tdimitation.distributed import StrategyCheck
        from tdimitation.progress import default_progress_bar
        from tdimitation.utils import attached_trainer

        callbacks: list[L.Callback] = [StrategyCheck(), BudgetGuard(), CheckpointOrigin()]
        trainer = attached_trainer(self)
        if trainer is not None:
            keep_outputs_in_data_dir(trainer)
            bar = default_progress_bar(trainer)
            if bar is not None:
                callbacks.append(bar)
        if self.num_threads != 0:
            callbacks.append(ThreadCount(self.num_threads))
        return callbacks
