"""Trajectory sets on disk: HuggingFace ``datasets`` directories, imitation-compatible.

The on-disk layout is the one ``imitation`` 1.0.1 writes with
``imitation.data.serialize.save``: a ``datasets`` directory with **one row per
trajectory** and the columns

==============  ==========================================================================
column          content
==============  ==========================================================================
``obs``         ``T + 1`` observations (the ``T`` observations, then the final
                ``("next", "observation")``); dict observations are a struct with one
                field per key, each field a list of ``T + 1`` rows
``acts``        ``T`` actions
``infos``       ``T`` JSON strings: ``"{}"``, except ``{"TimeLimit.truncated": true}`` on
                the last step of an episode that was truncated (the SB3/imitation
                convention)
``terminal``    ``True`` for complete episodes
``rews``        ``T`` rewards (only when the trajectory set has ``("next", "reward")``)
==============  ==========================================================================

Per-step values with trailing dimensions are nested lists, one level per dimension,
and keep their dtype (uint8 images stay uint8). tdimitation's own metadata (format
version, env id, user metadata) is JSON in ``DatasetInfo.description``, which
``imitation`` ignores, so ``imitation`` loads our files and we load its files.

:func:`load_trajectories` also reads ``imitation``'s legacy ``.npz`` files and, only
with ``allow_pickle=True``, its legacy pickles (through a restricted unpickler that
needs no ``imitation`` install and refuses every class but trajectories and numpy
arrays).

Conversion goes through pyarrow buffers in bulk: no Python loop over rows or episodes
(only the legacy pickle, a Python list of episode objects, is gathered per episode).

Overwrite policy of :func:`save_trajectories` (there is no ``overwrite`` flag): an
existing trajectory dataset at ``path`` (ours or ``imitation``'s, also one whose metadata
is damaged) or an empty directory is replaced atomically; anything else (a regular file,
a non-empty directory that is not a trajectory dataset, another kind of ``datasets``
directory) is refused and left alone, because deleting it could destroy unrelated data.

Dict observations are stored as a struct column (``imitation`` 1.0.1 refuses to write
``DictObs`` to this format, so such files load here but not in ``imitation``).
"""

from __future__ import annotations

import codecs
import collections
import contextlib
import json
import os
import pickle
import shutil
import tempfile
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from tensordict import TensorDict, TensorDictBase

from tdimitation.data.trajectory import (
    ACTION,
    DONE,
    NEXT_OBS,
    OBS,
    REWARD,
    TERMINATED,
    TRUNCATED,
    check_trajectories,
    episode_runs,
)
from tdimitation.errors import TrajectoryError, TrajectoryFileError

FORMAT_NAME = "tdimitation"
FORMAT_VERSION = 1
#: Names returned by :func:`trajectory_format`.
FORMATS = ("tdimitation", "imitation-hf", "imitation-npz", "imitation-pkl")

TRUNCATED_INFO = '{"TimeLimit.truncated": true}'
_TRUNCATED_RE = r'"TimeLimit\.truncated"\s*:\s*true\b'
_REQUIRED_COLUMNS = ("obs", "acts", "terminal")
# datasets' file names (datasets.config.DATASET_STATE_JSON_FILENAME etc.), spelled out so
# that trajectory_format() does not import datasets (~1 s).
_STATE_FILE = "state.json"
_INFO_FILE = "dataset_info.json"
_DICT_FILE = "dataset_dict.json"

PathLike = str | os.PathLike


# --------------------------------------------------------------------------- helpers


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


@contextlib.contextmanager
def _quiet_progress() -> Iterator[None]:
    """Hide datasets' per-save progress bar without changing the caller's setting."""
    import datasets

    was_disabled = datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if not was_disabled:
            datasets.enable_progress_bars()


# --------------------------------------------------------------------------- format sniffing


def _read_info(path: Path) -> dict:
    info_file = path / _INFO_FILE
    if not info_file.is_file():
        raise _corrupted(path, f"{_INFO_FILE} is missing")
    try:
        info = json.loads(info_file.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise _corrupted(path, exc) from exc
    if not isinstance(info, dict):
        raise _corrupted(path, f"{_INFO_FILE} is not a JSON object")
    return info


def _our_metadata(info: dict) -> dict | None:
    """Our metadata from a ``dataset_info.json`` dict, or None for foreign datasets."""
    description = info.get("description") or ""
    try:
        meta = json.loads(description)
    except ValueError:
        return None
    if isinstance(meta, dict) and meta.get("format") == FORMAT_NAME:
        return meta
    return None


def trajectory_format(path: PathLike) -> str:
    """Identify the format of a trajectory file or directory.

    Args:
        path: a dataset directory, an ``.npz`` file or a pickle file.

    Returns:
        ``"tdimitation"`` (written by :func:`save_trajectories`), ``"imitation-hf"`` (a
        ``datasets`` directory written by ``imitation``), ``"imitation-npz"`` or
        ``"imitation-pkl"`` (``imitation``'s legacy files).

    Raises:
        TrajectoryFileError: the path is missing, corrupted or of no known format.
    """
    path = Path(path)
    if not path.exists():
        raise _missing(path)
    if path.is_dir():
        if not (path / _STATE_FILE).is_file() and not (path / _INFO_FILE).is_file():
            if (path / _DICT_FILE).is_file():
                raise TrajectoryFileError(
                    f"{path} is a DatasetDict (several splits), not one trajectory dataset; "
                    "pass the directory of one split"
                )
            raise TrajectoryFileError(
                f"{path} is a directory but not a trajectory dataset (no {_STATE_FILE}); "
                "pass a directory written by save_trajectories or imitation's serialize.save"
            )
        info = _read_info(path)
        features = info.get("features")
        columns = set(features) if isinstance(features, dict) else set()
        lacking = [c for c in _REQUIRED_COLUMNS if c not in columns]
        if lacking:
            raise TrajectoryFileError(
                f"{path} is a datasets directory but not a trajectory dataset: it lacks the "
                f"columns {lacking} (has {sorted(columns)}); trajectory datasets have "
                "obs, acts, infos, terminal and optionally rews, as save_trajectories writes"
            )
        return "tdimitation" if _our_metadata(info) is not None else "imitation-hf"
    try:
        with path.open("rb") as f:
            head = f.read(4)
    except OSError as exc:
        raise TrajectoryFileError(f"cannot read {path} ({_one_line(exc)}); check it") from exc
    if head[:2] == b"PK":  # .npz files are zip archives
        return "imitation-npz"
    if head[:1] == b"\x80" or path.suffix.lower() in (".pkl", ".pickle"):
        return "imitation-pkl"
    raise TrajectoryFileError(
        f"{path} is not a known trajectory format; expected a datasets directory "
        "(save_trajectories or imitation's serialize.save), an imitation .npz or .pkl file"
    )


def trajectory_metadata(path: PathLike) -> dict[str, Any]:
    """Metadata stored with a trajectory dataset.

    Returns:
        For a tdimitation dataset: ``format``, ``format_version``, ``env_id`` (or
        ``None``), ``n_episodes``, ``n_transitions`` and the user ``metadata`` dict. For
        other formats only ``{"format": <name>}``.
    """
    path = Path(path)
    fmt = trajectory_format(path)
    if fmt != "tdimitation":
        return {"format": fmt}
    meta = dict(_our_metadata(_read_info(path)) or {})
    meta["format"] = fmt
    return meta


# --------------------------------------------------------------------------- encoding


def _to_numpy(value: torch.Tensor, key: Any) -> np.ndarray:
    if value.dtype in (torch.bfloat16, torch.complex32) or value.is_complex():
        raise TrajectoryError(
            f"{key!r} has dtype {value.dtype}, which the dataset format cannot hold; cast it "
            "to float32 before saving"
        )
    return value.detach().cpu().contiguous().numpy()


def _encode_rows(values: np.ndarray) -> pa.Array:
    """``[M, *shape]`` array -> arrow array of M rows, one fixed-size list per trailing dim."""
    arr: pa.Array = pa.array(values.reshape(-1))
    for dim in reversed(values.shape[1:]):
        arr = pa.FixedSizeListArray.from_arrays(arr, dim)
    return arr


def _list_array(offsets: np.ndarray, child: pa.Array) -> pa.Array:
    # int32 offsets unless a column has more than 2**31 - 1 rows.
    if offsets[-1] < np.iinfo(np.int32).max:
        return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), child)
    return pa.LargeListArray.from_arrays(pa.array(offsets.astype(np.int64)), child)


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


def _encode_column(value: TensorTree, offsets: np.ndarray, key: Any) -> pa.Array:
    """One list (one row per episode) per leaf; dicts (nested TensorDicts) become structs."""
    if isinstance(value, dict):
        names = list(value)
        fields = [_encode_column(value[n], offsets, (*_key_tuple(key), n)) for n in names]
        return pa.StructArray.from_arrays(fields, names=names)
    return _list_array(offsets, _encode_rows(_to_numpy(value, key)))


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


def _build_table(trajectories: TensorDictBase) -> tuple[pa.Table, int]:
    """The imitation-layout arrow table of a checked trajectory set."""
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
    obs_offsets = act_offsets + np.arange(n_eps + 1)

    keys = set(trajectories.keys(include_nested=True))
    done = trajectories.get(DONE).reshape(n_rows)[last]
    if TRUNCATED in keys:
        truncated = trajectories.get(TRUNCATED).reshape(n_rows)[last]
    else:
        truncated = torch.zeros_like(done)
    if TERMINATED in keys:
        terminated = trajectories.get(TERMINATED).reshape(n_rows)[last]
    else:
        terminated = done & ~truncated
    # SB3 convention: TimeLimit.truncated = truncated and not terminated.
    flag_truncated = (truncated & ~terminated).numpy()
    info_choice = np.zeros(n_rows, dtype=np.int8)
    info_choice[last.numpy()[flag_truncated]] = 1
    infos = pc.take(pa.array(["{}", TRUNCATED_INFO]), pa.array(info_choice))

    columns: dict[str, pa.Array] = {
        "obs": _encode_column(all_obs, obs_offsets, OBS),
        "acts": _encode_column(_as_tree(trajectories.get(ACTION), ACTION), act_offsets, ACTION),
        "infos": _list_array(act_offsets, infos),
        # Every episode of a trajectory set ends with done; truncation is in the infos.
        "terminal": pa.array(np.ones(n_eps, dtype=bool)),
    }
    if REWARD in keys:
        reward = trajectories.get(REWARD)
        if reward.numel() != n_rows:
            raise TrajectoryError(
                f"('next', 'reward') has shape {tuple(reward.shape)}; expected one reward per "
                f"step, shape [{n_rows}, 1]"
            )
        rews = _encode_rows(_to_numpy(reward, REWARD).reshape(-1))
        columns["rews"] = _list_array(act_offsets, rews)
    return pa.table(columns), n_eps


# --------------------------------------------------------------------------- saving


def _is_trajectory_dataset(path: Path) -> bool:
    """A trajectory dataset directory (possibly damaged, so that a save can repair it)."""
    if not ((path / _STATE_FILE).is_file() or (path / _INFO_FILE).is_file()):
        return False
    try:
        info = _read_info(path)
    except TrajectoryFileError:
        return True  # damaged dataset metadata: let the save repair the dataset
    # A readable dataset without the trajectory columns is some other data: not ours to delete.
    features = info.get("features")
    return isinstance(features, dict) and all(c in features for c in _REQUIRED_COLUMNS)


def _fsync_tree(root: Path) -> None:
    """Flush a freshly written directory so the rename publishes complete files."""
    for entry in root.iterdir():
        if entry.is_file():
            fd = os.open(entry, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    _fsync_dir(root)


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


def save_trajectories(
    path: PathLike,
    trajectories: TensorDictBase,
    *,
    metadata: Mapping[str, Any] | None = None,
    env_id: str | None = None,
) -> Path:
    """Save a trajectory set as an imitation-compatible ``datasets`` directory.

    Only the imitation fields are stored: observations (with the final next
    observation), actions, rewards (if present) and how each episode ended. Other keys
    (``("next", "original_reward")``, step counters, collector ids, ...) are not saved.
    An episode that is both terminated and truncated is saved as terminated (SB3's
    ``TimeLimit.truncated`` convention).

    The write is atomic: the dataset is written to a temporary directory beside
    ``path`` and renamed into place; an existing dataset at ``path`` is renamed aside
    first and deleted after the new one is in. If the save fails, the old dataset stays
    loadable and unchanged.

    Args:
        path: target directory. An existing trajectory dataset or empty directory there
            is replaced; any other existing file or directory is refused.
        trajectories: a flat trajectory set (see :mod:`tdimitation.data.trajectory`).
        metadata: JSON-serialisable user metadata, stored with the dataset and returned
            by :func:`trajectory_metadata`.
        env_id: optional id of the environment the data came from.

    Returns:
        The path of the written dataset.

    Raises:
        TrajectoryError: the trajectory set is malformed (empty, NaN/inf, inconsistent
            episodes, observations that do not chain) or the metadata is not JSON.
        TrajectoryFileError: ``path`` holds something that is not a trajectory dataset.
    """
    import datasets

    path = Path(path)
    check_trajectories(trajectories, name="trajectories to save")
    table, n_eps = _build_table(trajectories)
    meta = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "env_id": env_id,
        "n_episodes": n_eps,
        "n_transitions": int(trajectories.shape[0]),
        "metadata": dict(metadata or {}),
    }
    try:
        description = json.dumps(meta, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise TrajectoryError(
            f"metadata is not JSON-serialisable ({_one_line(exc)}); pass plain str, int, "
            "float, bool, list and dict values"
        ) from exc

    if path.is_symlink() or (path.exists() and not path.is_dir()):
        raise TrajectoryFileError(
            f"{path} exists and is not a trajectory dataset; refusing to overwrite it "
            "(choose another path or delete it yourself)"
        )
    if path.is_dir() and any(path.iterdir()) and not _is_trajectory_dataset(path):
        raise TrajectoryFileError(
            f"{path} is a non-empty directory that is not a trajectory dataset; refusing "
            "to overwrite it (choose another path or delete it yourself)"
        )
    parent = path.parent
    parent.mkdir(parents=True, exist_ok=True)

    # A fixed fingerprint: computing one would hash the whole table.
    dataset = datasets.Dataset(
        table, info=datasets.DatasetInfo(description=description), fingerprint=uuid.uuid4().hex
    )
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=parent))
    try:
        with _quiet_progress():
            dataset.save_to_disk(str(tmp))
        _fsync_tree(tmp)
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
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


# --------------------------------------------------------------------------- decoding


def _list_parts(arr: pa.Array) -> tuple[np.ndarray, pa.Array]:
    """Zero-based int64 offsets and the (slice-aware) child values of a list array."""
    offsets = arr.offsets.to_numpy().astype(np.int64)
    return offsets - offsets[0], arr.flatten()


def _decode_rows(arr: pa.Array, name: str) -> np.ndarray:
    """Arrow array of M (possibly nested-list) rows -> numpy ``[M, *shape]`` (maybe read-only)."""
    if arr.null_count:
        raise TrajectoryError(f"column {name!r} has missing (null) values; repair the dataset")
    t = arr.type
    if pa.types.is_fixed_size_list(t):
        inner = _decode_rows(arr.flatten(), name)
        return inner.reshape(len(arr), t.list_size, *inner.shape[1:])
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        # imitation writes trailing dims as variable-length lists; they must be uniform.
        offsets, child = _list_parts(arr)
        sizes = np.diff(offsets)
        if sizes.size and (sizes != sizes[0]).any():
            raise TrajectoryError(
                f"column {name!r} has per-step values of different lengths "
                f"({int(sizes.min())} to {int(sizes.max())}); every step must have one shape"
            )
        inner = _decode_rows(child, name)
        width = int(sizes[0]) if sizes.size else 0
        return inner.reshape(len(arr), width, *inner.shape[1:])
    if pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t):
        return arr.to_numpy(zero_copy_only=False)
    raise TrajectoryFileError(
        f"column {name!r} holds {t}, which is not a numeric trajectory value; the dataset "
        "was not written by save_trajectories or imitation"
    )


Tree = np.ndarray | dict[str, "Tree"]


def _decode_column(arr: pa.Array, name: str) -> tuple[np.ndarray, Tree]:
    """A per-episode column -> (zero-based offsets, per-step values or dict of them)."""
    t = arr.type
    if pa.types.is_struct(t):
        if arr.null_count:
            raise TrajectoryError(f"column {name!r} has missing (null) rows; repair the dataset")
        offsets = None
        values: dict[str, Tree] = {}
        for field, child in zip(t, arr.flatten(), strict=True):
            off, val = _decode_column(child, f"{name}.{field.name}")
            if offsets is not None and not np.array_equal(off, offsets):
                raise TrajectoryError(
                    f"the fields of column {name!r} have different lengths per trajectory; "
                    "every observation key needs T + 1 rows"
                )
            offsets = off
            values[field.name] = val
        if offsets is None:
            raise TrajectoryFileError(f"column {name!r} is an empty struct; repair the dataset")
        return offsets, values
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        if arr.null_count:
            raise TrajectoryError(f"column {name!r} has missing (null) rows; repair the dataset")
        offsets, child = _list_parts(arr)
        return offsets, _decode_rows(child, name)
    raise TrajectoryFileError(
        f"column {name!r} holds {t}, not one list per trajectory; the dataset was not "
        "written by save_trajectories or imitation"
    )


def _map_tree(tree: Tree, fn) -> Any:
    if isinstance(tree, dict):
        return {k: _map_tree(v, fn) for k, v in tree.items()}
    return fn(tree)


def _tensor(values: np.ndarray) -> torch.Tensor:
    # Memory-mapped arrow buffers are read-only; torch wants writable memory.
    if not values.flags.writeable:
        values = values.copy()
    return torch.from_numpy(values)


def _assemble(
    obs: Tree,
    obs_offsets: np.ndarray,
    acts: Tree,
    act_offsets: np.ndarray,
    rews: np.ndarray | None,
    terminal: np.ndarray,
    truncated_info: np.ndarray,
    source: str,
) -> TensorDict:
    """Per-episode arrays -> a checked flat trajectory set (bulk index arithmetic)."""
    n_eps = act_offsets.size - 1
    lengths = np.diff(act_offsets)
    if n_eps == 0:
        raise TrajectoryError(f"{source} holds no trajectories; nothing to load")
    if terminal.shape != (n_eps,):
        raise TrajectoryError(
            f"{source} has {terminal.size} terminal flags for {n_eps} trajectories; "
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

    terminal = terminal.astype(bool)
    truncated_info = truncated_info.astype(bool)
    terminated = np.zeros((n_rows, 1), dtype=bool)
    truncated = np.zeros((n_rows, 1), dtype=bool)
    done = np.zeros((n_rows, 1), dtype=bool)
    terminated[last, 0] = terminal & ~truncated_info
    truncated[last, 0] = truncated_info | ~terminal
    done[last, 0] = True

    nxt: dict[str, Any] = {
        "observation": _map_tree(obs, pick(1)),
        "terminated": torch.from_numpy(terminated),
        "truncated": torch.from_numpy(truncated),
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


def _load_hf(path: Path) -> TensorDict:
    import datasets

    try:
        ds = datasets.load_from_disk(str(path))
        if not isinstance(ds, datasets.Dataset):
            raise TrajectoryFileError(
                f"{path} is a DatasetDict (several splits), not one trajectory dataset; "
                "pass the directory of one split"
            )
        table = ds.data.table
        columns = {name: table.column(name).combine_chunks() for name in table.column_names}
    except TrajectoryFileError:
        raise
    except Exception as exc:  # datasets/pyarrow raise many types for damaged files
        raise _corrupted(path, exc) from exc
    lacking = [c for c in _REQUIRED_COLUMNS if c not in columns]
    if lacking:
        raise TrajectoryFileError(
            f"{path} lacks the trajectory columns {lacking} (has {sorted(columns)}); it is "
            "not a trajectory dataset"
        )
    source = f"trajectories in {path}"
    obs_offsets, obs = _decode_column(columns["obs"], "obs")
    act_offsets, acts = _decode_column(columns["acts"], "acts")
    terminal_col = columns["terminal"]
    if not pa.types.is_boolean(terminal_col.type) or terminal_col.null_count:
        raise TrajectoryFileError(
            f"{path}: column 'terminal' holds {terminal_col.type}, not one bool per "
            "trajectory; the dataset was not written by save_trajectories or imitation"
        )
    terminal = terminal_col.to_numpy(zero_copy_only=False)

    truncated_info = np.zeros(act_offsets.size - 1, dtype=bool)
    infos = columns.get("infos")
    if infos is not None and (pa.types.is_list(infos.type) or pa.types.is_large_list(infos.type)):
        info_offsets, strings = _list_parts(infos)
        if pa.types.is_string(strings.type) or pa.types.is_large_string(strings.type):
            if not np.array_equal(info_offsets, act_offsets):
                raise TrajectoryError(
                    f"{source}: infos and acts have different lengths per trajectory; "
                    "repair or regenerate the file"
                )
            ends = act_offsets[1:]
            has_steps = ends > act_offsets[:-1]
            last_infos = strings.take(pa.array(ends[has_steps] - 1))
            # imitation's infos are jsonpickled dicts. Only the last step's info matters; a
            # regex finds SB3's truncation flag in bulk (no per-episode json.loads) and
            # tolerates strings that are not valid JSON.
            hits = pc.match_substring_regex(last_infos, _TRUNCATED_RE)
            truncated_info[has_steps] = hits.fill_null(False).to_numpy(zero_copy_only=False)

    rews = None
    if "rews" in columns:
        rew_offsets, rews = _decode_column(columns["rews"], "rews")
        if not isinstance(rews, np.ndarray) or not np.array_equal(rew_offsets, act_offsets):
            raise TrajectoryError(
                f"{source}: rews and acts have different lengths per trajectory; repair "
                "or regenerate the file"
            )
    return _assemble(obs, obs_offsets, acts, act_offsets, rews, terminal, truncated_info, source)


def _load_npz(path: Path) -> TensorDict:
    source = f"trajectories in {path}"
    # Open the file ourselves: np.load leaks its handle when the zip is damaged.
    with path.open("rb") as fh:
        try:
            data = np.load(fh, allow_pickle=False)
            files = list(data.files)
        except Exception as exc:
            raise _corrupted(path, exc) from exc
        lacking = [k for k in ("obs", "acts", "terminal", "indices") if k not in files]
        if lacking:
            raise TrajectoryFileError(
                f"{path} lacks the arrays {lacking} (has {sorted(files)}); it is not an "
                "imitation trajectory .npz file"
            )
        try:
            # 'infos' holds pickled dicts: never loaded (allow_pickle=False), so truncation
            # cannot be told apart from termination in this format.
            obs = data["obs"]
            acts = data["acts"]
            terminal = data["terminal"]
            indices = data["indices"]
            rews = data["rews"] if "rews" in files else None
        except ValueError as exc:
            if "allow_pickle" not in str(exc):
                raise _corrupted(path, exc) from exc
            raise TrajectoryFileError(
                f"{path} stores trajectory arrays as pickled objects; only numeric npz "
                "arrays are read (re-save the data with save_trajectories)"
            ) from exc
        except Exception as exc:
            raise _corrupted(path, exc) from exc
    n_eps = terminal.shape[0]
    if indices.ndim != 1 or indices.size != max(n_eps - 1, 0):
        raise TrajectoryError(
            f"{source}: 'indices' has {indices.size} split points for {n_eps} trajectories "
            f"(expected {n_eps - 1}); repair or regenerate the file"
        )
    splits = indices.astype(np.int64)
    act_offsets = np.concatenate([[0], splits, [acts.shape[0]]])
    # Each trajectory has one more observation than actions.
    obs_offsets = np.concatenate([[0], splits + np.arange(1, n_eps), [obs.shape[0]]])
    return _assemble(
        obs,
        obs_offsets,
        acts,
        act_offsets,
        rews,
        terminal,
        np.zeros(n_eps, dtype=bool),
        source,
    )


# --------------------------------------------------------------------------- legacy pickles


_TRAJECTORY_FIELDS = ("obs", "acts", "infos", "terminal", "rews")


class _PickledTrajectory:
    """Stand-in for imitation's ``Trajectory``/``TrajectoryWithRew`` (fields only)."""

    def __new__(cls, *args: Any, **kwargs: Any) -> _PickledTrajectory:
        # Positional fields come from namedtuple-style pickles (old imitation versions);
        # dataclass pickles pass none and set the fields through __setstate__.
        obj = super().__new__(cls)
        obj.__dict__.update(zip(_TRAJECTORY_FIELDS, args, strict=False))
        obj.__dict__.update(kwargs)
        return obj

    def __setstate__(self, state: Any) -> None:
        parts = state if isinstance(state, tuple) else (state,)  # (dict, slots) form too
        for part in parts:
            if isinstance(part, dict):
                self.__dict__.update(part)


class _PickledDictObs:
    """Stand-in for imitation's ``DictObs`` (a dict of arrays in ``_d``)."""

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2:
            state = next((s for s in state if isinstance(s, dict)), {})
        self.__dict__.update(state if isinstance(state, dict) else {})


def _reconstructor(cls: type, base: type, state: Any) -> Any:
    """``copyreg._reconstructor`` limited to the stand-ins (protocol 0/1 pickles)."""
    if cls not in (_PickledTrajectory, _PickledDictObs) or base is not object:
        raise pickle.UnpicklingError(f"refusing to reconstruct {cls!r} from {base!r}")
    return object.__new__(cls)


def _numpy_globals() -> dict[tuple[str, str], Any]:
    reconstruct = np.empty(0).__reduce__()[0]
    scalar = np.float64(0).__reduce__()[0]
    frombuffer = np.arange(1).__reduce_ex__(5)[0]
    allowed: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
    }
    for mod in ("numpy.core", "numpy._core"):
        allowed[(f"{mod}.multiarray", "_reconstruct")] = reconstruct
        allowed[(f"{mod}.multiarray", "scalar")] = scalar
        allowed[(f"{mod}.numeric", "_frombuffer")] = frombuffer
    return allowed


_SAFE_GLOBALS: dict[tuple[str, str], Any] = {
    **{
        ("builtins", t.__name__): t
        for t in (
            object,
            set,
            frozenset,
            complex,
            slice,
            bytearray,
            list,
            dict,
            tuple,
            int,
            float,
            bool,
            str,
            bytes,
        )
    },
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("copyreg", "_reconstructor"): _reconstructor,
    # Python 3 pickles bytes as _codecs.encode(str, "latin1") under protocols 0-2.
    ("_codecs", "encode"): codecs.encode,
}


_PY2_MODULES = {"copy_reg": "copyreg", "__builtin__": "builtins"}


class _TrajectoryUnpickler(pickle.Unpickler):
    """Unpickler that only builds imitation trajectories, numpy arrays and plain data."""

    _numpy = _numpy_globals()

    def find_class(self, module: str, name: str) -> Any:
        if module.startswith("imitation.") or module == "imitation":
            if "Trajectory" in name:
                return _PickledTrajectory
            if name == "DictObs":
                return _PickledDictObs
        # Python 2 names in protocol 0-2 pickles (pickle's fix_imports lives in the
        # find_class this method replaces).
        module = _PY2_MODULES.get(module, module)
        found = self._numpy.get((module, name)) or _SAFE_GLOBALS.get((module, name))
        if found is None:
            raise pickle.UnpicklingError(
                f"the file contains a pickled {module}.{name}, which is not part of an "
                "imitation trajectory"
            )
        return found


def _pickled_obs(obs: Any) -> Tree:
    if isinstance(obs, _PickledDictObs):
        return {k: np.asarray(v) for k, v in getattr(obs, "_d", {}).items()}
    if isinstance(obs, Mapping):
        return {k: np.asarray(v) for k, v in obs.items()}
    return np.asarray(obs)


def _concat_trees(trees: list[Tree]) -> Tree:
    if isinstance(trees[0], dict):
        return {k: _concat_trees([t[k] for t in trees]) for k in trees[0]}
    return np.concatenate(trees, axis=0)


def _load_pkl(path: Path) -> TensorDict:
    source = f"trajectories in {path}"
    try:
        with path.open("rb") as f:
            obj = _TrajectoryUnpickler(f, encoding="latin1").load()
    except pickle.UnpicklingError as exc:
        if "not part of an imitation trajectory" in str(exc):
            raise TrajectoryFileError(
                f"{path}: {exc}; refusing to load it (only imitation trajectory pickles are "
                "read; convert other data with save_trajectories)"
            ) from exc
        raise _corrupted(path, exc) from exc
    except Exception as exc:
        raise _corrupted(path, exc) from exc
    if not isinstance(obj, Sequence) or not all(isinstance(t, _PickledTrajectory) for t in obj):
        raise TrajectoryFileError(
            f"{path} does not hold a list of imitation trajectories; it is not a trajectory pickle"
        )
    if not obj:
        raise TrajectoryError(f"{source} holds no trajectories; nothing to load")
    fields = [t.__dict__ for t in obj]
    lacking = [k for k in ("obs", "acts") if any(k not in f for f in fields)]
    if lacking:
        raise TrajectoryFileError(f"{path}: pickled trajectories lack {lacking}; not loadable")
    # A pickle is a Python list of episode objects, so gathering is per episode here.
    obs_list = [_pickled_obs(f["obs"]) for f in fields]
    acts_list = [np.asarray(f["acts"]) for f in fields]
    lengths = np.array([a.shape[0] for a in acts_list], dtype=np.int64)
    first_obs = [o if isinstance(o, np.ndarray) else next(iter(o.values())) for o in obs_list]
    obs_lengths = np.array([o.shape[0] for o in first_obs], dtype=np.int64)
    act_offsets = np.concatenate([[0], np.cumsum(lengths)])
    obs_offsets = np.concatenate([[0], np.cumsum(obs_lengths)])
    terminal = np.array([bool(f.get("terminal", True)) for f in fields])
    truncated_info = np.array(
        [
            bool(f["infos"][-1].get("TimeLimit.truncated", False))
            if f.get("infos") is not None and len(f["infos"]) and isinstance(f["infos"][-1], dict)
            else False
            for f in fields
        ]
    )
    has_rews = [f.get("rews") is not None for f in fields]
    rews = None
    if all(has_rews):
        rews = np.concatenate([np.asarray(f["rews"]).reshape(-1) for f in fields])
    return _assemble(
        _concat_trees(obs_list),
        obs_offsets,
        np.concatenate(acts_list, axis=0),
        act_offsets,
        rews,
        terminal,
        truncated_info,
        source,
    )


# --------------------------------------------------------------------------- loading


def load_trajectories(path: PathLike, *, allow_pickle: bool = False) -> TensorDict:
    """Load a trajectory file as a flat trajectory set.

    Reads datasets written by :func:`save_trajectories`, ``imitation``'s HuggingFace
    datasets, its legacy ``.npz`` files and (with ``allow_pickle=True``) its legacy
    pickles. Episode ids are ``0..n-1`` in file order; rewards are float32 ``[N, 1]``
    (absent for reward-free files). How an episode ended: ``terminal`` without
    ``TimeLimit.truncated`` in the last step's info means terminated; the truncation
    flag means truncated; ``terminal=False`` (a fragment) also means truncated. The
    ``.npz`` format keeps its infos pickled, so there every terminal episode loads as
    terminated.

    Args:
        path: the dataset directory or file.
        allow_pickle: permit loading a legacy ``.pkl`` file. Pickles can run code when
            loaded by Python's standard unpickler; this one is restricted to trajectory
            and numpy classes, but still only enable it for files you trust.

    Returns:
        A flat ``[N]`` TensorDict with ``observation``, ``action``,
        ``("next", "observation")``, ``("next", "reward")`` (if present),
        ``("next", "terminated"|"truncated"|"done")`` and ``episode``.

    Raises:
        TrajectoryFileError: missing, corrupted or unknown file, a dataset without the
            trajectory columns, or a pickle without ``allow_pickle=True``.
        TrajectoryError: the content is malformed (NaN/inf, misaligned lengths, ...).
    """
    path = Path(path)
    fmt = trajectory_format(path)
    if fmt in ("tdimitation", "imitation-hf"):
        if fmt == "tdimitation":
            meta = _our_metadata(_read_info(path)) or {}
            version = meta.get("format_version", FORMAT_VERSION)
            if not isinstance(version, int) or version > FORMAT_VERSION:
                raise TrajectoryFileError(
                    f"{path} was written in trajectory format version {version}, newer than "
                    f"this tdimitation reads ({FORMAT_VERSION}); upgrade tdimitation"
                )
        return _load_hf(path)
    if fmt == "imitation-npz":
        return _load_npz(path)
    if not allow_pickle:
        raise TrajectoryFileError(
            f"{path} is a pickle file, and loading pickles can run arbitrary code; pass "
            "allow_pickle=True (CLI: --allow-pickle) only if you trust the file"
        )
    return _load_pkl(path)


__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "FORMATS",
    "TRUNCATED_INFO",
    "save_trajectories",
    "load_trajectories",
    "trajectory_format",
    "trajectory_metadata",
]
