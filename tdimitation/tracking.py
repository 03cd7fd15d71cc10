"""Experiment tracking: the default MLflow logger (a local sqlite store).

MLflow 3 refuses its file store, and Lightning's ``MLFlowLogger`` still defaults to it and
freezes ``MLFLOW_TRACKING_URI`` at import time. This module resolves
the URI at call time: ``MLFLOW_TRACKING_URI`` when set (e.g. a remote server), otherwise
``sqlite:///<data dir>/mlflow.db``. Browse runs with
``mlflow ui --backend-store-uri <uri>``.
"""

from __future__ import annotations

import os
from pathlib import Path

DATA_DIR_ENV = "TDIMITATION_DATA_DIR"
DEFAULT_DATA_DIR = "tdimitation_data"
DEFAULT_EXPERIMENT = "tdimitation"


def data_dir(path: str | os.PathLike | None = None) -> Path:
    """The directory for caches, datasets and the MLflow store (created if missing).

    ``path`` if given, else ``$TDIMITATION_DATA_DIR``, else ``./tdimitation_data``.
    """
    chosen = Path(path or os.environ.get(DATA_DIR_ENV) or DEFAULT_DATA_DIR).expanduser()
    chosen.mkdir(parents=True, exist_ok=True)
    return chosen.resolve()


def tracking_uri(data_dir_path: str | os.PathLike | None = None) -> str:
    """``$MLFLOW_TRACKING_URI`` if set, else a sqlite store in :func:`data_dir`."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    # An absolute path after "sqlite:///" gives the four slashes sqlite URIs need.
    return f"sqlite:///{data_dir(data_dir_path) / 'mlflow.db'}"


def make_mlflow_logger(
    experiment_name: str = DEFAULT_EXPERIMENT,
    run_name: str | None = None,
    *,
    data_dir_path: str | os.PathLike | None = None,
    uri: str | None = None,
    tags: dict[str, str] | None = None,
    log_model: bool = False,
):
    """A Lightning ``MLFlowLogger`` on the default store (see module docstring).

    Args:
        experiment_name: MLflow experiment (created when missing).
        run_name: name shown in the MLflow UI.
        data_dir_path: data directory holding ``mlflow.db`` (default :func:`data_dir`).
        uri: explicit tracking URI; overrides everything else.
        tags: run tags.
        log_model: let Lightning log checkpoints as artifacts.

    Step metrics are written in batches, at most :data:`FLUSH_SECONDS` apart and when the
    run is finalized: each write is one sqlite transaction (~10-20 ms here), and Lightning
    logs after every training batch.
    """
    resolved = uri or tracking_uri(data_dir_path)
    artifact_location = None
    if resolved.startswith("sqlite:///"):
        # Keep artifacts beside the database rather than in ./mlruns of the cwd.
        artifact_location = (Path(resolved[len("sqlite:///") :]).parent / "mlartifacts").as_uri()
    return _buffered_logger_class()(
        experiment_name=experiment_name,
        run_name=run_name,
        tracking_uri=resolved,
        tags=tags,
        log_model=log_model,
        artifact_location=artifact_location,
    )


#: Longest time buffered step metrics wait before they are written to the store.
FLUSH_SECONDS = 2.0
#: Most metrics MLflow accepts in one ``log_batch`` call.
_MAX_BATCH = 1000
_LOGGER_CLASS = None


def _buffered_logger_class():
    """Lightning's ``MLFlowLogger`` with buffered ``log_metrics``.

    Built on first use, so importing this module imports neither Lightning nor MLflow.
    """
    global _LOGGER_CLASS
    if _LOGGER_CLASS is not None:
        return _LOGGER_CLASS
    import re
    import time

    from lightning.pytorch.loggers import MLFlowLogger
    from lightning.pytorch.utilities import rank_zero_only

    class BufferedMLFlowLogger(MLFlowLogger):
        """``MLFlowLogger`` that writes step metrics in batches (see make_mlflow_logger)."""

        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            self._pending: list = []
            self._last_flush = time.monotonic()

        @rank_zero_only
        def log_metrics(self, metrics, step: int | None = None) -> None:
            from mlflow.entities import Metric

            timestamp_ms = int(time.time() * 1000)
            for key, value in metrics.items():
                if isinstance(value, str):
                    continue  # MLflow metrics are numbers (Lightning discards these too)
                # The characters MLflow accepts in metric names, as Lightning's logger.
                if self._prefix:
                    key = f"{self._prefix}{self.LOGGER_JOIN_CHAR}{key}"
                key = re.sub("[^a-zA-Z0-9_/. -]+", "", key)
                self._pending.append(
                    Metric(key=key, value=float(value), timestamp=timestamp_ms, step=step or 0)
                )
            if time.monotonic() - self._last_flush >= FLUSH_SECONDS:
                self.flush()

        def flush(self) -> None:
            """Write the buffered metrics to the store now."""
            pending, self._pending = self._pending, []
            self._last_flush = time.monotonic()
            for start in range(0, len(pending), _MAX_BATCH):
                self.experiment.log_batch(
                    run_id=self.run_id,
                    metrics=pending[start : start + _MAX_BATCH],
                    **self._log_batch_kwargs,
                )

        @rank_zero_only
        def finalize(self, status: str = "success") -> None:
            if self._pending:
                self.flush()
            super().finalize(status)

    _LOGGER_CLASS = BufferedMLFlowLogger
    return _LOGGER_CLASS


def browse_hint(uri: str | None = None) -> str:
    """The command that opens the MLflow UI on a tracking URI."""
    return f"mlflow ui --backend-store-uri {uri or tracking_uri()}"
