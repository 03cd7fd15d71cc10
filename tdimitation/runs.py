"""``tdimitation runs``: list and compare training runs from the MLflow store.

Also the store housekeeping every command that opens the store does first: a run whose
process died without closing it (``kill -9``, a power cut) is still RUNNING in MLflow.
``tdimitation fit`` records the process id, its start time and the host as tags when a run
starts; :func:`mark_stale_runs` finds RUNNING runs of this host whose process is gone and
marks them KILLED.

MLflow is imported only when a function here runs, so the command line starts fast.
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import socket
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from tdimitation.errors import TrackingError

# Tags a `tdimitation fit` run carries (see docs/runs.md).
TAG_RECIPE = "tdimitation.recipe"
TAG_ALGORITHM = "tdimitation.algorithm"
TAG_VERSION = "tdimitation.version"
TAG_GIT_COMMIT = "tdimitation.git_commit"
TAG_RUN_DIR = "tdimitation.run_dir"
TAG_RESUMED_FROM = "tdimitation.resumed_from"
TAG_LAST_STEP = "tdimitation.last_step"
TAG_HOST = "tdimitation.host"
TAG_PID = "tdimitation.pid"
TAG_PID_START = "tdimitation.pid_start"
TAG_NOTE = "tdimitation.note"
# The returns a normalised score runs between (random policy 0, expert 1), measured with the
# demonstrations the run learnt from (see tdimitation.data.reference).
TAG_RANDOM_RETURN = "tdimitation.random_return"
TAG_EXPERT_RETURN = "tdimitation.expert_return"

#: Columns of the table and of the CSV export, in order.
COLUMNS = (
    "run_id",
    "experiment",
    "name",
    "algorithm",
    "env",
    "seed",
    "frames",
    "return",
    "time_s",
    "status",
    "started",
)


# ------------------------------------------------------------------ processes
def process_start_time(pid: int) -> str | None:
    """The start time of process ``pid`` (clock ticks since boot), None if unknown.

    With the pid it identifies a process even after the pid is reused. Linux only
    (``/proc``); elsewhere None, and a run is judged by its pid alone.
    """
    fields = _proc_stat(pid)
    return fields[19] if fields is not None and len(fields) > 19 else None


def _proc_stat(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (2nd field) is in parentheses and may hold spaces: split after it.
    return text[text.rfind(")") + 2 :].split()


def process_alive(pid: int, start_time: str | None = None) -> bool:
    """Whether process ``pid`` (started at ``start_time``, when given) still runs here."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, owned by another user
    fields = _proc_stat(pid)
    if fields is None:
        return True
    if fields[0] == "Z":  # a zombie has finished; only its exit status is left
        return False
    return start_time is None or fields[19] == start_time


def process_tags() -> dict[str, str]:
    """Tags that identify this process: host, pid and the pid's start time."""
    tags = {TAG_HOST: socket.gethostname(), TAG_PID: str(os.getpid())}
    start = process_start_time(os.getpid())
    if start is not None:
        tags[TAG_PID_START] = start
    return tags


# ---------------------------------------------------------------------- store
def open_client(data_dir_path: str | os.PathLike | None = None):
    """An ``MlflowClient`` on the default store (see :mod:`tdimitation.tracking`)."""
    from tdimitation.tracking import store_client, tracking_uri

    return store_client(tracking_uri(data_dir_path))


def _all_experiment_ids(client) -> list[str]:
    return [e.experiment_id for e in client.search_experiments(max_results=50_000)]


def mark_stale_runs(client) -> list[str]:
    """Mark KILLED the RUNNING runs of this host whose process is gone; returns their ids.

    Only runs that carry the process tags :func:`process_tags` writes are judged; a run
    of another host is left alone (its process cannot be checked from here).
    """
    ids = _all_experiment_ids(client)
    if not ids:
        return []
    host = socket.gethostname()
    marked = []
    for run in client.search_runs(
        ids, filter_string="attributes.status = 'RUNNING'", max_results=50_000
    ):
        tags = run.data.tags
        if tags.get(TAG_HOST) != host or not tags.get(TAG_PID, "").isdigit():
            continue
        if not process_alive(int(tags[TAG_PID]), tags.get(TAG_PID_START)):
            client.set_tag(run.info.run_id, TAG_NOTE, "its process ended without closing it")
            client.set_terminated(run.info.run_id, "KILLED")
            marked.append(run.info.run_id)
    return marked


def get_run(client, run_id: str):
    """The run ``run_id`` of the store, or a one-line :class:`TrackingError`."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_run(run_id)
    except MlflowException:
        raise TrackingError(
            f"no MLflow run {run_id!r} in {client.tracking_uri}; `tdimitation runs` lists the "
            "runs (pass --data-dir or set MLFLOW_TRACKING_URI for another store)"
        ) from None


def attach_evaluation(
    client, run_id: str, stats: dict[str, float], settings: dict[str, Any], video: Path | None
) -> None:
    """Add a ``tdimitation eval`` result to an existing (training) run.

    The statistics become ``eval_cli/<name>`` metrics at the run's last training step (the
    final evaluation of ``fit`` keeps its ``eval/`` names), the evaluation settings
    ``eval_cli.<name>`` tags, and the video an artifact under ``eval_cli/``.
    """
    from mlflow.entities import Metric, RunTag

    run = get_run(client, run_id)
    step = int(run.data.tags.get(TAG_LAST_STEP, 0))
    now = int(time.time() * 1000)
    metrics = [Metric(f"eval_cli/{k}", float(v), now, step) for k, v in stats.items()]
    tags = [RunTag(f"eval_cli.{k}", str(v)) for k, v in settings.items()]
    client.log_batch(run_id, metrics=metrics, tags=tags)
    if video is not None:
        client.log_artifact(run_id, str(video), "eval_cli")


# -------------------------------------------------------------------- listing
def search(
    client,
    experiments: Sequence[str] = (),
    recipe: str | None = None,
    tags: Sequence[str] = (),
    limit: int = 50,
) -> list[dict[str, Any]]:
    """The newest runs matching the filters, one dict per run with :data:`COLUMNS` keys.

    Args:
        client: an ``MlflowClient``.
        experiments: experiment names (all experiments when empty).
        recipe: a recipe file (matched by its absolute path) or a part of its path.
        tags: ``KEY=VALUE`` filters on run tags.
        limit: at most this many runs, newest first.
    """
    found, names = search_runs(client, experiments, recipe, tags, limit)
    return [_row(run, names) for run in found]


def search_runs(
    client,
    experiments: Sequence[str] = (),
    recipe: str | None = None,
    tags: Sequence[str] = (),
    limit: int = 50,
) -> tuple[list, dict[str, str]]:
    """The newest MLflow runs matching the filters of :func:`search`, and experiment names.

    Returns:
        The runs (``mlflow.entities.Run``, newest first) and a map from experiment id to
        experiment name.
    """
    if experiments:
        found = {name: client.get_experiment_by_name(name) for name in experiments}
        missing = [name for name, exp in found.items() if exp is None]
        if missing:
            names = ", ".join(sorted(e.name for e in client.search_experiments())) or "none"
            raise TrackingError(
                f"no MLflow experiment {missing[0]!r} in {client.tracking_uri} (experiments: "
                f"{names})"
            )
        names = {exp.experiment_id: exp.name for exp in found.values()}
    else:
        names = {e.experiment_id: e.name for e in client.search_experiments(max_results=50_000)}
    if not names:
        return [], names
    runs = client.search_runs(
        list(names),
        filter_string=" and ".join(_filters(recipe, tags)),
        max_results=limit,
        order_by=["attributes.start_time DESC"],
    )
    return list(runs), names


def _quote(value: str) -> str:
    return "'" + value.replace("'", "\\'") + "'"


def _filters(recipe: str | None, tags: Iterable[str]) -> list[str]:
    filters = []
    if recipe:
        if Path(recipe).is_file():
            filters.append(f"tags.`{TAG_RECIPE}` = {_quote(str(Path(recipe).resolve()))}")
        else:
            filters.append(f"tags.`{TAG_RECIPE}` LIKE {_quote('%' + recipe + '%')}")
    for item in tags:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise TrackingError(f"--tag takes KEY=VALUE, got {item!r}")
        filters.append(f"tags.`{key}` = {_quote(value)}")
    return filters


def _row(run, experiment_names: dict[str, str]) -> dict[str, Any]:
    info, data = run.info, run.data
    params, metrics, tags = data.params, data.metrics, data.tags
    end = info.end_time or int(time.time() * 1000)
    frames = metrics.get("frames")
    final_return = metrics.get("eval/return_mean", metrics.get("eval_cli/return_mean"))
    return {
        "run_id": info.run_id,
        "experiment": experiment_names.get(info.experiment_id, info.experiment_id),
        "name": info.run_name or "",
        "algorithm": tags.get(TAG_ALGORITHM, "").rsplit(".", 1)[-1],
        "env": params.get("env_id", params.get("env", "")),
        "seed": params.get("seed", ""),
        "frames": "" if frames is None else int(frames),
        "return": "" if final_return is None else round(final_return, 2),
        "time_s": round((end - info.start_time) / 1000, 1) if info.start_time else "",
        "status": info.status,
        "started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.start_time / 1000))
        if info.start_time
        else "",
    }


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """The rows as an aligned text table with a header line."""
    cells = [list(COLUMNS)] + [[str(row[c]) for c in COLUMNS] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(COLUMNS))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in cells
    )


def write_csv(rows: Sequence[dict[str, Any]], path: str | os.PathLike) -> Path:
    """Write the rows to a CSV file atomically (the old file stays until it is complete)."""
    from tdimitation.utils import atomic_path

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    with atomic_path(path) as tmp:
        tmp.write_text(buffer.getvalue())
    return Path(path)


# --------------------------------------------------------------- the command
def add_run_filters(p: argparse.ArgumentParser) -> None:
    """The options choosing runs: ``--experiment``, ``--recipe``, ``--tag`` (runs, analyze)."""
    p.add_argument(
        "--experiment",
        action="append",
        default=[],
        help="only runs of this MLflow experiment (repeatable; default: all)",
    )
    p.add_argument(
        "--recipe", default=None, help="only runs of this recipe file (or part of its path)"
    )
    p.add_argument(
        "--tag",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="only runs with this tag value (repeatable)",
    )


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_run_filters(p)
    p.add_argument("--limit", type=int, default=50, help="newest runs shown (default: 50)")
    p.add_argument("--csv", default=None, metavar="PATH", help="also write the rows to a CSV file")
    p.add_argument(
        "--data-dir",
        default=None,
        help="directory of the local MLflow store (default $TDIMITATION_DATA_DIR or "
        "./tdimitation_data; $MLFLOW_TRACKING_URI overrides the store)",
    )


def main(args: argparse.Namespace) -> int:
    """Run ``tdimitation runs``."""
    if args.limit < 1:
        raise TrackingError(f"--limit must be a positive number, got {args.limit}")
    client = open_client(args.data_dir)
    for run_id in mark_stale_runs(client):
        print(f"marked run {run_id} KILLED: its process is gone", file=sys.stderr)
    rows = search(client, args.experiment, args.recipe, args.tag, args.limit)
    print(format_table(rows) if rows else "no runs match")
    if args.csv:
        print(f"wrote {len(rows)} runs to {write_csv(rows, args.csv)}")
    return 0


__all__ = [
    "attach_evaluation",
    "format_table",
    "mark_stale_runs",
    "process_alive",
    "search",
    "search_runs",
    "write_csv",
]
