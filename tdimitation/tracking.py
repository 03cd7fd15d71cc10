"""Experiment tracking: the default MLflow logger (a local sqlite store).

MLflow 3 refuses its file store, and Lightning's ``MLFlowLogger`` still defaults to it and
freezes ``MLFLOW_TRACKING_URI`` at import time. This module resolves
the URI at call time: ``MLFLOW_TRACKING_URI`` when set (e.g. a remote server), otherwise
``sqlite:///<data dir>/mlflow.db``. Browse runs with
``mlflow ui --backend-store-uri <uri>``.
"""

from __future__ import annotations

import functools
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


def store_client(uri: str):
    """An ``MlflowClient`` on ``uri``, its store created safely when processes race.

    MLflow builds a new sqlite store by running its schema migrations; two processes doing
    that at once (two fits started together on a new data directory) make one of them
    fail. The first connection of a process to a sqlite store is therefore made under an
    exclusive lock on ``<store>.lock``; MLflow keeps the connected store for the process.
    """
    from mlflow import MlflowClient

    _quiet_creation_notes()
    if uri.startswith("sqlite:///") and uri not in _connected_stores:
        import fcntl

        lock_path = Path(uri[len("sqlite:///") :]).with_suffix(".db.lock")
        with open(lock_path, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                client = MlflowClient(uri)
                client.search_experiments(max_results=1)  # connects: creates or upgrades
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
        _connected_stores.add(uri)
        return client
    return MlflowClient(uri)


_connected_stores: set[str] = set()


def make_mlflow_logger(
    experiment_name: str = DEFAULT_EXPERIMENT,
    run_name: str | None = None,
    *,
    data_dir_path: str | os.PathLike | None = None,
    uri: str | None = None,
    tags: dict[str, str] | None = None,
    log_model: bool = False,
    run_id: str | None = None,
):
    """A Lightning ``MLFlowLogger`` on the default store (see module docstring).

    Args:
        experiment_name: MLflow experiment (created when missing).
        run_name: name shown in the MLflow UI.
        data_dir_path: data directory holding ``mlflow.db`` (default :func:`data_dir`).
        uri: explicit tracking URI; overrides everything else.
        tags: run tags.
        log_model: let Lightning log checkpoints as artifacts.
        run_id: continue this existing run instead of starting a new one.

    Step metrics are written in batches, at most :data:`FLUSH_SECONDS` apart and when the
    run is finalized: each write is one sqlite transaction (~10-20 ms here), and Lightning
    logs after every training batch.
    """
    resolved = uri or tracking_uri(data_dir_path)
    store_client(resolved)  # the logger's own client then finds the store made
    artifact_location = None
    if resolved.startswith("sqlite:///"):
        # Keep artifacts beside the database rather than in ./mlruns of the cwd.
        artifact_location = (Path(resolved[len("sqlite:///") :]).parent / "mlartifacts").as_uri()
    return tracking_logger_class()(
        run_id=run_id,
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


@functools.cache
def tracking_logger_class() -> type:
    """Lightning's ``MLFlowLogger`` made fit for runs that are resumed and recorded.

    * Step metrics are buffered and written in batches (see :func:`make_mlflow_logger`);
      :meth:`flush` writes them now.
    * Keys starting with ``_`` (LightningCLI's ``_instantiator`` and ``_class_path``) are
      internal and not logged as parameters.
    * A continued run keeps its first value of a parameter (MLflow refuses to change one):
      a value that differs is recorded as the tag ``tdimitation.resumed.<key>``.
    * ``last_step`` is the largest step metrics were logged at (None before any), so
      metrics logged after training can be placed at the end of the curves.
    * The notes MLflow and Lightning log when a store or an experiment is first created
      are dropped: a new store or experiment is the normal start of a run, not news.

    Built on first use, so importing this module imports neither Lightning nor MLflow.
    """
    import re
    import time

    _quiet_creation_notes()

    from lightning.pytorch.loggers import MLFlowLogger
    from lightning.pytorch.utilities import rank_zero_only

    class TrackingLogger(MLFlowLogger):
        last_step: int | None = None

        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            self._pending: list = []
            self._last_flush = time.monotonic()
            # Kept from our own arguments (MLFlowLogger keeps them in private attributes).
            self._metric_prefix = kwargs.get("prefix", "")
            synchronous = kwargs.get("synchronous")
            self._batch_options = {} if synchronous is None else {"synchronous": synchronous}

        @property
        def experiment(self):
            # Lightning connects through mlflow.set_tracking_uri, which also exports
            # MLFLOW_TRACKING_URI: the next fit in this process (another data directory)
            # would then log here. The process's environment is put back as it was.
            before = os.environ.get("MLFLOW_TRACKING_URI")
            try:
                return super().experiment
            finally:
                if before is None:
                    os.environ.pop("MLFLOW_TRACKING_URI", None)
                else:
                    os.environ["MLFLOW_TRACKING_URI"] = before

        def log_hyperparams(self, params) -> None:
            params = dict(params if isinstance(params, dict) else vars(params))
            params = {k: v for k, v in params.items() if not str(k).startswith("_")}
            existing = self.experiment.get_run(self.run_id).data.params
            if existing:
                # Compared as MLFlowLogger logs them: flattened, strings of at most 250 chars.
                flat = {k: str(v)[:250] for k, v in _flatten(params).items()}
                for key, value in flat.items():
                    if key in existing and existing[key] != value:
                        self.experiment.set_tag(self.run_id, f"tdimitation.resumed.{key}", value)
                params = {k: v for k, v in flat.items() if k not in existing}
            if params:
                super().log_hyperparams(params)

        @rank_zero_only
        def log_metrics(self, metrics, step: int | None = None) -> None:
            from mlflow.entities import Metric

            timestamp_ms = int(time.time() * 1000)
            for key, value in metrics.items():
                if isinstance(value, str):
                    continue  # MLflow metrics are numbers (Lightning discards these too)
                # The characters MLflow accepts in metric names, as Lightning's logger.
                if self._metric_prefix:
                    key = f"{self._metric_prefix}{self.LOGGER_JOIN_CHAR}{key}"
                key = re.sub("[^a-zA-Z0-9_/. -]+", "", key)
                self._pending.append(
                    Metric(key=key, value=float(value), timestamp=timestamp_ms, step=step or 0)
                )
            self.last_step = max(self.last_step or 0, int(step or 0))
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
                    **self._batch_options,
                )

        @rank_zero_only
        def finalize(self, status: str = "success") -> None:
            if self._pending:
                self.flush()
            super().finalize(status)

    return TrackingLogger


def _quiet_creation_notes() -> None:
    """Drop the notes MLflow and Lightning log when a store or experiment is created."""
    import logging

    logging.getLogger("mlflow.store.db.utils").addFilter(_drop_creation_notes)
    logging.getLogger("lightning.pytorch.loggers.mlflow").addFilter(_drop_creation_notes)


def _drop_creation_notes(record) -> bool:
    """A logging filter: False for the notes of a store or experiment being created."""
    message = record.getMessage()
    return not (
        message.startswith(("Creating initial MLflow database tables", "Updating database"))
        or (message.startswith("Experiment with name ") and message.endswith("Creating it."))
    )


def _flatten(params: dict, parent: str = "") -> dict:
    """Nested dictionaries as ``a/b`` keys (the way Lightning's MLflow logger names them)."""
    flat: dict = {}
    for key, value in params.items():
        name = f"{parent}/{key}" if parent else str(key)
        if isinstance(value, dict):
            flat |= _flatten(value, name)
        else:
            flat[name] = value
    return flat


def browse_hint(uri: str | None = None) -> str:
    """The command that opens the MLflow UI on a tracking URI."""
    return f"mlflow ui --backend-store-uri {uri or tracking_uri()}"
