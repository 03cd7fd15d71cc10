"""The returns a normalised score runs between: a random policy's (0) and the expert's (1).

When demonstrations are collected from an expert, the expert's mean return is that of the
demonstrations themselves, and a uniformly random policy is run on the same env for as
many episodes. Both are stored in the dataset's metadata (:data:`RANDOM_RETURN`,
:data:`EXPERT_RETURN`), a fit that learns from the dataset records them on its MLflow run,
and ``tdimitation analyze`` normalises final returns with them:
``(return - random) / (expert - random)``.
"""

from __future__ import annotations

import math
from typing import Any

from tensordict import TensorDictBase

from tdimitation.data.rollout import rollout
from tdimitation.data.trajectory import rollout_stats

#: Metadata keys of a trajectory dataset (and :func:`reference_returns`' keys).
RANDOM_RETURN = "random_return"
EXPERT_RETURN = "expert_return"
RANDOM_EPISODES = "random_episodes"


def measure_reference_returns(
    demonstrations: TensorDictBase, env, n_episodes: int, seed: int, progress: bool = False
) -> dict[str, float | int]:
    """The expert's mean return (over ``demonstrations``) and a random policy's on ``env``.

    Args:
        demonstrations: the expert's trajectory set (with ``("next", "reward")``).
        env: the batched torchrl env the demonstrations were collected on (fixed horizon
            and env options included, so both returns are of the same task).
        n_episodes: episodes of the random policy (at least).
        seed: seed of the random policy's action draws.
        progress: show a progress bar of the random policy's episodes.

    Returns:
        ``{"expert_return": ..., "random_return": ..., "random_episodes": ...}``.
    """
    from tdimitation.policies.registry import policy_from_string

    expert = rollout_stats(demonstrations)
    random_policy = policy_from_string("random", env=env, seed=seed)
    bar = "random policy" if progress else False
    randoms = rollout_stats(rollout(random_policy, env, min_episodes=n_episodes, progress=bar))
    return {
        EXPERT_RETURN: float(expert["return_mean"]),
        RANDOM_RETURN: float(randoms["return_mean"]),
        RANDOM_EPISODES: int(randoms["n_traj"]),
    }


def reference_returns(metadata: dict[str, Any] | None) -> dict[str, float] | None:
    """The random and expert returns in a dataset's user metadata, None when absent.

    Datasets collected before these were measured, and datasets of other sources, have
    none; so do datasets whose expert scores no better than a random policy (no scale to
    normalise on).
    """
    metadata = metadata or {}
    try:
        random_return = float(metadata[RANDOM_RETURN])
        expert_return = float(metadata[EXPERT_RETURN])
    except (KeyError, TypeError, ValueError):
        return None
    if not (math.isfinite(random_return) and math.isfinite(expert_return)):
        return None
    if expert_return <= random_return:
        return None
    return {RANDOM_RETURN: random_return, EXPERT_RETURN: expert_return}


def dataset_reference_returns(path: str) -> dict[str, float]:
    """The random and expert returns stored with the trajectory dataset at ``path``.

    For a run that learns from an expert rather than a dataset (DAgger), so that its
    normalised score is computed on the same scale as the runs that learn from the
    expert's demonstrations. ``TrajectoryFileError`` (an ``OSError``) when nothing is at
    ``path``; ``TrajectoryError`` (a ``ValueError``) when the dataset stores no returns.
    """
    from tdimitation.data.storage import trajectory_metadata
    from tdimitation.errors import TrajectoryError

    references = reference_returns(trajectory_metadata(path).get("metadata"))
    if references is None:
        raise TrajectoryError(
            f"the dataset at {path} stores no expert and random returns; give one a "
            "DemonstrationData collected from an expert (under <data_dir>/demos/), or none"
        )
    return references


__all__ = [
    "EXPERT_RETURN",
    "RANDOM_EPISODES",
    "RANDOM_RETURN",
    "dataset_reference_returns",
    "measure_reference_returns",
    "reference_returns",
]
