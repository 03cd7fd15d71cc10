"""One trial of a sweep: a ``tdimitation fit`` of the recipe with the sampled values.

The trial runs :func:`tdimitation.fit.fit_main` in its Ray worker, so its MLflow run
carries what any fit's does (parameters, tags, per-round metrics, final evaluation,
artifacts); ``TrialReport`` nests it under the sweep's run and reports the metric to
Ray Tune after every round (what ASHA early stopping decides on; see
:mod:`tdimitation.sweep.report`). The last report is the
final evaluation.

A trial's run name is fixed by its Ray trial id, so a trial restarted by a resumed sweep
finds its run: a finished one is reported again without training, a run with a
checkpoint continues from it (and in the same MLflow run), and a run that left no
checkpoint is deleted and started afresh.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: Tags of a trial's MLflow run.
TAG_PARENT = "mlflow.parentRunId"
TAG_SWEEP = "tdimitation.sweep"
TAG_PHASE = "tdimitation.sweep.phase"
TAG_TRIAL = "tdimitation.sweep.trial"
TAG_SEED = "tdimitation.sweep.seed"
#: The config key Ray Tune's ``Repeater`` numbers a configuration's repeats with.
REPEAT_KEY = "__trial_index__"
#: Result keys besides the metric: 1 on the report of the final evaluation.
FINAL = "final"
RUN_ID = "mlflow_run_id"


@dataclass(frozen=True)
class TrialSettings:
    """What every trial of one phase of a sweep shares.

    Attributes:
        name: the sweep's name (run names are ``<name>-<trial id>``).
        phase: ``"search"`` or ``"reevaluate"``.
        recipe: the recipe's absolute path.
        keys: the sampled keys with their decoders (:class:`~tdimitation.sweep.space.Parameter`).
        base_seed: the recipe's seed; repeat ``i`` of a configuration uses
            ``base_seed + seed_offset + i``.
        seed_offset: 0 in the search, ``--seeds`` in the re-evaluation (fresh seeds).
        metric: the metric reported to Ray Tune.
        experiment: the MLflow experiment of the trials (the parent run's).
        parent_run_id: the sweep's MLflow run.
        data_dir: the data directory (absolute).
        tracking_uri: the MLflow store.
        cwd: the directory the sweep was started from (relative paths in the recipe).
    """

    name: str
    phase: str
    recipe: str
    keys: tuple
    base_seed: int
    seed_offset: int
    metric: str
    experiment: str
    parent_run_id: str
    data_dir: str
    tracking_uri: str
    cwd: str


def run_trial(config: dict[str, Any], settings: TrialSettings) -> None:
    """Ray Tune's function trainable: one fit of the recipe with ``config``'s values."""
    from ray import tune

    from tdimitation.errors import SweepError
    from tdimitation.fit import fit_main
    from tdimitation.sweep.report import TrialReport

    if os.path.isdir(settings.cwd):  # Ray starts trials in their own directory
        os.chdir(settings.cwd)
    index = int(config.get(REPEAT_KEY, 0))
    seed = settings.base_seed + settings.seed_offset + index
    trial_id = tune.get_context().get_trial_id()
    run_name = f"{settings.name}-{trial_id}"
    argv = ["--config", settings.recipe]
    for param in settings.keys:
        argv += [f"--{param.key}", _as_option(param.decode(config[param.key]))]
    argv += [
        "--model.init_args.seed",
        str(seed),
        "--run.name",
        run_name,
        "--run.experiment",
        settings.experiment,
        "--run.data_dir",
        settings.data_dir,
    ]
    run_dir = Path(settings.data_dir) / "runs" / settings.experiment / run_name
    finished = _previous_attempt(run_dir, settings, argv)
    if finished is None:
        tags = {
            TAG_SWEEP: settings.name,
            TAG_PHASE: settings.phase,
            TAG_TRIAL: trial_id,
            TAG_SEED: str(seed),
        }
        reporter = TrialReport(settings.parent_run_id, tags, settings.metric, tune.report)
        status = fit_main(argv, callbacks=[reporter])
        if status != 0 or reporter.run_id is None:
            raise SweepError(f"the fit of trial {trial_id} stopped (exit status {status})")
        finished = (reporter.run_id, _final_metric(settings, reporter.run_id))
    run_id, value = finished
    tune.report({settings.metric: value, FINAL: 1, RUN_ID: run_id, "seed": seed})


def _as_option(value: Any) -> str:
    import json

    return value if isinstance(value, str) else json.dumps(value)


def _client(settings: TrialSettings):
    from tdimitation.tracking import store_client

    return store_client(settings.tracking_uri)


def _final_metric(settings: TrialSettings, run_id: str) -> float:
    from tdimitation.errors import SweepError

    metrics = _client(settings).get_run(run_id).data.metrics
    if settings.metric not in metrics:
        raise SweepError(
            f"run {run_id} logged no {settings.metric}; choose a metric the recipe's fit logs "
            "(--metric), or set run.eval_episodes > 0 for eval/return_mean"
        )
    return float(metrics[settings.metric])


def _previous_attempt(
    run_dir: Path, settings: TrialSettings, argv: list[str]
) -> tuple[str, float] | None:
    """A restarted trial's earlier run: its result if it finished, else resume or discard it.

    Returns ``(run id, metric)`` of a finished run; otherwise None after adding
    ``--ckpt_path`` to ``argv`` (a checkpoint to continue from) or deleting the run.
    """
    from tdimitation.runrecord import CHECKPOINT, read_run_file

    previous = read_run_file(run_dir)
    if previous is None:
        return None
    client = _client(settings)
    from mlflow.exceptions import MlflowException

    try:
        run = client.get_run(previous["run_id"])
    except MlflowException:
        return None
    if run.info.lifecycle_stage == "deleted":
        return None
    if run.info.status == "FINISHED" and settings.metric in run.data.metrics:
        return run.info.run_id, float(run.data.metrics[settings.metric])
    if (run_dir / CHECKPOINT).is_file():
        argv += ["--ckpt_path", str(run_dir / CHECKPOINT)]
    else:
        client.delete_run(run.info.run_id)
        (run_dir / "run.json").unlink(missing_ok=True)
    return None
