"""Trajectory sets: flat TED TensorDicts with an ``episode`` id per row.

A *trajectory set* holds one row per transition, rows of one episode contiguous and in time
order (see ``docs/architecture.md``):

============================  ============================================================
key                           meaning
============================  ============================================================
``observation``               observation before the action (nested keys for dict spaces)
``action``                    action taken (discrete actions are int64 indices)
``("next", "observation")``   observation after the action; the true final one at the end
``("next", "reward")``        float32 ``[..., 1]`` (absent for reward-free demonstrations)
``("next", "terminated")``    bool ``[..., 1]``
``("next", "truncated")``     bool ``[..., 1]``
``("next", "done")``          bool ``[..., 1]``, terminated or truncated
``episode``                   int64 id of the trajectory the row belongs to
============================  ============================================================

Expert demonstrations, generator rollouts, DAgger rounds and preference fragments all use
this layout, so every helper here works on all of them. The helpers are vectorised: none
loops over rows in Python.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from tensordict import TensorDictBase
from torchrl.data import Composite

from tdimitation.errors import HorizonError, SpaceMismatchError, TrajectoryError

OBS = "observation"
ACTION = "action"
NEXT_OBS = ("next", "observation")
REWARD = ("next", "reward")
TERMINATED = ("next", "terminated")
TRUNCATED = ("next", "truncated")
DONE = ("next", "done")
EPISODE = "episode"
MASK = "mask"

REQUIRED_KEYS = (OBS, ACTION, NEXT_OBS, DONE, EPISODE)


def episode_runs(trajectories: TensorDictBase) -> tuple[torch.Tensor, torch.Tensor]:
    """Start row and length of each episode of a flat trajectory set.

    Returns:
        ``(starts, lengths)``, two int64 tensors with one entry per episode, in row order.
    """
    episode = trajectories.get(EPISODE).reshape(-1)
    n_rows = episode.numel()
    if n_rows == 0:
        empty = torch.zeros(0, dtype=torch.int64)
        return empty, empty
    change = torch.nonzero(episode[1:] != episode[:-1]).reshape(-1) + 1
    starts = torch.cat([torch.zeros(1, dtype=torch.int64), change])
    ends = torch.cat([change, torch.tensor([n_rows])])
    return starts, ends - starts


def episode_lengths(trajectories: TensorDictBase) -> torch.Tensor:
    """Number of transitions in each episode, in row order."""
    return episode_runs(trajectories)[1]


def num_episodes(trajectories: TensorDictBase) -> int:
    """Number of episodes in a flat trajectory set."""
    return int(episode_runs(trajectories)[0].numel())


def _row_episode_index(lengths: torch.Tensor) -> torch.Tensor:
    """Position (0..n_episodes-1) of the episode each row belongs to."""
    return torch.repeat_interleave(torch.arange(lengths.numel()), lengths)


def split_trajectories(trajectories: TensorDictBase) -> list[TensorDictBase]:
    """Split a flat trajectory set into one ``[T_i]`` TensorDict per episode (views)."""
    lengths = episode_lengths(trajectories)
    if lengths.numel() == 0:
        return []
    return list(trajectories.split(lengths.tolist(), dim=0))


def pad_trajectories(trajectories: TensorDictBase) -> TensorDictBase:
    """Pad a flat trajectory set to ``[n_episodes, T_max]``.

    Padding entries are zero (``False`` for flags) and a boolean ``mask`` key marks the
    real transitions. :func:`flatten_trajectories` inverts this.
    """
    starts, lengths = episode_runs(trajectories)
    if lengths.numel() == 0:
        raise TrajectoryError("cannot pad an empty trajectory set")
    t_max = int(lengths.max())
    steps = torch.arange(t_max)
    mask = steps.unsqueeze(0) < lengths.unsqueeze(1)
    rows = (starts.unsqueeze(1) + steps.unsqueeze(0)).clamp(max=trajectories.shape[0] - 1)
    padded = trajectories[rows]
    padded = padded.masked_fill(~mask, 0)
    padded.set(MASK, mask)
    return padded


def renumber_episodes(trajectories: TensorDictBase, first_id: int = 0) -> TensorDictBase:
    """Give the episodes consecutive ids ``first_id, first_id + 1, ...`` in row order."""
    lengths = episode_lengths(trajectories)
    trajectories.set(EPISODE, _row_episode_index(lengths) + first_id)
    return trajectories


def flatten_trajectories(
    trajectories: TensorDictBase | Sequence[TensorDictBase],
) -> TensorDictBase:
    """Flatten episodes into one trajectory set with episode ids ``0..n-1``.

    Args:
        trajectories: a list of ``[T_i]`` episode TensorDicts, or a padded
            ``[n_episodes, T_max]`` TensorDict with a ``mask`` key (as made by
            :func:`pad_trajectories`).

    Returns:
        A flat ``[sum T_i]`` TensorDict, episodes contiguous and in the given order.
    """
    if isinstance(trajectories, TensorDictBase):
        if trajectories.batch_dims != 2 or MASK not in trajectories.keys():
            raise TrajectoryError(
                "flatten_trajectories expects a list of episodes or a padded [n, T] "
                "TensorDict with a 'mask' key"
            )
        mask = trajectories.get(MASK)
        lengths = mask.sum(-1)
        flat = trajectories.exclude(MASK)[mask]
    else:
        episodes = list(trajectories)
        if not episodes:
            raise TrajectoryError("cannot flatten an empty list of trajectories")
        lengths = torch.tensor([ep.shape[0] for ep in episodes])
        flat = torch.cat([ep.exclude(EPISODE) if EPISODE in ep.keys() else ep for ep in episodes])
    flat.set(EPISODE, _row_episode_index(lengths))
    return flat


def concat_trajectories(sets: Sequence[TensorDictBase]) -> TensorDictBase:
    """Concatenate trajectory sets; episode ids are renumbered ``0..n-1`` across them."""
    if not sets:
        raise TrajectoryError("no trajectory sets to concatenate")
    keys = [set(s.keys(include_nested=True, leaves_only=True)) for s in sets]
    if any(k != keys[0] for k in keys[1:]):
        raise TrajectoryError(
            "trajectory sets have different keys; select a common set of keys first"
        )
    flat = torch.cat(list(sets))
    return renumber_episodes(flat)


def episode_returns(trajectories: TensorDictBase, key=REWARD) -> torch.Tensor:
    """Undiscounted return of each episode (float64), in row order."""
    lengths = episode_lengths(trajectories)
    reward = trajectories.get(key).reshape(trajectories.shape[0], -1)[:, 0].double()
    out = torch.zeros(lengths.numel(), dtype=torch.float64)
    return out.index_add_(0, _row_episode_index(lengths), reward)


def discounted_returns(rewards: torch.Tensor | np.ndarray, gamma: float) -> torch.Tensor:
    """Discounted sum ``sum_t gamma^t r_t`` over the last (time) axis.

    Args:
        rewards: ``[T]`` or ``[B, T]`` rewards; the first step is undiscounted.
        gamma: discount factor in ``[0, 1]``.

    Returns:
        A scalar tensor for 1-D input, else a ``[B]`` tensor (float64).
    """
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"gamma must be in [0, 1], got {gamma}")
    r = torch.as_tensor(rewards, dtype=torch.float64)
    if r.ndim not in (1, 2):
        raise ValueError(f"rewards must be 1-D [T] or 2-D [B, T], got shape {tuple(r.shape)}")
    discount = gamma ** torch.arange(r.shape[-1], dtype=torch.float64)
    return (r * discount).sum(-1)


def _summary(prefix: str, values: torch.Tensor) -> dict[str, float]:
    v = values.double()
    return {
        f"{prefix}_min": float(v.min()),
        f"{prefix}_mean": float(v.mean()),
        # Population std, as imitation's rollout_stats reports it.
        f"{prefix}_std": float(v.std(correction=0)),
        f"{prefix}_max": float(v.max()),
    }


def rollout_stats(trajectories: TensorDictBase) -> dict[str, float]:
    """Summary statistics of a trajectory set.

    Returns:
        ``n_traj``, ``n_transitions``, ``return_{min,mean,std,max}`` (when rewards are
        present), ``len_{min,mean,std,max}``, and ``original_return_*`` when a learned
        reward replaced the environment's (``("next", "original_reward")``).
    """
    lengths = episode_lengths(trajectories)
    if lengths.numel() == 0:
        raise TrajectoryError("cannot compute statistics of an empty trajectory set")
    stats: dict[str, float] = {
        "n_traj": float(lengths.numel()),
        "n_transitions": float(lengths.sum()),
    }
    keys = trajectories.keys(include_nested=True)
    if REWARD in keys:
        stats.update(_summary("return", episode_returns(trajectories)))
    if ("next", "original_reward") in keys:
        original = episode_returns(trajectories, ("next", "original_reward"))
        stats.update(_summary("original_return", original))
    stats.update(_summary("len", lengths))
    return stats


def check_one_horizon(lengths: torch.Tensor, known: int | None, where: str, why: str) -> int | None:
    """The one episode length among ``lengths`` and the ``known`` one (None: none yet).

    The variable-horizon guard of algorithms that learn a reward: episodes of different
    lengths raise :class:`~tdimitation.errors.HorizonError`, saying ``why`` they matter
    and naming ``where`` they were found.
    """
    if lengths.numel() == 0:
        return known
    seen = set(lengths.unique().tolist()) | ({known} - {None})
    if len(seen) > 1:
        raise HorizonError(
            f"episodes of different lengths {sorted(seen)[:6]} in {where}: {why}. Use a "
            "fixed-horizon env (e.g. tdimitation/CartPoleFixed-v1, "
            "tdimitation/LunarLanderFixed-v3, or fixed_horizon=H) or pass "
            "allow_variable_horizon=True if you know why"
        )
    return int(next(iter(seen)))


def check_trajectories(trajectories: TensorDictBase, name: str = "trajectories") -> None:
    """Validate a trajectory set; raise :class:`TrajectoryError` naming the problem.

    Checks: a flat non-empty TensorDict, the required keys, no NaN or inf in floating
    leaves, contiguous episodes, ``done`` set on the last step of every episode and
    nowhere else.
    """
    if not isinstance(trajectories, TensorDictBase):
        raise TrajectoryError(f"{name} must be a TensorDict, got {type(trajectories).__name__}")
    if trajectories.batch_dims != 1:
        raise TrajectoryError(
            f"{name} must be a flat [N] trajectory set, got batch size "
            f"{tuple(trajectories.batch_size)}; use flatten_trajectories() first"
        )
    if trajectories.shape[0] == 0:
        raise TrajectoryError(f"{name} is empty: it holds no transitions")
    keys = set(trajectories.keys(include_nested=True))
    missing = [k for k in REQUIRED_KEYS if k not in keys]
    if missing:
        present = sorted(map(str, keys))
        raise TrajectoryError(f"{name} lacks required keys {missing}; present: {present}")
    for key, value in trajectories.items(include_nested=True, leaves_only=True):
        if value.is_floating_point():
            bad = ~torch.isfinite(value)
            if bad.any():
                rows = bad.reshape(value.shape[0], -1).any(-1).nonzero().reshape(-1)
                raise TrajectoryError(
                    f"{name} has {int(bad.sum())} NaN/inf values in {key!r} "
                    f"(first bad transition: row {int(rows[0])}); remove or repair them"
                )
    starts, lengths = episode_runs(trajectories)
    episode = trajectories.get(EPISODE)
    # Contiguous iff no id starts two runs: a check over the runs, not every row.
    if torch.unique(episode[starts]).numel() != starts.numel():
        raise TrajectoryError(
            f"{name}: the rows of an episode are not contiguous; sort by episode "
            "(rows of one episode together, in time order)"
        )
    done = trajectories.get(DONE).reshape(-1)
    last = starts + lengths - 1
    if not done[last].all():
        bad = int(episode[last[~done[last]][0]])
        raise TrajectoryError(
            f"{name}: episode {bad} does not end with done=True; only complete episodes "
            "belong in a trajectory set (drop the partial one)"
        )
    if int(done.sum()) != starts.numel():
        raise TrajectoryError(
            f"{name}: done=True appears in the middle of an episode; episode ids and "
            "done flags disagree"
        )


def _leaf_spec_shape(spec, batch_dims: int) -> tuple[int, ...]:
    return tuple(spec.shape[batch_dims:])


def check_matches_env(trajectories: TensorDictBase, env, name: str = "trajectories") -> None:
    """Check that observations and actions fit an environment's specs.

    Raises:
        SpaceMismatchError: naming the key, the shape or dtype found and the one expected.
    """
    env_name = getattr(env, "env_id", None) or type(env).__name__
    batch_dims = len(env.batch_size)
    obs_spec = env.observation_spec[OBS]
    if isinstance(obs_spec, Composite):  # dict observations
        obs_leaves = [
            ((OBS,) + (k if isinstance(k, tuple) else (k,)), leaf)
            for k, leaf in obs_spec.items(include_nested=True, leaves_only=True)
        ]
    else:
        obs_leaves = [(OBS, obs_spec)]
    for full_key, spec in obs_leaves + [(ACTION, env.full_action_spec[ACTION])]:
        if full_key not in trajectories.keys(include_nested=True):
            raise SpaceMismatchError(
                f"{name} has no {full_key!r}, which the environment {env_name} produces"
            )
        value = trajectories.get(full_key)
        expected = _leaf_spec_shape(spec, batch_dims)
        found = tuple(value.shape[1:])
        if found != expected:
            raise SpaceMismatchError(
                f"{name}: {full_key!r} has shape {found} per step but the environment "
                f"{env_name} expects {expected}; the data was recorded on a different "
                "environment (pass the matching env id)"
            )
        if value.dtype != spec.dtype:
            raise SpaceMismatchError(
                f"{name}: {full_key!r} has dtype {value.dtype} but the environment "
                f"{env_name} uses {spec.dtype}; convert the data (for example "
                f"td.set({full_key!r}, td.get({full_key!r}).to({spec.dtype})))"
            )


__all__ = [
    "OBS",
    "ACTION",
    "NEXT_OBS",
    "REWARD",
    "TERMINATED",
    "TRUNCATED",
    "DONE",
    "EPISODE",
    "MASK",
    "episode_runs",
    "episode_lengths",
    "num_episodes",
    "split_trajectories",
    "pad_trajectories",
    "flatten_trajectories",
    "concat_trajectories",
    "renumber_episodes",
    "episode_returns",
    "discounted_returns",
    "rollout_stats",
    "check_trajectories",
    "check_matches_env",
]
