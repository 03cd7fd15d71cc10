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
    """
    from lightning.pytorch.loggers import MLFlowLogger

    resolved = uri or tracking_uri(data_dir_path)
    artifact_location = None
    if resolved.startswith("sqlite:///"):
        # Keep artifacts beside the database rather than in ./mlruns of the cwd.
        artifact_location = (Path(resolved[len("sqlite:///") :]).parent / "mlartifacts").as_uri()
    return MLFlowLogger(
        experiment_name=experiment_name,
        run_name=run_name,
        tracking_uri=resolved,
        tags=tags,
        log_model=log_model,
        artifact_location=artifact_location,
    )


def browse_hint(uri: str | None = None) -> str:
    """The command that opens the MLflow UI on a tracking URI."""
    return f"mlflow ui --backend-store-uri {uri or tracking_uri()}"
