"""The runs an analysis reads: one final score per finished ``tdimitation fit`` run.

A run counts when it finished (status FINISHED), was recorded by ``tdimitation fit`` (it
has the algorithm tag) and logged its final evaluation (``eval/return_mean`` at the last
step: the deterministic evaluation ``fit`` runs after training). Its score is that final
mean return; ``eval/n_traj`` says over how many episodes it was measured.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tdimitation.errors import TrackingError
from tdimitation.runs import (
    TAG_ALGORITHM,
    TAG_EXPERT_RETURN,
    TAG_RANDOM_RETURN,
    TAG_RECIPE,
    search_runs,
)

FINAL_RETURN = "eval/return_mean"
FINAL_EPISODES = "eval/n_traj"
#: ``--group-by`` values with a meaning of their own; any other is a tag or parameter name.
GROUPINGS = ("algorithm", "recipe")


@dataclass
class RunScore:
    """One finished run's final score and what it is grouped and normalised by.

    Attributes:
        run_id: the MLflow run id.
        group: the label the run is grouped under (its algorithm by default).
        env: the environment id.
        seed: the run's seed ("" when it logged none).
        final_return: the mean return of the final evaluation.
        episodes: the episodes of that evaluation.
        random_return: a random policy's return on the task (None: not measured).
        expert_return: the expert's return (None: not measured).
        experiment: the run's MLflow experiment.
        started: when the run started (seconds since the epoch).
    """

    run_id: str
    group: str
    env: str
    seed: str
    final_return: float
    episodes: int
    random_return: float | None = None
    expert_return: float | None = None
    experiment: str = ""
    started: float = 0.0

    @property
    def normalised(self) -> float | None:
        """``(return - random) / (expert - random)``, None without both references."""
        if self.random_return is None or self.expert_return is None:
            return None
        return (self.final_return - self.random_return) / (self.expert_return - self.random_return)


def _float_tag(tags: dict[str, str], key: str) -> float | None:
    try:
        value = float(tags[key])
    except (KeyError, ValueError):
        return None
    return value if math.isfinite(value) else None


def group_label(run, group_by: str) -> str:
    """The label of ``run`` under ``group_by``: algorithm, recipe, or a tag or parameter."""
    tags, params = run.data.tags, run.data.params
    if group_by == "algorithm":
        return tags.get(TAG_ALGORITHM, "").rsplit(".", 1)[-1]
    if group_by == "recipe":
        recipe = tags.get(TAG_RECIPE, "")
        # recipes/<algorithm>/<name>.yaml -> <algorithm>/<name>: short and unambiguous.
        path = Path(recipe.split(",")[0])
        return f"{path.parent.name}/{path.stem}" if recipe else ""
    value = tags.get(group_by, params.get(group_by))
    return "" if value is None else str(value)


def find_scores(
    client,
    experiments: Sequence[str] = (),
    recipe: str | None = None,
    tags: Sequence[str] = (),
    group_by: str = "algorithm",
    limit: int = 10_000,
) -> list[RunScore]:
    """The final scores of the finished fit runs that match the filters.

    Args:
        client: an ``MlflowClient``.
        experiments: experiment names (all when empty).
        recipe: a recipe file or part of its path.
        tags: ``KEY=VALUE`` tag filters.
        group_by: ``algorithm``, ``recipe``, or a tag or parameter name whose value labels
            the groups.
        limit: at most this many runs are read (newest first).

    Raises:
        TrackingError: an unknown experiment, a bad filter, or no run matches (the
            message says what was searched and how to list the runs).
    """
    runs, names = search_runs(client, experiments, recipe, tags, limit)
    scores = []
    for run in runs:
        metrics, run_tags = run.data.metrics, run.data.tags
        if run.info.status != "FINISHED" or TAG_ALGORITHM not in run_tags:
            continue
        if FINAL_RETURN not in metrics:
            continue
        label = group_label(run, group_by)
        if not label:
            continue
        params = run.data.params
        scores.append(
            RunScore(
                run_id=run.info.run_id,
                group=label,
                env=params.get("env_id", params.get("env", "")),
                seed=params.get("seed", ""),
                final_return=float(metrics[FINAL_RETURN]),
                episodes=int(metrics.get(FINAL_EPISODES, 0)),
                random_return=_float_tag(run_tags, TAG_RANDOM_RETURN),
                expert_return=_float_tag(run_tags, TAG_EXPERT_RETURN),
                experiment=names.get(run.info.experiment_id, ""),
                started=(run.info.start_time or 0) / 1000,
            )
        )
    if not scores:
        searched = [
            f"experiment {', '.join(experiments)}" if experiments else "all experiments",
            *([f"recipe {recipe}"] if recipe else []),
            *[f"tag {t}" for t in tags],
            *([f"a value of {group_by!r}"] if group_by not in GROUPINGS else []),
        ]
        raise TrackingError(
            f"no finished fit run with a final evaluation matches ({'; '.join(searched)}) in "
            f"{client.tracking_uri}; `tdimitation runs` lists the runs (pass --data-dir or "
            "set MLFLOW_TRACKING_URI for another store)"
        )
    return scores


__all__ = ["FINAL_RETURN", "GROUPINGS", "RunScore", "find_scores", "group_label"]
