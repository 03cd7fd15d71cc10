"""Minari datasets recorded locally: read them as trajectory sets, write trajectory sets.

`Minari <https://minari.farama.org>`_ is the Farama Foundation's format for offline RL
data. A dataset lives in ``<root>/<dataset id>/data`` (``metadata.json`` plus an HDF5
file or Arrow directories), where ``<root>`` is ``$MINARI_DATASETS_PATH`` or
``~/.minari/datasets``. This module reads and writes such directories through Minari's
own API; it never downloads anything.

Mapping to the trajectory set (see :mod:`tdimitation.data.trajectory`): each Minari
episode has ``T + 1`` observations and ``T`` actions, rewards, terminations and
truncations. Observation ``t`` becomes row ``t``'s ``observation`` and observation
``t + 1`` its ``("next", "observation")``; the last step's termination and truncation
flags are kept as they are (both may be set). An episode whose last step has neither
flag (Minari allows it for data collected mid-episode) is marked truncated, as
``load_trajectories`` does for ``imitation``'s fragments. Values are cast as the
environments of this package return them: Discrete and MultiDiscrete to int64,
MultiBinary to int8, float64 Box to float32, rewards to float32 ``[N, 1]``; Dict spaces
become nested TensorDicts. Episode infos are not read.

Minari is an optional dependency: ``pip install 'tdimitation[minari]'``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from tensordict import TensorDict, TensorDictBase

from tdimitation.data._files import (
    PathLike,
    Tree,
    _as_tree,
    _assemble,
    _concat_trees,
    _corrupted,
    _empty,
    _episode_layout,
    _map_tree,
    _one_line,
    _replace_dir,
)
from tdimitation.data._spaces import cast_to_space, check_against_space
from tdimitation.data.trajectory import ACTION, OBS, REWARD, check_trajectories
from tdimitation.errors import (
    EnvCreationError,
    SpaceMismatchError,
    TrajectoryError,
    TrajectoryFileError,
)

INSTALL_HINT = "pip install 'tdimitation[minari]'"
_METADATA_FILE = "metadata.json"
_NAMESPACE_FILE = "namespace_metadata.json"
# Minari chooses where a new dataset goes only from $MINARI_DATASETS_PATH; saves point it
# at a private directory for the duration of the write, one save at a time.
_ROOT_LOCK = threading.Lock()


def _import_minari():
    try:
        import minari
    except ImportError as exc:
        raise TrajectoryFileError(
            f"Minari datasets need the minari package ({_one_line(exc)}); {INSTALL_HINT}"
        ) from exc
    return minari


# --------------------------------------------------------------------------- locating


def minari_root() -> Path:
    """The directory Minari keeps local datasets in (``$MINARI_DATASETS_PATH``)."""
    env = os.environ.get("MINARI_DATASETS_PATH")
    return Path(env) if env else Path.home() / ".minari" / "datasets"


def _data_dir(path: Path) -> Path | None:
    """The ``data`` directory of a Minari dataset at ``path`` (or ``path`` itself)."""
    if (path / "data" / _METADATA_FILE).is_file():
        return path / "data"  # Minari's layout; a damaged metadata file is reported later
    try:
        # A bare metadata.json is common; only Minari's names its storage format.
        meta = json.loads((path / _METADATA_FILE).read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return path if isinstance(meta, dict) and "data_format" in meta else None


def is_minari_dataset(path: PathLike) -> bool:
    """Whether ``path`` is a Minari dataset directory (cheap: minari is not imported)."""
    path = Path(path)
    return path.is_dir() and _data_dir(path) is not None


def _not_a_dataset(path: Path) -> TrajectoryFileError:
    return TrajectoryFileError(
        f"{path} is a directory but not a Minari dataset (no data/{_METADATA_FILE}); pass "
        "one dataset's directory, <MINARI_DATASETS_PATH>/<dataset id>, or its id"
    )


def _resolve(dataset: PathLike) -> Path:
    """The ``data`` directory of a dataset given as a directory or a local dataset id."""
    path = Path(dataset)
    if path.is_dir():
        found = _data_dir(path)
        if found is None:
            raise _not_a_dataset(path)
        return found
    if path.exists():
        raise TrajectoryFileError(
            f"{path} is a file, not a Minari dataset; pass the dataset's directory or its id"
        )
    root = minari_root()
    by_id = root / str(dataset)
    if by_id.is_dir():
        found = _data_dir(by_id)
        if found is None:
            raise _not_a_dataset(by_id)
        return found
    raise TrajectoryFileError(
        f"no Minari dataset {str(dataset)!r}: it is neither a directory nor a dataset id "
        f"under {root}; check the id, or set MINARI_DATASETS_PATH to the directory that "
        "holds it (datasets are not downloaded)"
    )


def _read_metadata(data_dir: Path) -> dict:
    try:
        meta = json.loads((data_dir / _METADATA_FILE).read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise _corrupted(data_dir.parent, exc) from exc
    if not isinstance(meta, dict):
        raise _corrupted(data_dir.parent, f"{_METADATA_FILE} is not a JSON object")
    return meta


def minari_metadata(dataset: PathLike) -> dict[str, Any]:
    """Summary of a Minari dataset's metadata, read without importing minari.

    Args:
        dataset: the dataset's directory or its local id.

    Returns:
        ``format`` (``"minari"``), ``dataset_id``, ``env_id`` (or ``None``), ``n_episodes``,
        ``n_transitions`` and ``data_format`` (``"hdf5"``, ``"arrow"`` or ``"parquet"``).
    """
    meta = _read_metadata(_resolve(dataset))
    env_id = None
    if isinstance(meta.get("env_spec"), str):
        try:
            env_id = json.loads(meta["env_spec"]).get("id")
        except (ValueError, AttributeError):
            env_id = None
    return {
        "format": "minari",
        "dataset_id": meta.get("dataset_id"),
        "env_id": env_id,
        "n_episodes": meta.get("total_episodes"),
        "n_transitions": meta.get("total_steps"),
        "data_format": meta.get("data_format"),
    }


# --------------------------------------------------------------------------- loading


def _episodes(dataset, where: Path) -> Iterator[Any]:
    # Storage errors (a truncated HDF5 file, a missing Arrow shard) surface while iterating.
    try:
        yield from dataset.iterate_episodes()
    except (TrajectoryError, TrajectoryFileError):
        raise
    except Exception as exc:
        raise _corrupted(where, exc) from exc


def load_minari(dataset: PathLike) -> TensorDict:
    """Load a local Minari dataset as a flat trajectory set.

    Args:
        dataset: the dataset's directory (``<root>/<dataset id>`` or its ``data``
            subdirectory) or a dataset id under ``$MINARI_DATASETS_PATH``. Nothing is
            downloaded.

    Returns:
        A flat ``[N]`` TensorDict with ``observation``, ``action``,
        ``("next", "observation")``, ``("next", "reward")``,
        ``("next", "terminated"|"truncated"|"done")`` and ``episode`` (ids ``0..n-1`` in
        the dataset's episode order).

    Raises:
        TrajectoryFileError: minari is not installed, the dataset cannot be found, or it
            is not a (readable) Minari dataset.
        TrajectoryError: the dataset is empty or its content is malformed.
        SpaceMismatchError: its spaces are not supported (Tuple, Text, ...).
    """
    data_dir = _resolve(dataset)
    where = data_dir.parent if data_dir.name == "data" else data_dir
    source = f"Minari dataset {where}"
    minari = _import_minari()
    try:
        ds = minari.MinariDataset(data_dir)
    except ImportError as exc:  # the storage backend's package (h5py) is missing
        raise TrajectoryFileError(
            f"{source} cannot be read ({_one_line(exc)}); {INSTALL_HINT}"
        ) from exc
    except Exception as exc:  # minari raises ValueError, KeyError, AssertionError, ...
        raise _corrupted(where, exc) from exc
    obs_space, act_space = ds.observation_space, ds.action_space
    obs_list: list[Tree] = []
    act_list: list[Tree] = []
    rew_list: list[np.ndarray] = []
    term_list: list[np.ndarray] = []
    trunc_list: list[np.ndarray] = []
    # Minari's public API hands out one episode at a time; everything after is bulk.
    for ep in _episodes(ds, where):
        obs_list.append(cast_to_space(ep.observations, obs_space, f"{source}: observations"))
        act_list.append(cast_to_space(ep.actions, act_space, f"{source}: actions"))
        rew_list.append(np.asarray(ep.rewards).reshape(-1))
        term_list.append(np.asarray(ep.terminations, dtype=bool).reshape(-1))
        trunc_list.append(np.asarray(ep.truncations, dtype=bool).reshape(-1))
    if not act_list:
        raise _empty(source)
    act_lengths = np.array([len(r) for r in term_list], dtype=np.int64)
    obs_first = [o if isinstance(o, np.ndarray) else _first_leaf(o) for o in obs_list]
    obs_lengths = np.array([len(o) for o in obs_first], dtype=np.int64)
    act_offsets = np.concatenate([[0], np.cumsum(act_lengths)])
    obs_offsets = np.concatenate([[0], np.cumsum(obs_lengths)])
    rews = np.concatenate(rew_list)
    terminations = np.concatenate(term_list)
    truncations = np.concatenate(trunc_list)
    if rews.shape != terminations.shape or truncations.shape != terminations.shape:
        raise TrajectoryError(
            f"{source} has {rews.size} rewards, {terminations.size} terminations and "
            f"{truncations.size} truncations; they must agree (regenerate the dataset)"
        )
    if (act_lengths == 0).any():
        raise TrajectoryError(
            f"{source}: episode {int(np.flatnonzero(act_lengths == 0)[0])} has no steps; "
            "drop empty episodes from the dataset"
        )
    ends = act_offsets[1:] - 1
    inner = np.ones(terminations.size, dtype=bool)
    inner[ends] = False
    early = inner & (terminations | truncations)
    if early.any():
        episode = int(np.searchsorted(act_offsets, np.flatnonzero(early)[0], side="right") - 1)
        raise TrajectoryError(
            f"{source}: episode {episode} terminates or is truncated before its last step; "
            "each Minari episode must end at its first termination or truncation"
        )
    terminated = terminations[ends]
    # An episode that neither terminated nor was truncated was cut short: truncated.
    truncated = truncations[ends] | ~terminated
    # _assemble refuses observations that do not line up with the actions, by name.
    return _assemble(
        _concat_trees(obs_list),
        obs_offsets,
        _concat_trees(act_list),
        act_offsets,
        rews,
        terminated,
        truncated,
        source,
    )


def _first_leaf(tree: Tree) -> np.ndarray:
    while isinstance(tree, dict):
        tree = next(iter(tree.values()))
    return tree


# --------------------------------------------------------------------------- saving


def _env_spaces(env: Any) -> tuple[Any, Any, Any]:
    """``(env for minari, observation space, action space)`` of an env id or gymnasium env."""
    import gymnasium as gym

    if isinstance(env, str):
        import tdimitation.envs  # noqa: F401  (registers the tdimitation/... ids)

        try:
            spec = gym.spec(env)
            made = gym.make(spec)
        except Exception as exc:  # gymnasium raises its own error types for unknown ids
            raise EnvCreationError(
                f"cannot create environment {env!r} to read its spaces ({_one_line(exc)}); "
                "check the id, or pass observation_space= and action_space="
            ) from exc
        try:
            return spec, made.observation_space, made.action_space
        finally:
            made.close()
    if isinstance(env, gym.Env):
        # An env built outside the registry has no spec; minari then records none.
        return env.spec, env.observation_space, env.action_space
    raise EnvCreationError(
        f"env must be a gymnasium env id or a gymnasium.Env, not {type(env).__name__}"
    )


def _check_dataset_id(dataset_id: str) -> None:
    from minari.dataset.minari_dataset import parse_dataset_id

    try:
        parse_dataset_id(dataset_id)
    except (ValueError, TypeError):
        raise TrajectoryError(
            f"{dataset_id!r} is not a Minari dataset id; ids look like "
            "[namespace/]name-v<version>, e.g. cartpole/expert-v0"
        ) from None


def _numpy_tree(tree: Any, space) -> Tree:
    """Trajectory-set values as numpy arrays in the space's dtype (Discrete: ``[N]``)."""
    import gymnasium as gym

    if isinstance(space, gym.spaces.Dict):
        return {k: _numpy_tree(tree[k], sub) for k, sub in space.spaces.items()}
    values = tree.detach().cpu().numpy()
    if isinstance(space, gym.spaces.Discrete):
        values = values.reshape(values.shape[0])
    return values.astype(space.dtype, copy=False)


def _slice_tree(tree: Tree, start: int, stop: int) -> Tree:
    return _map_tree(tree, lambda v: v[start:stop])


def save_minari(
    trajectories: TensorDictBase,
    dataset_id: str,
    *,
    env: Any = None,
    observation_space: Any = None,
    action_space: Any = None,
    root: PathLike | None = None,
    overwrite: bool = False,
    data_format: str = "hdf5",
    algorithm_name: str | None = None,
    description: str | None = None,
) -> Path:
    """Save a trajectory set as a local Minari dataset.

    Only what Minari stores is written: observations (each episode's ``T`` observations,
    then its final next observation), actions, rewards and the termination and truncation
    flags. Values are stored in the dtypes of the spaces; images are stored losslessly
    (no JPEG encoding). The write is atomic: the dataset is built in a temporary directory
    and renamed into place, and a dataset it replaces (``overwrite=True``) is only deleted
    once the new one is in.

    Args:
        trajectories: a flat trajectory set with ``("next", "reward")``.
        dataset_id: Minari id, ``[namespace/]name-v<version>``.
        env: the environment the data came from: a gymnasium id (recorded, so that
            ``MinariDataset.recover_environment`` works) or a ``gymnasium.Env``. Gives the
            spaces unless ``observation_space``/``action_space`` are passed.
        observation_space: the observation space (required without ``env``).
        action_space: the action space (required without ``env``).
        root: datasets directory; default ``$MINARI_DATASETS_PATH`` or
            ``~/.minari/datasets``.
        overwrite: replace an existing Minari dataset with this id.
        data_format: Minari's storage format: ``"hdf5"`` (needs h5py), ``"arrow"`` or
            ``"parquet"``.
        algorithm_name: recorded in the dataset's metadata.
        description: recorded in the dataset's metadata.

    Returns:
        The dataset's directory, ``<root>/<dataset_id>``.

    Raises:
        TrajectoryFileError: minari is not installed, or a dataset (or something else)
            already exists at the target and ``overwrite`` is false (or it is not a
            Minari dataset).
        TrajectoryError: the trajectory set is malformed, lacks rewards, or the id is
            not a Minari id.
        SpaceMismatchError: the data does not fit the spaces.
        EnvCreationError: ``env`` cannot be created.
    """
    import gymnasium as gym

    minari = _import_minari()
    from minari.data_collector import EpisodeBuffer

    check_trajectories(trajectories, name="trajectories to save")
    trajectories = trajectories.cpu()  # the episode layout indexes with CPU tensors
    if REWARD not in trajectories.keys(include_nested=True):
        raise TrajectoryError(
            "trajectories to save have no ('next', 'reward'); Minari datasets need rewards "
            "(add them, e.g. zeros, if the demonstrations have none)"
        )
    _check_dataset_id(dataset_id)
    env_for_minari = None
    if env is not None:
        env_for_minari, env_obs_space, env_act_space = _env_spaces(env)
        observation_space = env_obs_space if observation_space is None else observation_space
        action_space = env_act_space if action_space is None else action_space
    if observation_space is None or action_space is None:
        raise TrajectoryError(
            "save_minari needs the spaces of the data: pass env= (a gymnasium id or env) "
            "or both observation_space= and action_space="
        )
    for space, name in ((observation_space, "observation_space"), (action_space, "action_space")):
        if not isinstance(space, gym.spaces.Space):
            raise SpaceMismatchError(f"{name} must be a gymnasium space, not {type(space)}")

    root = Path(root) if root is not None else minari_root()
    target = root / dataset_id
    if target.exists() or target.is_symlink():
        if target.is_symlink() or not is_minari_dataset(target):
            raise TrajectoryFileError(
                f"{target} exists and is not a Minari dataset; refusing to overwrite it "
                "(choose another id or delete it yourself)"
            )
        if not overwrite:
            raise TrajectoryFileError(
                f"a Minari dataset {dataset_id!r} already exists at {target}; pass "
                "overwrite=True (CLI: --overwrite) or choose another id or version"
            )

    obs_tree = _as_tree(trajectories.get(OBS), OBS)
    act_tree = _as_tree(trajectories.get(ACTION), ACTION)
    check_against_space(obs_tree, observation_space, "observation")
    check_against_space(act_tree, action_space, "action")
    layout = _episode_layout(trajectories)
    observations = _numpy_tree(layout.observations, observation_space)
    actions = _numpy_tree(act_tree, action_space)
    rewards = trajectories.get(REWARD).reshape(-1).detach().cpu().numpy()
    terminated = layout.terminated.numpy()
    truncated = layout.truncated.numpy()
    act_offsets, obs_offsets = layout.act_offsets.tolist(), layout.obs_offsets.tolist()
    # Minari's public writer takes one buffer per episode; the buffers are views, no copies.
    buffers = [
        EpisodeBuffer(
            id=e,
            observations=_slice_tree(observations, obs_offsets[e], obs_offsets[e + 1]),
            actions=_slice_tree(actions, act_offsets[e], act_offsets[e + 1]),
            rewards=rewards[act_offsets[e] : act_offsets[e + 1]],
            terminations=terminated[act_offsets[e] : act_offsets[e + 1]],
            truncations=truncated[act_offsets[e] : act_offsets[e + 1]],
            infos={},
        )
        for e in range(layout.n_episodes)
    ]

    root.mkdir(parents=True, exist_ok=True)
    tmp_root = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
    try:
        with _ROOT_LOCK, _datasets_path(tmp_root), warnings.catch_warnings():
            # Minari warns about every metadata field left empty (author, e-mail, ...).
            warnings.filterwarnings("ignore", category=UserWarning, module=r"minari\b")
            try:
                minari.create_dataset_from_buffers(
                    dataset_id,
                    buffers,
                    env=env_for_minari,
                    observation_space=observation_space,
                    action_space=action_space,
                    algorithm_name=algorithm_name,
                    description=description,
                    data_format=data_format,
                    jpeg_encoding=False,
                )
            except ImportError as exc:
                raise TrajectoryFileError(
                    f"Minari's {data_format} storage is not installed ({_one_line(exc)}); "
                    f"{INSTALL_HINT}"
                ) from exc
            except ValueError as exc:  # e.g. an unknown data_format
                raise TrajectoryError(
                    f"Minari refused to write {dataset_id!r}: {_one_line(exc)}"
                ) from exc
        target.parent.mkdir(parents=True, exist_ok=True)
        _replace_dir(tmp_root / dataset_id, target)
        _copy_namespace_metadata(tmp_root, root)
    finally:
        shutil.rmtree(tmp_root, ignore_errors=True)
    return target


@contextlib.contextmanager
def _datasets_path(path: Path) -> Iterator[None]:
    """Point ``$MINARI_DATASETS_PATH`` at ``path`` for the duration of a ``with`` block."""
    previous = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = str(path)
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("MINARI_DATASETS_PATH", None)
        else:
            os.environ["MINARI_DATASETS_PATH"] = previous


def _copy_namespace_metadata(tmp_root: Path, root: Path) -> None:
    """Minari's namespace files (written beside a namespaced dataset) for those new in root."""
    for found in tmp_root.rglob(_NAMESPACE_FILE):
        dest = root / found.relative_to(tmp_root)
        if not dest.exists():
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(found, dest)


__all__ = [
    "INSTALL_HINT",
    "is_minari_dataset",
    "load_minari",
    "minari_metadata",
    "minari_root",
    "save_minari",
]
