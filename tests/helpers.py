"""Helpers shared by test modules."""

from __future__ import annotations

from collections.abc import Sequence

import lightning as L


def quiet_trainer(callbacks: Sequence[L.Callback] = (), **kwargs) -> L.Trainer:
    """A one-epoch Trainer without logger, progress bar, summary or checkpoints.

    Keyword arguments override those defaults.
    """
    options = dict(
        max_epochs=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        callbacks=list(callbacks),
    )
    return L.Trainer(**(options | kwargs))
