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

A Minari dataset directory is recognised too and read with
:func:`tdimitation.data.minari.load_minari` (needs ``pip install 'tdimitation[minari]'``).

Conversion goes through pyarrow buffers in bulk: no Python loop over rows or episodes
(only the legacy pickle, a Python list of episode objects, is gathered per episode).
A file or dataset that holds no trajectories is reported as empty (a ``TrajectoryError``),
not as corrupted.

The code lives in private modules: ``_hf`` (the ``datasets`` directories), ``_legacy``
(``imitation``'s ``.npz`` and pickles) and ``_files`` (what they share); this module is
the public entry point.

Overwrite policy of :func:`save_trajectories` (there is no ``overwrite`` flag): an
existing trajectory dataset at ``path`` (ours or ``imitation``'s, also one whose metadata
is damaged) or an empty directory is replaced atomically; anything else (a regular file,
a non-empty directory that is not a trajectory dataset, another kind of ``datasets``
directory) is refused and left alone, because deleting it could destroy unrelated data.

Dict observations are stored as a struct column (``imitation`` 1.0.1 refuses to write
``DictObs`` to this format, so such files load here but not in ``imitation``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tensordict import TensorDict, TensorDictBase

from tdimitation.data import minari as _minari
from tdimitation.data._files import PathLike, _missing, _one_line
from tdimitation.data._hf import (
    _DICT_FILE,
    _INFO_FILE,
    _REQUIRED_COLUMNS,
    _STATE_FILE,
    FORMAT_NAME,
    FORMAT_VERSION,
    TRUNCATED_INFO,
    _our_metadata,
    _read_info,
    load_hf,
    save_hf,
)
from tdimitation.data._legacy import load_npz, load_pkl
from tdimitation.errors import TrajectoryFileError

#: Names returned by :func:`trajectory_format`.
FORMATS = ("tdimitation", "imitation-hf", "imitation-npz", "imitation-pkl", "minari")


def trajectory_format(path: PathLike) -> str:
    """Identify the format of a trajectory file or directory.

    Args:
        path: a dataset directory, an ``.npz`` file or a pickle file.

    Returns:
        ``"tdimitation"`` (written by :func:`save_trajectories`), ``"imitation-hf"`` (a
        ``datasets`` directory written by ``imitation``), ``"imitation-npz"`` or
        ``"imitation-pkl"`` (``imitation``'s legacy files) or ``"minari"`` (a Minari
        dataset directory).

    Raises:
        TrajectoryFileError: the path is missing, corrupted or of no known format.
    """
    path = Path(path)
    if not path.exists():
        raise _missing(path)
    if path.is_dir():
        if _minari.is_minari_dataset(path):
            return "minari"
        if not (path / _STATE_FILE).is_file() and not (path / _INFO_FILE).is_file():
            if (path / _DICT_FILE).is_file():
                raise TrajectoryFileError(
                    f"{path} is a DatasetDict (several splits), not one trajectory dataset; "
                    "pass the directory of one split"
                )
            raise TrajectoryFileError(
                f"{path} is a directory but not a trajectory dataset (no {_STATE_FILE}); "
                "pass a directory written by save_trajectories or imitation's serialize.save, "
                "or a Minari dataset directory"
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
        a Minari dataset: those of :func:`tdimitation.data.minari.minari_metadata`. For
        other formats only ``{"format": <name>}``.
    """
    path = Path(path)
    fmt = trajectory_format(path)
    if fmt == "minari":
        return _minari.minari_metadata(path)
    if fmt != "tdimitation":
        return {"format": fmt}
    meta = dict(_our_metadata(_read_info(path)) or {})
    meta["format"] = fmt
    return meta


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
    return save_hf(Path(path), trajectories, metadata, env_id)


# --------------------------------------------------------------------------- loading


def load_trajectories(path: PathLike, *, allow_pickle: bool = False) -> TensorDict:
    """Load a trajectory file as a flat trajectory set.

    Reads datasets written by :func:`save_trajectories`, ``imitation``'s HuggingFace
    datasets, its legacy ``.npz`` files, (with ``allow_pickle=True``) its legacy
    pickles, and Minari dataset directories (see :mod:`tdimitation.data.minari`).
    Episode ids are ``0..n-1`` in file order; rewards are float32 ``[N, 1]`` (absent
    for reward-free files). How an episode ended: ``terminal`` without
    ``TimeLimit.truncated`` in the last step's info means terminated; the truncation
    flag means truncated; ``terminal=False`` (a fragment) also means truncated. The
    ``.npz`` format keeps its infos pickled, so there every terminal episode loads as
    terminated. Minari datasets keep their own termination and truncation flags.

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
        TrajectoryError: the content is empty or malformed (NaN/inf, misaligned
            lengths, ...).
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
        return load_hf(path)
    if fmt == "imitation-npz":
        return load_npz(path)
    if fmt == "minari":
        return _minari.load_minari(path)
    if not allow_pickle:
        raise TrajectoryFileError(
            f"{path} is a pickle file, and loading pickles can run arbitrary code; pass "
            "allow_pickle=True (CLI: --allow-pickle) only if you trust the file"
        )
    return load_pkl(path)


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
