"""Helpers shared by the trajectory file readers and writers (not public API).

Every reader (HF ``datasets`` directories, ``imitation``'s legacy files, Minari datasets)
gathers per-episode arrays and their offsets, then hands them to :func:`_assemble`, which
builds and checks the flat trajectory set in bulk. Every directory writer publishes its
result with :func:`_replace_dir`, so nothing already on disk is lost when a save fails.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tensordict import TensorDict, TensorDictBase

from tdimitation.data.trajectory import (
    DONE,
    NEXT_OBS,
    OBS,
    TERMINATED,
    TRUNCATED,
    check_trajectories,
    episode_runs,
)
from tdimitation.errors import TrajectoryError, TrajectoryFileError

PathLike = str | os.PathLike


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    if len(text) > 200:
        text = text[:200] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _missing(path: Path) -> TrajectoryFileError:
    msg = f"no trajectory file or dataset at {path}; check the path"
    # A save interrupted between its two renames leaves the old dataset beside the path.
    if path.parent.is_dir():
        leftovers = sorted(path.parent.glob(f".{path.name}.old-*"))
        if leftovers:
            msg += (
                f" (an interrupted save left the previous version at {leftovers[-1]}; "
                "rename it back to recover it)"
            )
    return TrajectoryFileError(msg)


def _corrupted(path: Path, exc: BaseException | str) -> TrajectoryFileError:
    detail = exc if isinstance(exc, str) else _one_line(exc)
    return TrajectoryFileError(
        f"{path} is a corrupted trajectory file ({detail}); regenerate it, or convert the "
        "original again (tdimitation convert / save_trajectories)"
    )


def _empty(where: Any) -> TrajectoryError:
    """The error for a readable file or dataset that holds no trajectories (not corrupted)."""
    return TrajectoryError(
        f"{where} is empty: it holds no trajectories, so there is nothing to load; record "
        "episodes into it first (e.g. tdimitation rollout) or pass another dataset"
    )


def _fsync_tree(root: Path) -> None:
    """Flush a freshly written directory tree so the rename publishes complete files."""
    for folder, _, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(folder, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(folder))


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def _replace_dir(tmp: Path, path: Path) -> None:
    """Publish the finished directory ``tmp`` at ``path``, replacing what is there.

    An existing ``path`` is renamed aside first and deleted only after ``tmp`` is in
    place, so a failure at any point leaves either the old or the new directory at
    ``path`` (or, if the process dies between the renames, the old one beside it, which
    :func:`_missing` points at). ``tmp`` must be on the same file system as ``path``.
    """
    _fsync_tree(tmp)
    parent = path.parent
    if path.exists():
        old = parent / f".{path.name}.old-{uuid.uuid4().hex[:8]}"
        os.rename(path, old)
        try:
            os.rename(tmp, path)
        except BaseException:
            os.rename(old, path)
            raise
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, path)
    _fsync_dir(parent)


# --------------------------------------------------------------------------- encoding


def _to_numpy(value: torch.Tensor, key: Any) -> np.ndarray:
    if value.dtype in (torch.bfloat16, torch.complex32) or value.is_complex():
        raise TrajectoryError(
            f"{key!r} has dtype {value.dtype}, which the dataset format cannot hold; cast it "
            "to float32 before saving"
        )
    return value.detach().cpu().contiguous().numpy()


TensorTree = torch.Tensor | dict[str, "TensorTree"]


def _as_tree(value: Any, key: Any) -> TensorTree:
    """A TensorDict entry as a tensor or a (nested) dict of tensors, keys sorted."""
    if isinstance(value, TensorDictBase):
        names = sorted(value.keys())
        if not names:
            raise TrajectoryError(f"{key!r} is an empty TensorDict; drop it before saving")
        return {n: _as_tree(value.get(n), (*_key_tuple(key), n)) for n in names}
    if not isinstance(value, torch.Tensor):
        raise TrajectoryError(
            f"{key!r} holds {type(value).__name__}, not a tensor; only tensors can be saved "
            "(drop the key before saving)"
        )
    return value


def _key_tuple(key: Any) -> tuple:
    return key if isinstance(key, tuple) else (key,)


def _check_chain(obs: torch.Tensor, nxt: torch.Tensor, inner: torch.Tensor, key: Any) -> None:
    """Within an episode, next observation of row i == observation of row i + 1.

    The format stores each observation once, so anything else would be lost silently.
    Compared in blocks of rows to bound the memory of the comparison (images).
    """
    if obs.shape != nxt.shape or obs.dtype != nxt.dtype:
        raise TrajectoryError(
            f"{key!r} has shape {tuple(obs.shape)} ({obs.dtype}) but its next observation "
            f"{tuple(nxt.shape)} ({nxt.dtype}); both must have the same shape and dtype"
        )
    n = obs.shape[0]
    block = max(1, (1 << 22) // max(1, obs[:1].numel()))
    for start in range(0, n - 1, block):
        stop = min(start + block, n - 1)
        differs = (nxt[start:stop] != obs[start + 1 : stop + 1]).reshape(stop - start, -1)
        if (differs.any(-1) & inner[start:stop]).any():
            raise TrajectoryError(
                f"next observation differs from the next row's observation inside an episode "
                f"(key {key!r}); the trajectory file stores each observation once, so rows "
                "of an episode must be consecutive steps (check episode ids and row order)"
            )


def _obs_column(
    obs: TensorTree, nxt: TensorTree, key: Any, inner: torch.Tensor, obs_pos, final_pos, last
) -> TensorTree:
    """The T + 1 observations of every episode: its T observations, then the final next."""
    if isinstance(obs, dict) or isinstance(nxt, dict):
        if not (isinstance(obs, dict) and isinstance(nxt, dict)) or set(obs) != set(nxt):
            raise TrajectoryError(
                f"{key!r} and its next observation have different keys; both must have "
                "the same structure"
            )
        return {
            k: _obs_column(obs[k], nxt[k], (*_key_tuple(key), k), inner, obs_pos, final_pos, last)
            for k in obs
        }
    _check_chain(obs, nxt, inner, key)
    out = obs.new_empty((obs_pos.numel() + final_pos.numel(), *obs.shape[1:]))
    out.index_copy_(0, obs_pos, obs)
    out.index_copy_(0, final_pos, nxt.index_select(0, last))
    return out


@dataclasses.dataclass(frozen=True)
class _EpisodeLayout:
    """A checked trajectory set regrouped per episode, as the file formats store it."""

    #: ``T + 1`` observations per episode, concatenated (a tensor or a dict of them).
    observations: TensorTree
    #: ``[n_episodes + 1]`` offsets of each episode's actions (rows) and observations.
    act_offsets: np.ndarray
    obs_offsets: np.ndarray
    #: index of the last row of each episode
    last: torch.Tensor
    #: ``[N]`` bool per row (filled in from ``done`` when the set lacks one of the keys)
    terminated: torch.Tensor
    truncated: torch.Tensor

    @property
    def n_episodes(self) -> int:
        return int(self.last.numel())


def _episode_layout(trajectories: TensorDictBase) -> _EpisodeLayout:
    """Per-episode observations (each episode's T observations, then its final next one)."""
    starts, lengths = episode_runs(trajectories)
    n_rows = trajectories.shape[0]
    n_eps = int(lengths.numel())
    ends = starts + lengths  # one past the last row of each episode
    last = ends - 1
    inner = torch.ones(n_rows, dtype=torch.bool)
    inner[last] = False
    # Row i of episode e goes to obs row i + e; episode e's final next obs to ends[e] + e.
    obs_pos = torch.arange(n_rows) + torch.repeat_interleave(torch.arange(n_eps), lengths)
    final_pos = ends + torch.arange(n_eps)
    all_obs = _obs_column(
        _as_tree(trajectories.get(OBS), OBS),
        _as_tree(trajectories.get(NEXT_OBS), NEXT_OBS),
        OBS,
        inner,
        obs_pos,
        final_pos,
        last,
    )
    act_offsets = torch.cat([torch.zeros(1, dtype=torch.int64), ends]).numpy()

    keys = set(trajectories.keys(include_nested=True))
    done = trajectories.get(DONE).reshape(n_rows)
    if TRUNCATED in keys:
        truncated = trajectories.get(TRUNCATED).reshape(n_rows)
    else:
        truncated = torch.zeros_like(done)
    if TERMINATED in keys:
        terminated = trajectories.get(TERMINATED).reshape(n_rows)
    else:
        terminated = done & ~truncated
    return _EpisodeLayout(
        observations=all_obs,
        act_offsets=act_offsets,
        obs_offsets=act_offsets + np.arange(n_eps + 1),
        last=last,
        terminated=terminated,
        truncated=truncated,
    )


# --------------------------------------------------------------------------- decoding


Tree = np.ndarray | dict[str, "Tree"]


def _map_tree(tree: Tree, fn) -> Any:
    if isinstance(tree, dict):
        return {k: _map_tree(v, fn) for k, v in tree.items()}
    return fn(tree)


def _tensor(values: np.ndarray) -> torch.Tensor:
    # Memory-mapped arrow buffers are read-only; torch wants writable memory.
    if not values.flags.writeable:
        values = values.copy()
    return torch.from_numpy(values)


def _concat_trees(trees: list[Tree]) -> Tree:
    if isinstance(trees[0], dict):
        return {k: _concat_trees([t[k] for t in trees]) for k in trees[0]}
    return np.concatenate(trees, axis=0)


def _imitation_endings(
    terminal: np.ndarray, truncated_info: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per-episode ``terminal`` and ``TimeLimit.truncated`` of imitation -> our two flags.

    ``terminal`` without the truncation flag means terminated; the flag means truncated;
    ``terminal=False`` (a fragment) also means truncated.
    """
    terminal = terminal.astype(bool)
    truncated_info = truncated_info.astype(bool)
    return terminal & ~truncated_info, truncated_info | ~terminal


def _assemble(
    obs: Tree,
    obs_offsets: np.ndarray,
    acts: Tree,
    act_offsets: np.ndarray,
    rews: np.ndarray | None,
    terminated: np.ndarray,
    truncated: np.ndarray,
    source: str,
) -> TensorDict:
    """Per-episode arrays -> a checked flat trajectory set (bulk index arithmetic).

    ``terminated`` and ``truncated`` hold one flag per episode, for its last step; every
    episode ends with ``done`` (callers mark episodes that neither terminated nor were
    truncated, such as fragments, as truncated).
    """
    n_eps = act_offsets.size - 1
    lengths = np.diff(act_offsets)
    if n_eps == 0:
        raise _empty(source)
    if terminated.shape != (n_eps,) or truncated.shape != (n_eps,):
        raise TrajectoryError(
            f"{source} has {terminated.size} terminal flags for {n_eps} trajectories; "
            "repair or regenerate the file"
        )
    if (lengths <= 0).any():
        bad = int(np.flatnonzero(lengths <= 0)[0])
        raise TrajectoryError(
            f"{source}: trajectory {bad} has no actions; drop empty trajectories before saving"
        )
    if not np.array_equal(obs_offsets, act_offsets + np.arange(n_eps + 1)):
        raise TrajectoryError(
            f"{source}: observations and actions do not line up; each trajectory needs "
            "T + 1 observations for T actions"
        )
    n_rows = int(act_offsets[-1])
    episode = np.repeat(np.arange(n_eps, dtype=np.int64), lengths)
    obs_index = np.arange(n_rows, dtype=np.int64) + episode  # row i of episode e: obs i + e
    last = act_offsets[1:] - 1

    def pick(offset: int):
        return lambda v: torch.from_numpy(np.take(v, obs_index + offset, axis=0))

    terminated_rows = np.zeros((n_rows, 1), dtype=bool)
    truncated_rows = np.zeros((n_rows, 1), dtype=bool)
    done = np.zeros((n_rows, 1), dtype=bool)
    terminated_rows[last, 0] = terminated.astype(bool)
    truncated_rows[last, 0] = truncated.astype(bool)
    done[last, 0] = True

    nxt: dict[str, Any] = {
        "observation": _map_tree(obs, pick(1)),
        "terminated": torch.from_numpy(terminated_rows),
        "truncated": torch.from_numpy(truncated_rows),
        "done": torch.from_numpy(done),
    }
    if rews is not None:
        if rews.shape[0] != n_rows:
            raise TrajectoryError(
                f"{source} has {rews.shape[0]} rewards for {n_rows} actions; repair or "
                "regenerate the file"
            )
        nxt["reward"] = torch.from_numpy(rews.reshape(n_rows, -1).astype(np.float32))
    acts_t = _map_tree(acts, _tensor)
    first = acts_t
    while isinstance(first, dict):
        first = next(iter(first.values()))
    if first.shape[0] != n_rows:
        raise TrajectoryError(
            f"{source} has {first.shape[0]} actions but its offsets say {n_rows}; repair "
            "or regenerate the file"
        )
    td = TensorDict(
        {
            "observation": _map_tree(obs, pick(0)),
            "action": acts_t,
            "next": nxt,
            "episode": torch.from_numpy(episode),
        },
        batch_size=[n_rows],
    )
    check_trajectories(td, name=source)
    return td
