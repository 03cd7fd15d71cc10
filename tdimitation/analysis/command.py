"""``tdimitation analyze``: statistics of finished runs, per algorithm x environment.

Reads the runs of the MLflow store (filtered by experiment, recipe and tags, as
``tdimitation runs``), prints a markdown table (runs, evaluation episodes, mean and IQM of
the final return and of the normalised score, each with a stratified-bootstrap 95 %
interval), optionally the probability of improvement of one group over another, and
draws learning curves with 95 % bands. The table (markdown, CSV, JSON) and the plots are
saved to ``--out`` and logged to a run of their own in the MLflow experiment ``analyze``.
See docs/analyze.md.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, NamedTuple

from tdimitation.analysis import DEFAULT_REPS
from tdimitation.errors import TrackingError

#: The MLflow experiment analysis runs are logged to.
ANALYZE_EXPERIMENT = "analyze"
#: Tag of an analysis run: how many fit runs it analysed.
TAG_ANALYSED_RUNS = "tdimitation.analysed_runs"


class Analysis(NamedTuple):
    """What :func:`analyze` computed and wrote.

    Attributes:
        scores: one :class:`~tdimitation.analysis.store.RunScore` per analysed run.
        rows: the table's rows (keys :data:`tdimitation.analysis.table.COLUMNS`).
        improvements: the ``--compare`` rows (P(X > Y) per env).
        notes: what the table leaves blank, and why.
        markdown: the table as printed.
        files: the files written to ``out`` (tables and plots).
        mlflow_run_id: the analysis run in the store (None when not logged).
    """

    scores: list
    rows: list[dict[str, Any]]
    improvements: list[dict[str, Any]]
    notes: list[str]
    markdown: str
    files: list[Path]
    mlflow_run_id: str | None


def analyze(
    client,
    experiments: list[str] | tuple[str, ...] = (),
    recipe: str | None = None,
    tags: list[str] | tuple[str, ...] = (),
    *,
    group_by: str = "algorithm",
    compare: tuple[str, str] | None = None,
    seed: int = 0,
    reps: int = DEFAULT_REPS,
    out: str | Path | None = None,
    curves: bool = True,
    mlflow_experiment: str | None = ANALYZE_EXPERIMENT,
    limit: int = 10_000,
) -> Analysis:
    """Analyse the finished fit runs matching the filters: table, comparison, curves.

    Args:
        client: an ``MlflowClient`` on the store.
        experiments: experiment names (all when empty).
        recipe: a recipe file or part of its path.
        tags: ``KEY=VALUE`` tag filters.
        group_by: ``algorithm``, ``recipe``, or a tag or parameter name labelling groups.
        compare: two group labels X, Y: also P(X > Y) per env they share.
        seed: seed of the bootstrap draws.
        reps: bootstrap replicates.
        out: directory for ``analysis.md|csv|json`` and the plots (None: not saved).
        curves: draw the learning curves.
        mlflow_experiment: log the results to a new run of this experiment (None: not).
        limit: at most this many runs are read (newest first).

    Raises:
        TrackingError: no run matches, an unknown experiment or group, a bad filter.
    """
    from tdimitation.analysis.store import find_scores
    from tdimitation.analysis.table import improvement_rows, markdown, table_rows, write_outputs

    if reps < 100:
        raise TrackingError(f"--reps must be at least 100 for a 95% interval, got {reps}")
    scores = find_scores(client, experiments, recipe, tags, group_by, limit)
    rows, notes = table_rows(scores, seed, reps)
    improvements: list[dict[str, Any]] = []
    if compare is not None:
        labels = sorted({s.group for s in scores})
        unknown = [label for label in compare if label not in labels]
        if unknown:
            raise TrackingError(
                f"--compare {unknown[0]!r} names no group of the matching runs (groups by "
                f"{group_by}: {', '.join(labels)})"
            )
        improvements = improvement_rows(scores, compare[0], compare[1], seed, reps)
        if not improvements:
            notes.append(f"{compare[0]} and {compare[1]} share no env: no P(X > Y)")
    with tempfile.TemporaryDirectory(prefix="tdimitation-analyze-") as scratch:
        target = Path(out) if out is not None else Path(scratch)
        plots = []
        if curves:
            from tdimitation.analysis.curves import learning_curves, plot_curves

            found, curve_notes = learning_curves(client, scores, seed, reps)
            notes += curve_notes
            plots = plot_curves(found, target)
        text = markdown(rows, notes, improvements, group_by)
        settings = {
            "experiments": list(experiments),
            "recipe": recipe,
            "tags": list(tags),
            "group_by": group_by,
            "compare": list(compare) if compare else None,
            "seed": seed,
            "reps": reps,
        }
        files = write_outputs(target, rows, notes, improvements, scores, settings, text)
        files += plots
        run_id = None
        if mlflow_experiment:
            run_id = _log_analysis(client, mlflow_experiment, settings, len(scores), files)
        if out is None:
            files = []
    return Analysis(scores, rows, improvements, notes, text, files, run_id)


def _log_analysis(
    client, experiment: str, settings: dict[str, Any], n_runs: int, files: list[Path]
) -> str:
    """A new run of ``experiment`` holding the analysis' settings, tables and plots."""
    from tdimitation.tracking import make_mlflow_logger

    logger = make_mlflow_logger(
        experiment,
        run_name=f"analyze-{time.strftime('%Y%m%d-%H%M%S')}",
        uri=client.tracking_uri,
        tags={TAG_ANALYSED_RUNS: str(n_runs)},
    )
    try:
        logger.log_hyperparams({k: str(v) for k, v in settings.items()})
        for path in files:
            logger.experiment.log_artifact(
                logger.run_id, str(path), "plots" if path.suffix == ".png" else "tables"
            )
    except BaseException:
        logger.finalize("failed")  # do not leave the run marked RUNNING
        raise
    logger.finalize("success")
    return logger.run_id


# --------------------------------------------------------------- the command
def add_arguments(p: argparse.ArgumentParser) -> None:
    from tdimitation.runs import add_run_filters

    add_run_filters(p)
    p.add_argument("--limit", type=int, default=10_000, help="newest runs read at most")
    p.add_argument(
        "--group-by",
        default="algorithm",
        help="what a table row's group is: algorithm, recipe, or a tag or parameter name",
    )
    p.add_argument(
        "--compare",
        nargs=2,
        metavar=("X", "Y"),
        default=None,
        help="also the probability that a run of group X ends above one of group Y, per env",
    )
    p.add_argument("--out", default=None, help="directory for analysis.md|csv|json and plots")
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap draws")
    p.add_argument("--reps", type=int, default=DEFAULT_REPS, help="bootstrap replicates")
    p.add_argument("--no-curves", action="store_true", help="skip the learning-curve plots")
    p.add_argument(
        "--mlflow-experiment",
        default=ANALYZE_EXPERIMENT,
        help="MLflow experiment the analysis is logged to, as a run of its own",
    )
    p.add_argument("--no-mlflow", action="store_true", help="do not log the analysis to MLflow")
    p.add_argument(
        "--data-dir",
        default=None,
        help="directory of the local MLflow store (default $TDIMITATION_DATA_DIR or "
        "./tdimitation_data; $MLFLOW_TRACKING_URI overrides the store)",
    )


def main(args: argparse.Namespace) -> int:
    """Run ``tdimitation analyze``."""
    from tdimitation.runs import mark_stale_runs, open_client

    if args.limit < 1:
        raise TrackingError(f"--limit must be a positive number, got {args.limit}")
    client = open_client(args.data_dir)
    for run_id in mark_stale_runs(client):
        print(f"marked run {run_id} KILLED: its process is gone", file=sys.stderr)
    result = analyze(
        client,
        args.experiment,
        args.recipe,
        args.tag,
        group_by=args.group_by,
        compare=tuple(args.compare) if args.compare else None,
        seed=args.seed,
        reps=args.reps,
        out=args.out,
        curves=not args.no_curves,
        mlflow_experiment=None if args.no_mlflow else args.mlflow_experiment,
        limit=args.limit,
    )
    print(result.markdown, end="")
    if result.files:
        print(f"wrote {', '.join(str(p) for p in result.files)}", file=sys.stderr)
    if result.mlflow_run_id:
        print(
            f"logged MLflow run {result.mlflow_run_id} (experiment {args.mlflow_experiment!r})",
            file=sys.stderr,
        )
    return 0


__all__ = ["ANALYZE_EXPERIMENT", "Analysis", "add_arguments", "analyze", "main"]
