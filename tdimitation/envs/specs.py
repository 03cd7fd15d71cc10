"""Conversion of gymnasium spaces to torchrl specs (project conventions applied)."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import torch
from torchrl.data import Binary, Bounded, Categorical, Composite, MultiCategorical, Unbounded

from tdimitation.errors import EnvCreationError

_NUMPY_TO_TORCH = {
    np.dtype(np.float16): torch.float16,
    np.dtype(np.float32): torch.float32,
    # Observations are stored as float32 (halves memory; networks run in float32), so
    # float64 spaces are cast.
    np.dtype(np.float64): torch.float32,
    np.dtype(np.uint8): torch.uint8,
    np.dtype(np.int8): torch.int8,
    np.dtype(np.int16): torch.int16,
    np.dtype(np.int32): torch.int32,
    np.dtype(np.int64): torch.int64,
    np.dtype(np.bool_): torch.bool,
}


def torch_dtype(dtype: np.dtype) -> torch.dtype:
    """Torch dtype used to store values of a numpy dtype (float64 becomes float32)."""
    try:
        return _NUMPY_TO_TORCH[np.dtype(dtype)]
    except KeyError:
        raise EnvCreationError(f"unsupported space dtype {dtype}") from None


def space_to_spec(space: gym.Space, batch_shape: torch.Size, device=None):
    """Convert a gymnasium space into a torchrl spec with a leading batch shape.

    Discrete spaces become ``Categorical`` int64 indices (not one-hot); MultiDiscrete
    becomes ``MultiCategorical``; Box becomes ``Bounded`` (``Unbounded`` when any bound is
    infinite); Dict becomes a ``Composite``.
    """
    batch_shape = torch.Size(batch_shape)
    if isinstance(space, gym.spaces.Discrete):
        if space.start != 0:
            raise EnvCreationError(
                f"Discrete spaces with start={space.start} are not supported; wrap the env "
                "so actions start at 0"
            )
        return Categorical(int(space.n), shape=batch_shape, dtype=torch.int64, device=device)
    if isinstance(space, gym.spaces.MultiDiscrete):
        nvec = torch.as_tensor(space.nvec, dtype=torch.int64)
        shape = batch_shape + nvec.shape
        return MultiCategorical(
            nvec.expand(shape).clone(), shape=shape, dtype=torch.int64, device=device
        )
    if isinstance(space, gym.spaces.MultiBinary):
        shape = batch_shape + torch.Size(space.shape)
        return Binary(n=int(np.prod(space.shape)), shape=shape, dtype=torch.int8, device=device)
    if isinstance(space, gym.spaces.Box):
        dtype = torch_dtype(space.dtype)
        shape = batch_shape + torch.Size(space.shape)
        low, high = space.low, space.high
        if np.isfinite(low).all() and np.isfinite(high).all():
            low_t = torch.as_tensor(low).to(dtype).expand(shape).clone()
            high_t = torch.as_tensor(high).to(dtype).expand(shape).clone()
            return Bounded(low_t, high_t, shape=shape, dtype=dtype, device=device)
        return Unbounded(shape=shape, dtype=dtype, device=device)
    if isinstance(space, gym.spaces.Dict):
        return Composite(
            {key: space_to_spec(sub, batch_shape, device) for key, sub in space.spaces.items()},
            shape=batch_shape,
            device=device,
        )
    raise EnvCreationError(
        f"unsupported gymnasium space {type(space).__name__}; supported: Box, Discrete, "
        "MultiDiscrete, MultiBinary and Dict of those"
    )
