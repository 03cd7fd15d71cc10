"""HuggingFace ``datasets`` trajectory directories in imitation's layout (not public API).

The layout and the overwrite policy are described in :mod:`tdimitation.data.storage`;
:func:`tdimitation.data.storage.save_trajectories` and ``load_trajectories`` are the
public entry points. Conversion goes through pyarrow buffers in bulk: no Python loop over
rows or episodes.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from tensordict import TensorDict, TensorDictBase

from tdimitation.data._files import (
    TensorTree,
    Tree,
    _as_tree,
    _assemble,
    _corrupted,
    _empty,
    _episode_layout,
    _imitation_endings,
    _key_tuple,
    _one_line,
    _replace_dir,
    _to_numpy,
)
from tdimitation.data.trajectory import ACTION, OBS, REWARD, check_trajectories
from tdimitation.errors import TrajectoryError, TrajectoryFileError

FORMAT_NAME = "tdimitation"
FORMAT_VERSION = 1

TRUNCATED_INFO = '{"TimeLimit.truncated": true}'
_TRUNCATED_RE = r'"TimeLimit\.truncated"\s*:\s*true\b'
_REQUIRED_COLUMNS = ("obs", "acts", "terminal")
# datasets' file names (datasets.config.DATASET_STATE_JSON_FILENAME etc.), spelled out so
# that trajectory_format() does not import datasets (~1 s).
_STATE_FILE = "state.json"
_INFO_FILE = "dataset_info.json"
_DICT_FILE = "dataset_dict.json"


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


# --------------------------------------------------------------------------- encoding


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


def _encode_column(value: TensorTree, offsets: np.ndarray, key: Any) -> pa.Array:
    """One list (one row per episode) per leaf; dicts (nested TensorDicts) become structs."""
    if isinstance(value, dict):
        names = list(value)
        fields = [_encode_column(value[n], offsets, (*_key_tuple(key), n)) for n in names]
        return pa.StructArray.from_arrays(fields, names=names)
    return _list_array(offsets, _encode_rows(_to_numpy(value, key)))


def _build_table(trajectories: TensorDictBase) -> tuple[pa.Table, int]:
    """The imitation-layout arrow table of a checked trajectory set."""
    layout = _episode_layout(trajectories)
    n_rows = trajectories.shape[0]
    n_eps = layout.n_episodes
    terminated = layout.terminated[layout.last]
    truncated = layout.truncated[layout.last]
    # SB3 convention: TimeLimit.truncated = truncated and not terminated.
    flag_truncated = (truncated & ~terminated).numpy()
    info_choice = np.zeros(n_rows, dtype=np.int8)
    info_choice[layout.last.numpy()[flag_truncated]] = 1
    infos = pc.take(pa.array(["{}", TRUNCATED_INFO]), pa.array(info_choice))
    act_offsets, obs_offsets = layout.act_offsets, layout.obs_offsets

    columns: dict[str, pa.Array] = {
        "obs": _encode_column(layout.observations, obs_offsets, OBS),
        "acts": _encode_column(_as_tree(trajectories.get(ACTION), ACTION), act_offsets, ACTION),
        "infos": _list_array(act_offsets, infos),
        # Every episode of a trajectory set ends with done; truncation is in the infos.
        "terminal": pa.array(np.ones(n_eps, dtype=bool)),
    }
    if REWARD in trajectories.keys(include_nested=True):
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


def save_hf(
    path: Path,
    trajectories: TensorDictBase,
    metadata: Mapping[str, Any] | None,
    env_id: str | None,
) -> Path:
    """Write the dataset directory (see ``storage.save_trajectories`` for the contract)."""
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
        _replace_dir(tmp, path)
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


def _has_no_shards(path: Path) -> bool:
    """Whether the dataset's ``state.json`` lists no data files (a dataset of zero rows)."""
    try:
        state = json.loads((path / _STATE_FILE).read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return False  # unreadable: let datasets report the damage
    return isinstance(state, dict) and state.get("_data_files") == []


def load_hf(path: Path) -> TensorDict:
    import datasets

    source = f"trajectories in {path}"
    if _has_no_shards(path):
        # datasets cannot open a dataset saved without rows (imitation writes one for an
        # empty trajectory list): it would fail with an IndexError, reported as corrupted.
        raise _empty(path)
    try:
        ds = datasets.load_from_disk(str(path))
        if not isinstance(ds, datasets.Dataset):
            raise TrajectoryFileError(
                f"{path} is a DatasetDict (several splits), not one trajectory dataset; "
                "pass the directory of one split"
            )
        table = ds.data.table
        if table.num_rows == 0:
            raise _empty(path)
        columns = {name: table.column(name).combine_chunks() for name in table.column_names}
    except (TrajectoryFileError, TrajectoryError):
        raise
    except Exception as exc:  # datasets/pyarrow raise many types for damaged files
        raise _corrupted(path, exc) from exc
    lacking = [c for c in _REQUIRED_COLUMNS if c not in columns]
    if lacking:
        raise TrajectoryFileError(
            f"{path} lacks the trajectory columns {lacking} (has {sorted(columns)}); it is "
            "not a trajectory dataset"
        )
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
    return _assemble(
        obs,
        obs_offsets,
        acts,
        act_offsets,
        rews,
        *_imitation_endings(terminal, truncated_info),
        source,
    )
