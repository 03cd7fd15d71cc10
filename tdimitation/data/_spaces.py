"""Trajectory-set values against gymnasium spaces, for formats that record spaces.

Minari datasets store their observation and action spaces; values read from them are cast
to the dtypes this package's environments return, and values written to them are checked
against the spaces first (not public API).
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import torch

from tdimitation.data._files import Tree
from tdimitation.envs.specs import torch_dtype
from tdimitation.errors import EnvCreationError, SpaceMismatchError, TrajectoryError

SUPPORTED = "Box, Discrete, MultiDiscrete, MultiBinary and Dict of those"


def storage_dtype(space) -> np.dtype:
    """The numpy dtype this package stores values of a (non-Dict) space in."""
    if isinstance(space, gym.spaces.Discrete | gym.spaces.MultiDiscrete):
        return np.dtype(np.int64)
    if isinstance(space, gym.spaces.MultiBinary):
        return np.dtype(np.int8)
    if isinstance(space, gym.spaces.Box):
        try:
            return torch.empty((), dtype=torch_dtype(space.dtype)).numpy().dtype
        except EnvCreationError as exc:
            raise SpaceMismatchError(f"{exc}; supported: {SUPPORTED}") from None
    raise SpaceMismatchError(
        f"the {type(space).__name__} space is not supported; supported: {SUPPORTED}"
    )


def cast_to_space(values: Any, space, what: str) -> Tree:
    """Episode values from Minari -> numpy arrays in this package's dtypes."""
    if isinstance(space, gym.spaces.Dict):
        if not isinstance(values, dict) or set(values) != set(space.spaces):
            raise TrajectoryError(
                f"{what} do not have the keys of their Dict space {sorted(space.spaces)}; "
                "the dataset does not match its own metadata (regenerate it)"
            )
        return {
            k: cast_to_space(values[k], sub, f"{what}[{k!r}]") for k, sub in space.spaces.items()
        }
    return np.asarray(values).astype(storage_dtype(space), copy=False)


def check_against_space(tree: Any, space, what: str) -> None:
    """Shapes (and Discrete ranges) of a trajectory-set entry against a gymnasium space."""
    if isinstance(space, gym.spaces.Dict):
        if not isinstance(tree, dict) or set(tree) != set(space.spaces):
            have = sorted(tree) if isinstance(tree, dict) else "a tensor"
            raise SpaceMismatchError(
                f"{what} has keys {have} but the space is a Dict with keys "
                f"{sorted(space.spaces)}; pass the space the data was collected with"
            )
        for key, sub in space.spaces.items():
            check_against_space(tree[key], sub, f"{what}[{key!r}]")
        return
    if isinstance(tree, dict):
        raise SpaceMismatchError(
            f"{what} is a nested TensorDict but the space is {space}; pass the space the data "
            "was collected with"
        )
    storage_dtype(space)  # refuses unsupported spaces
    shape = tuple(tree.shape[1:])
    if isinstance(space, gym.spaces.Discrete):
        if shape not in ((), (1,)) or tree.is_floating_point():
            raise SpaceMismatchError(
                f"{what} has per-step shape {shape} ({tree.dtype}) but the space is {space}, "
                "which needs one integer index per step"
            )
        low, high = int(space.start), int(space.start + space.n)
        if tree.numel() and (int(tree.min()) < low or int(tree.max()) >= high):
            raise SpaceMismatchError(
                f"{what} has values in [{int(tree.min())}, {int(tree.max())}] outside {space}; "
                "pass the space the data was collected with"
            )
    elif shape != tuple(space.shape):
        raise SpaceMismatchError(
            f"{what} has per-step shape {shape} but the space is {space}; pass the space "
            "the data was collected with"
        )
