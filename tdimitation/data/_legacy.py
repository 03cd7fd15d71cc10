"""Readers of ``imitation``'s legacy trajectory files: ``.npz`` and pickles (not public API).

``.npz`` files are read without unpickling. Pickles are read only when the caller passes
``allow_pickle=True`` to ``load_trajectories``, and then through a restricted unpickler
that needs no ``imitation`` install and refuses every class but trajectories and numpy
arrays.
"""

from __future__ import annotations

import codecs
import collections
import pickle
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tensordict import TensorDict

from tdimitation.data._files import (
    Tree,
    _assemble,
    _concat_trees,
    _corrupted,
    _empty,
    _imitation_endings,
)
from tdimitation.errors import TrajectoryError, TrajectoryFileError


def load_npz(path: Path) -> TensorDict:
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
    if n_eps == 0:
        raise _empty(path)
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
        *_imitation_endings(terminal, np.zeros(n_eps, dtype=bool)),
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


def load_pkl(path: Path) -> TensorDict:
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
        raise _empty(path)
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
        *_imitation_endings(terminal, truncated_info),
        source,
    )
