"""Run-owned random number generators.

Every random draw of a training run comes from a ``torch.Generator`` the run seeds, never
from torch's global RNG: code that also draws from the global RNG (an evaluation, a
callback, a user's script between two fits) then cannot change what the run does, and a
checkpoint restores the run's draws exactly.

Generators live on the CPU and draws are moved to the tensors' device: the same seed gives
the same draws on any device, and one generator serves modules on any device. The cost
is a copy of the drawn numbers (indices and noise blocks), small next to the networks.

Modules that draw (actors, exploration wrappers) derive from :class:`Stochastic`: they use
their ``rng`` when one is attached, else the global RNG (a policy used on its own, outside
a run). :func:`attach_rng` gives every such submodule a run's generator;
:func:`isolated_sampling` gives them a separate one for the duration of an evaluation.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch import nn


def make_rng(seed: int | None) -> torch.Generator:
    """A CPU generator seeded with ``seed`` (None: a nondeterministic seed)."""
    rng = torch.Generator()
    if seed is None:
        rng.seed()
    else:
        rng.manual_seed(int(seed))
    return rng


def _on(tensor: torch.Tensor, device: torch.device | str | None) -> torch.Tensor:
    return tensor if device is None else tensor.to(device, non_blocking=True)


def uniform(
    shape: Sequence[int], rng: torch.Generator | None, device=None, dtype=torch.float32
) -> torch.Tensor:
    """U[0, 1) draws of ``shape`` on ``device`` (from the global RNG when ``rng`` is None)."""
    if rng is None:
        return torch.rand(tuple(shape), device=device, dtype=dtype)
    return _on(torch.rand(tuple(shape), generator=rng, dtype=dtype), device)


def normal(
    shape: Sequence[int], rng: torch.Generator | None, device=None, dtype=torch.float32
) -> torch.Tensor:
    """Standard normal draws of ``shape`` on ``device``."""
    if rng is None:
        return torch.randn(tuple(shape), device=device, dtype=dtype)
    return _on(torch.randn(tuple(shape), generator=rng, dtype=dtype), device)


def exponential(
    shape: Sequence[int], rng: torch.Generator | None, device=None, dtype=torch.float32
) -> torch.Tensor:
    """Exp(1) draws of ``shape`` on ``device``."""
    if rng is None:
        return torch.empty(tuple(shape), device=device, dtype=dtype).exponential_()
    return _on(torch.empty(tuple(shape), dtype=dtype).exponential_(generator=rng), device)


def randint(
    high: int, shape: Sequence[int], rng: torch.Generator | None, device=None
) -> torch.Tensor:
    """Uniform int64 draws in ``[0, high)`` of ``shape`` on ``device``."""
    if rng is None:
        return torch.randint(int(high), tuple(shape), device=device)
    return _on(torch.randint(int(high), tuple(shape), generator=rng), device)


def randperm(n: int, rng: torch.Generator | None, device=None) -> torch.Tensor:
    """A uniform permutation of ``range(n)`` on ``device``."""
    if rng is None:
        return torch.randperm(int(n), device=device)
    return _on(torch.randperm(int(n), generator=rng), device)


class Stochastic:
    """Mixin of modules that draw random numbers: they draw from ``rng`` when attached.

    Subclasses that cache draws (blocks of noise) override :meth:`sampling_state` and
    :meth:`set_sampling_state` so an isolated evaluation leaves the cache as it was.
    """

    rng: torch.Generator | None = None

    def sampling_state(self) -> dict:
        """What :func:`isolated_sampling` saves and restores besides ``rng``."""
        return {}

    def set_sampling_state(self, state: dict) -> None:
        """Restore :meth:`sampling_state` (and clear caches when ``state`` is empty)."""


def stochastic_modules(module: nn.Module) -> list[Stochastic]:
    """Every :class:`Stochastic` submodule of ``module`` (itself included), each once."""
    modules = module.modules() if isinstance(module, nn.Module) else [module]
    return [m for m in modules if isinstance(m, Stochastic)]


def attach_rng(module: nn.Module, rng: torch.Generator | None) -> None:
    """Make every :class:`Stochastic` submodule of ``module`` draw from ``rng``.

    A module that already draws from ``rng`` keeps its cached draws (a resumed run
    restores them from its checkpoint); one switching generators drops them.
    """
    for m in stochastic_modules(module):
        if m.rng is not rng:
            m.rng = rng
            m.set_sampling_state({})


@contextlib.contextmanager
def isolated_sampling(module, seed: int | None = None) -> Iterator[None]:
    """Run the block with ``module``'s draws and the global RNGs set apart, then restore.

    Inside, every :class:`Stochastic` submodule draws from a fresh generator seeded with
    ``seed``, and torch's, numpy's and Python's global RNG states are restored afterwards:
    a run evaluated in the middle of training continues exactly as if it had not been.
    """
    modules = stochastic_modules(module) if module is not None else []
    saved = [(m, m.rng, m.sampling_state()) for m in modules]
    eval_rng = make_rng(seed)
    numpy_state, python_state = np.random.get_state(), random.getstate()
    try:
        with torch.random.fork_rng(devices=[]):
            for m in modules:
                m.rng = eval_rng
                m.set_sampling_state({})
            yield
    finally:
        for m, rng, state in saved:
            m.rng = rng
            m.set_sampling_state(state)
        np.random.set_state(numpy_state)
        random.setstate(python_state)


__all__ = [
    "Stochastic",
    "attach_rng",
    "exponential",
    "isolated_sampling",
    "make_rng",
    "normal",
    "randint",
    "randperm",
    "stochastic_modules",
    "uniform",
]
