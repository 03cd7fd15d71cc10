"""Policies for collecting data: wrappers for functions, random and zero policies.

A *policy* is a ``TensorDictModuleBase`` reading ``observation`` and writing ``action``
(discrete actions as int64 indices). Deterministic behaviour is selected with torchrl's
``set_exploration_type(ExplorationType.DETERMINISTIC)``, as for torchrl actors.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from tensordict import TensorDictBase
from tensordict.nn import TensorDictModule, TensorDictModuleBase
from torch import nn
from torchrl.data import Bounded, Categorical, Composite, MultiCategorical, TensorSpec

from tdimitation.errors import PolicyError


def _action_spec(env_or_spec) -> TensorSpec:
    """The unbatched ``action`` spec of an env, or the spec itself."""
    if isinstance(env_or_spec, TensorSpec) and not isinstance(env_or_spec, Composite):
        return env_or_spec
    spec = getattr(env_or_spec, "full_action_spec_unbatched", env_or_spec)
    return spec["action"]


class CallablePolicy(TensorDictModuleBase):
    """Wrap a plain ``observation -> action`` callable working on numpy batches.

    The callable receives a numpy array ``[B, *obs_shape]`` (a dict of arrays for dict
    observations) and returns a numpy array or tensor of ``B`` actions, as ``imitation``
    callables do.

    Args:
        fn: the callable.
        action_dtype: dtype of the written actions (from the env's action spec).
    """

    def __init__(self, fn: Callable, action_dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.fn = fn
        self.action_dtype = action_dtype
        self.in_keys = ["observation"]
        self.out_keys = ["action"]

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        obs = tensordict.get("observation")
        obs_np = obs.cpu().numpy() if isinstance(obs, torch.Tensor) else obs.cpu().numpy()
        action = torch.as_tensor(np.asarray(self.fn(obs_np)))
        if self.action_dtype is not None:
            action = action.to(self.action_dtype)
        tensordict.set("action", action.to(tensordict.device or action.device))
        return tensordict


class FunctionPolicy(TensorDictModuleBase):
    """Wrap a plain function of *one* observation returning *one* action.

    The function is called once per sub-env and step with a single numpy observation
    (a dict of arrays for dict observations) and returns that observation's action: an
    int for discrete spaces, an array (or list, or float) for continuous ones. A scripted
    expert written for one observation works unchanged on batched envs and on TensorDicts
    of any batch shape. It is deterministic if the function is. Use :class:`CallablePolicy`
    for a function that already handles whole batches (faster for many sub-envs).

    Args:
        fn: the function, ``observation -> action``.
        action_dtype: dtype of the written actions; default: int64 for integer results,
            float32 for floating-point ones (as the env's action specs).
    """

    def __init__(self, fn: Callable, action_dtype: torch.dtype | None = None) -> None:
        super().__init__()
        if not callable(fn):
            raise PolicyError(
                f"FunctionPolicy needs a function observation -> action, got {type(fn).__name__}"
            )
        self.fn = fn
        self.action_dtype = action_dtype
        self.in_keys = ["observation"]
        self.out_keys = ["action"]

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        batch = tensordict.batch_size
        n = batch.numel()
        obs = tensordict.get("observation")
        if isinstance(obs, TensorDictBase):
            # Dict observations: one dict of arrays per element of the batch.
            flat = {k: v.reshape(n, *v.shape[len(batch) :]).cpu().numpy() for k, v in obs.items()}
            singles = [{k: v[i] for k, v in flat.items()} for i in range(n)]
        else:
            singles = list(obs.reshape(n, *obs.shape[len(batch) :]).cpu().numpy())
        actions = np.stack([np.asarray(self.fn(o)) for o in singles])
        action = torch.from_numpy(actions)
        if self.action_dtype is not None:
            action = action.to(self.action_dtype)
        elif action.is_floating_point():
            action = action.to(torch.float32)
        elif action.dtype != torch.bool:
            action = action.to(torch.int64)
        action = action.reshape(batch + action.shape[1:])
        tensordict.set("action", action.to(tensordict.device or action.device))
        return tensordict


def policy_from_function(fn: Callable, env=None, *, batched: bool = False) -> TensorDictModuleBase:
    """A TensorDict policy acting with a plain Python function, e.g. a scripted expert.

    Args:
        fn: ``observation -> action`` for one observation (default), or for a numpy batch
            of observations ``[B, *obs_shape] -> [B, *action_shape]`` with ``batched=True``.
        env: the environment (optional): its action spec sets the action dtype.
        batched: whether ``fn`` takes whole batches (see :class:`CallablePolicy`) rather
            than one observation (see :class:`FunctionPolicy`).

    Returns:
        A policy reading ``observation`` and writing ``action``, usable with
        :func:`~tdimitation.data.rollout`, the collectors and the evaluation helpers.
    """
    dtype = _action_spec(env).dtype if env is not None else None
    if batched:
        return CallablePolicy(fn, dtype)
    return FunctionPolicy(fn, dtype)


def as_policy(policy, env=None) -> TensorDictModuleBase:
    """Turn ``policy`` into a TensorDict policy reading ``observation``, writing ``action``.

    Args:
        policy: a ``TensorDictModuleBase`` (returned as is), an ``nn.Module`` mapping an
            observation tensor to an action tensor, or a callable on numpy batches.
        env: the environment, used for the action dtype of wrapped callables.
    """
    if isinstance(policy, TensorDictModuleBase):
        return policy
    if isinstance(policy, nn.Module):
        return TensorDictModule(policy, in_keys=["observation"], out_keys=["action"])
    if callable(policy):
        dtype = _action_spec(env).dtype if env is not None else None
        return CallablePolicy(policy, dtype)
    raise PolicyError(
        f"cannot use {type(policy).__name__} as a policy: pass a TensorDictModule, an "
        "nn.Module or a callable mapping observations to actions"
    )


class RandomPolicy(TensorDictModuleBase):
    """Uniformly random actions from an action spec, with its own random generator.

    Args:
        env_or_spec: the environment or its (unbatched) action spec.
        seed: seed of the policy's generator (explicit RNG, independent of the global one).
    """

    def __init__(self, env_or_spec, seed: int | None = None) -> None:
        super().__init__()
        self.spec = _action_spec(env_or_spec)
        self.generator = torch.Generator()
        if seed is not None:
            self.generator.manual_seed(int(seed))
        else:
            self.generator.seed()
        self.in_keys = ["observation"]
        self.out_keys = ["action"]

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        batch = tensordict.batch_size
        spec, gen = self.spec, self.generator
        # MultiCategorical subclasses Categorical in torchrl: test it first.
        if isinstance(spec, MultiCategorical):
            nvec = spec.nvec.expand(batch + spec.shape)
            action = (torch.rand(nvec.shape, generator=gen) * nvec).long()
        elif isinstance(spec, Categorical):
            action = torch.randint(spec.space.n, batch + spec.shape, generator=gen)
        elif isinstance(spec, Bounded):
            low, high = spec.space.low, spec.space.high
            u = torch.rand(batch + spec.shape, generator=gen)
            action = (low + u * (high - low)).to(spec.dtype)
        else:
            action = spec.rand(batch)
        tensordict.set("action", action.to(tensordict.device or action.device))
        return tensordict


class ZeroPolicy(TensorDictModuleBase):
    """Always the zero action (index 0 for discrete spaces)."""

    def __init__(self, env_or_spec) -> None:
        super().__init__()
        self.spec = _action_spec(env_or_spec)
        self.in_keys = ["observation"]
        self.out_keys = ["action"]

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        action = torch.zeros(tensordict.batch_size + self.spec.shape, dtype=self.spec.dtype)
        tensordict.set("action", action.to(tensordict.device or action.device))
        return tensordict
