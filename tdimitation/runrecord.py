"""The record a ``tdimitation fit`` run leaves: tags, the run file, video and plot.

Each run directory (``<data_dir>/runs/<experiment>/<run name>/``) holds ``last.ckpt`` and
``run.json``, the link from the checkpoint to its MLflow run (id, store, recipe), which
resuming reads to continue the same run. See ``docs/runs.md`` for what a run logs.
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

from tdimitation.errors import TrackingError
from tdimitation.runs import (
    TAG_ALGORITHM,
    TAG_GIT_COMMIT,
    TAG_RECIPE,
    TAG_RUN_DIR,
    TAG_VERSION,
    process_tags,
)
from tdimitation.utils import atomic_path

RUN_FILE = "run.json"
CHECKPOINT = "last.ckpt"
#: ``--ckpt_path last``: the newest checkpoint of the recipe's runs.
LATEST = "last"


# ------------------------------------------------------------------ run file
def read_run_file(run_dir: str | Path) -> dict[str, Any] | None:
    """The ``run.json`` of a run directory, None when there is none (or it is unreadable)."""
    try:
        record = json.loads((Path(run_dir) / RUN_FILE).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and "run_id" in record else None


def write_run_file(run_dir: Path, record: dict[str, Any]) -> None:
    """Write ``run.json`` atomically."""
    with atomic_path(run_dir / RUN_FILE) as tmp:
        tmp.write_text(json.dumps(record, indent=2) + "\n")


def latest_checkpoint(data_root: Path, experiment: str, recipe: str) -> Path:
    """The newest ``last.ckpt`` of a run of ``recipe`` under ``<data_root>/runs/<experiment>``.

    Raises:
        TrackingError: no run of that recipe has a checkpoint.
    """
    if not recipe:
        raise TrackingError("--ckpt_path last needs --config RECIPE: it resumes that recipe's run")
    runs = data_root / "runs" / experiment
    candidates = [
        ckpt
        for ckpt in runs.glob(f"*/{CHECKPOINT}")
        if (read_run_file(ckpt.parent) or {}).get("recipe") == recipe
    ]
    if not candidates:
        raise TrackingError(
            f"no checkpoint of a run of {recipe} under {runs} to resume; start one without "
            "--ckpt_path"
        )
    return max(candidates, key=lambda p: p.stat().st_mtime)


def recipe_of(config) -> str:
    """The recipe file(s) of a parsed fit config as absolute paths ("" when none)."""
    paths = getattr(config, "config", None) or []
    return ",".join(str(Path(str(getattr(p, "absolute", p))).resolve()) for p in paths)


# ----------------------------------------------------------------------- tags
def git_commit() -> str | None:
    """The commit of the code when the package is in a git checkout, else None."""
    root = Path(__file__).resolve().parent.parent
    if not (root / ".git").exists():  # a directory, or a file in a worktree
        return None
    try:
        done = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    commit = done.stdout.strip()
    return commit if done.returncode == 0 and commit else None


def start_tags(model, recipe: str, run_dir: Path) -> dict[str, str]:
    """Tags a fit run carries: algorithm, recipe, version, commit, run directory, process."""
    from tdimitation import __version__

    cls = type(model)
    tags = {
        TAG_ALGORITHM: f"{cls.__module__}.{cls.__qualname__}",
        TAG_VERSION: __version__,
        TAG_RUN_DIR: str(run_dir),
        **process_tags(),
    }
    if recipe:
        tags[TAG_RECIPE] = recipe
    commit = git_commit()
    if commit:
        tags[TAG_GIT_COMMIT] = commit
    return tags


def config_params(config) -> dict[str, Any]:
    """Parameters of a fit beside the model's: ``data.*``, ``trainer.*``, ``run.*``.

    The model's own come from its hyperparameters (Lightning logs them).
    """
    params: dict[str, Any] = {}
    data = getattr(config, "data", None)
    if data is not None:
        params["data.class_path"] = data.class_path
        for key, value in (data.get("init_args") or {}).items():
            params[f"data.{key}"] = _plain(value)
    for key, value in vars(config.trainer).items():
        # Scalars only: callbacks, plugins and loggers are objects, not settings; `fit` sets
        # the logger and checkpointing itself.
        if key not in ("logger", "enable_checkpointing") and isinstance(
            value, str | int | float | bool
        ):
            params[f"trainer.{key}"] = value
    for key, value in vars(config.run).items():
        params[f"run.{key}"] = _plain(value)
    return params


def _plain(value: Any) -> Any:
    as_dict = getattr(value, "as_dict", None)
    return as_dict() if callable(as_dict) else value


# -------------------------------------------------------------------- signals
# A KeyboardInterrupt raised inside one of these leaves the run store's sqlite database
# locked by a transaction nobody ends, and every later write of the process (marking
# the run KILLED) fails with "database is locked".
_STORE_MODULES = ("mlflow", "sqlalchemy", "sqlite3")
# How often a signal that came during a store write checks whether the write is done.
_DEFER_SECONDS = 0.01


def _inside_store_call(frame: FrameType | None) -> bool:
    while frame is not None:
        if frame.f_globals.get("__name__", "").startswith(_STORE_MODULES):
            return True
        frame = frame.f_back
    return False


@contextlib.contextmanager
def interrupt_on_signals() -> Iterator[list[int]]:
    """Turn SIGTERM and SIGINT into ``KeyboardInterrupt`` and record which came.

    Lightning stops a fit cleanly on ``KeyboardInterrupt``; the caller marks the run
    KILLED. A signal that lands inside a write to the run store is raised as soon as the
    write is done (checked every 10 ms with SIGALRM, where the platform has it), so the
    store stays writable. Only the first stop is raised: later signals are recorded and
    leave the caller's cleanup to finish. The previous handlers are restored on exit.
    Outside the main thread (where handlers cannot be installed) nothing changes.
    """
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return
    can_defer = hasattr(signal, "setitimer")
    raised: list[bool] = []

    def raise_unless_writing(frame: FrameType | None) -> None:
        if can_defer and _inside_store_call(frame):
            signal.setitimer(signal.ITIMER_REAL, _DEFER_SECONDS)
            return
        raised.append(True)
        raise KeyboardInterrupt(signal.Signals(received[0]).name)

    def on_stop_signal(signum: int, frame: FrameType | None) -> None:
        received.append(signum)
        # Once the fit is stopping, a repeated signal (a second Ctrl-C, a supervisor's
        # retry) must not break off the cleanup that marks the run KILLED.
        if not raised:
            raise_unless_writing(frame)

    def on_deferral_alarm(signum: int, frame: FrameType | None) -> None:
        if received and not raised:
            raise_unless_writing(frame)

    handlers = {signal.SIGTERM: on_stop_signal, signal.SIGINT: on_stop_signal}
    if can_defer:
        handlers[signal.SIGALRM] = on_deferral_alarm
    previous = {sig: signal.signal(sig, handler) for sig, handler in handlers.items()}
    try:
        yield received
    finally:
        if can_defer:
            signal.setitimer(signal.ITIMER_REAL, 0)
        for sig, old in previous.items():
            signal.signal(sig, old)


# ------------------------------------------------------------------ artifacts
def record_policy_video(model, path: Path, max_steps: int) -> Path:
    """A short video (``max_steps`` env steps at most) of the module's exported policy."""
    from tdimitation.evaluation import record_video

    hparams = getattr(model, "hparams", {})
    env_id = getattr(model, "env_id", None) or hparams.get("env_id")
    if env_id is None:
        raise TrackingError(f"{type(model).__name__} names no environment (env_id)")
    return record_video(
        model.export_policy(),
        str(env_id),
        path,
        seed=hparams.get("seed", 0),
        env_kwargs=hparams.get("env_kwargs"),
        fixed_horizon=hparams.get("fixed_horizon"),
        max_steps=max_steps,
    )


#: Curves the learning-curve plot draws, in order, when the run logged them.
CURVES = ("eval/return_mean", "episode/return", "dagger/round_return")
#: Drawn when no return was logged (offline algorithms without evaluation).
LOSS_CURVES = ("bc/loss", "train/loss", "train/loss_actor")
#: The x-axis: the first of these the run logged (environment frames, DAgger's collected
#: transitions, BC's epochs), else the step.
X_AXES = ("frames", "dagger/transitions", "bc/epoch")


def learning_curve(client, run_id: str, path: Path, title: str) -> Path | None:
    """Plot the run's return (or loss) curves against frames (or epochs, steps) to a PNG.

    Returns None when the run logged none of :data:`CURVES` or :data:`LOSS_CURVES`.
    """
    histories = {key: client.get_metric_history(run_id, key) for key in CURVES}
    histories = {key: h for key, h in histories.items() if h}
    if not histories:
        histories = {key: client.get_metric_history(run_id, key) for key in LOSS_CURVES}
        histories = {key: h for key, h in histories.items() if h}
    if not histories:
        return None
    x_key, x_at = "step", {}
    for key in X_AXES:
        x_at = {m.step: m.value for m in client.get_metric_history(run_id, key)}
        if x_at:
            x_key = key
            break
    # Matplotlib's object interface with the Agg canvas: no pyplot, no global backend.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 4), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for key, history in histories.items():
        points = sorted((m.step, m.timestamp, m.value) for m in history)
        xs = [x_at.get(step, step) for step, _, _ in points]
        axes.plot(
            xs, [value for _, _, value in points], marker="." if len(xs) < 50 else None, label=key
        )
    axes.set_xlabel(x_key)
    axes.set_ylabel("return" if set(histories) & set(CURVES) else "loss")
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png")
    return path
