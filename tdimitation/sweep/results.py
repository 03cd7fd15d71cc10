"""What a sweep leaves: its MLflow run, the best configuration as a recipe, re-evaluation.

The sweep's MLflow run (``sweep-<name>``, in the recipe's experiment) holds the settings as
parameters, the search space as ``space.yaml``, the best configuration (``best.<key>``
parameters, ``best/<metric>``, ``best.yaml``) and the re-evaluation's mean and 95%
bootstrap confidence interval (``reevaluate/*``). Every trial's run is nested under it.
"""

from __future__ import annotations

import copy
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tdimitation.errors import SweepError
from tdimitation.sweep.space import Parameter
from tdimitation.sweep.trial import FINAL, TAG_SWEEP

SWEEP_FILE = "sweep.json"
#: Bootstrap resamples of the re-evaluation's confidence interval.
BOOTSTRAP_RESAMPLES = 10_000


@dataclass
class ParentRun:
    """The sweep's MLflow run."""

    client: Any
    run_id: str

    def finish(self, status: str) -> None:
        """Close the run: ``FINISHED``, ``KILLED`` (interrupted) or ``FAILED``."""
        self.client.set_terminated(self.run_id, status)


def open_parent_run(
    uri: str,
    experiment: str,
    name: str,
    sweep_dir: Path,
    settings: dict[str, Any],
    resuming: bool,
    params: list[Parameter],
) -> ParentRun:
    """Start the sweep's MLflow run, or reopen it when resuming; write ``sweep.json``."""
    import yaml
    from mlflow.exceptions import MlflowException

    from tdimitation.runs import process_tags
    from tdimitation.tracking import make_mlflow_logger, store_client
    from tdimitation.utils import atomic_path

    if resuming:
        saved = json.loads((sweep_dir / SWEEP_FILE).read_text())
        client = store_client(uri)
        try:
            client.get_run(saved["run_id"])
        except MlflowException:
            raise SweepError(
                f"the MLflow run {saved['run_id']} of sweep {name} is not in {uri}; start "
                "another sweep with --name"
            ) from None
        client.update_run(saved["run_id"], status="RUNNING")
        for key, value in process_tags().items():  # this process now runs it
            client.set_tag(saved["run_id"], key, value)
        return ParentRun(client, saved["run_id"])
    # The logger creates the experiment as trials' fits do (same artifact location); made
    # here once so that concurrent trials do not race to create it.
    logger = make_mlflow_logger(
        experiment, run_name=f"sweep-{name}", uri=uri, tags={TAG_SWEEP: name, **process_tags()}
    )
    client, run_id = logger.experiment, logger.run_id
    flat = {f"sweep.{k}": v for k, v in settings.items() if k != "space"}
    logger.log_hyperparams(flat)
    space = {p.key: {p.kind: list(p.values)} for p in params}
    client.log_text(run_id, yaml.safe_dump(space, sort_keys=False), "space.yaml")
    sweep_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(sweep_dir / SWEEP_FILE) as tmp:
        record = {"run_id": run_id, "experiment": experiment, "settings": settings}
        tmp.write_text(json.dumps(record, indent=2) + "\n")
    return ParentRun(client, run_id)


def best_configuration(grid, params: list[Parameter], options) -> dict[str, Any]:
    """The configuration with the best mean final metric over all of its seeds.

    Only configurations whose every seed finished count (a trial stopped early by ASHA,
    or failed, leaves its configuration out).
    """
    groups: dict[str, dict[str, Any]] = {}
    for result in grid:
        metrics = result.metrics or {}
        if result.error is not None or not metrics.get(FINAL):
            continue
        sampled = {p.key: result.config[p.key] for p in params}
        group = groups.setdefault(
            json.dumps(sampled, sort_keys=True, default=str), {"sampled": sampled, "by_seed": {}}
        )
        group["by_seed"][int(metrics["seed"])] = float(metrics[options.metric])
    complete = [g for g in groups.values() if len(g["by_seed"]) >= options.seeds]
    if not complete:
        raise SweepError(
            f"no configuration finished on all {options.seeds} seeds (see the failed trials "
            "above); fix the recipe or the space, or lower --seeds"
        )
    pick = max if options.mode == "max" else min
    best = pick(complete, key=lambda g: sum(g["by_seed"].values()) / len(g["by_seed"]))
    by_seed = dict(sorted(best["by_seed"].items()))
    return {
        "sampled": best["sampled"],
        "values": {p.key: p.decode(best["sampled"][p.key]) for p in params},
        "mean": sum(by_seed.values()) / len(by_seed),
        "by_seed": by_seed,
        "configurations": len(complete),
    }


def write_best_recipe(recipe: dict[str, Any], best: dict[str, Any], path: Path, name: str) -> Path:
    """The recipe with the best configuration's values, written atomically to ``path``."""
    import yaml

    from tdimitation.utils import atomic_path

    tuned = copy.deepcopy(recipe)
    for key, value in best["values"].items():
        node = tuned
        *parents, last = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    header = (
        f"# The best configuration of sweep {name}: mean final metric {best['mean']:.6g} over "
        f"seeds {list(best['by_seed'])}.\n"
    )
    with atomic_path(path) as tmp:
        tmp.write_text(header + yaml.safe_dump(tuned, sort_keys=False))
    return path


def log_best(parent: ParentRun, best: dict[str, Any], recipe: Path, metric: str) -> None:
    """Record the best configuration on the sweep's run."""
    from mlflow.entities import Metric, Param

    existing = parent.client.get_run(parent.run_id).data.params
    params = [
        Param(f"best.{key}", str(value)[:250])
        for key, value in best["values"].items()
        if f"best.{key}" not in existing
    ]
    metrics = [Metric(f"best/{metric}", best["mean"], _now_ms(), 0)]
    parent.client.log_batch(parent.run_id, metrics=metrics, params=params)
    parent.client.log_artifact(parent.run_id, str(recipe))


def reevaluation(grid, options, parent: ParentRun) -> dict[str, Any]:
    """Mean and 95% bootstrap confidence interval of the best configuration on fresh seeds."""
    import numpy as np
    from mlflow.entities import Metric

    finals = {
        int(r.metrics["seed"]): float(r.metrics[options.metric])
        for r in grid
        if r.error is None and (r.metrics or {}).get(FINAL)
    }
    if not finals:
        raise SweepError("no re-evaluation run finished; see the failed trials above")
    values = np.array([finals[s] for s in sorted(finals)])
    low, high = _confidence_interval(values, options.search_seed)
    summary = {
        "seeds": sorted(finals),
        "values": values.tolist(),
        "mean": float(values.mean()),
        "ci_low": low,
        "ci_high": high,
    }
    now = _now_ms()
    parent.client.log_batch(
        parent.run_id,
        metrics=[
            Metric(f"reevaluate/{key}", value, now, 0)
            for key, value in (("mean", summary["mean"]), ("ci_low", low), ("ci_high", high))
        ],
    )
    print(
        f"re-evaluation on {len(values)} fresh seeds {summary['seeds']}: {options.metric} "
        f"{summary['mean']:.4g}, 95% CI [{low:.4g}, {high:.4g}]",
        flush=True,
    )
    if len(values) < options.reevaluate:
        print(
            f"{options.reevaluate - len(values)} re-evaluation runs failed (see above)",
            file=sys.stderr,
        )
    return summary


def _confidence_interval(values, seed: int) -> tuple[float, float]:
    """The mean's 95 % percentile-bootstrap interval, as ``tdimitation analyze`` computes it."""
    import numpy as np

    from tdimitation.analysis.statistics import interval_estimate, mean

    scores = np.asarray(values, dtype=np.float64).reshape(-1, 1)  # [seeds, 1 task]
    _, (low, high) = interval_estimate(
        scores, mean, np.random.default_rng(seed), reps=BOOTSTRAP_RESAMPLES
    )
    return float(low), float(high)


def _now_ms() -> int:
    import time

    return int(time.time() * 1000)
