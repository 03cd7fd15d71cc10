"""Small shared utilities."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import torch


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary file path beside ``path``; rename it onto ``path`` on success.

    If the body raises (or the process dies), ``path`` is left as it was and the
    temporary file is removed (when the process survives).
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    # mkstemp creates 0600 files; give the result the permissions a plain open() would.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    try:
        yield Path(tmp)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


#: Environment variable overriding the torch thread count of training and the commands.
NUM_THREADS_ENV = "TDIMITATION_NUM_THREADS"

#: The thread count training runs at unless told otherwise. These algorithms' networks are
#: small (tens to hundreds of units): a second intra-op thread costs more in synchronisation
#: than it saves, and when another process holds a core each threaded op waits for it
#: (benchmarks/bench_threads.py measures both on the machine at hand).
DEFAULT_NUM_THREADS = 1


def default_num_threads() -> int:
    """``$TDIMITATION_NUM_THREADS`` if set, else :data:`DEFAULT_NUM_THREADS`."""
    value = os.environ.get(NUM_THREADS_ENV)
    if value is None:
        return DEFAULT_NUM_THREADS
    try:
        threads = int(value)
    except ValueError:
        threads = 0
    if threads < 1:
        raise ValueError(f"{NUM_THREADS_ENV} must be a positive integer, got {value!r}")
    return threads


def configure_threads() -> None:
    """Use :func:`default_num_threads` torch threads for the whole process (the commands)."""
    torch.set_num_threads(default_num_threads())


def check_positive(**values: float) -> None:
    """Raise ``ValueError`` naming the first argument that is not > 0."""
    for name, value in values.items():
        if not value > 0:
            raise ValueError(f"{name} must be > 0, got {value}")


@contextlib.contextmanager
def seeded(seed: int | None) -> Iterator[None]:
    """Draw from torch's RNG seeded with ``seed`` inside the block (None: unseeded).

    The caller's global RNG state is restored afterwards, so seeding a network's
    initialisation does not change what else draws from it.
    """
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        yield


def nonplain_training_reason(trainer) -> str | None:
    """Why Lightning's backward/step under ``trainer`` may do more than plain torch calls.

    With the default 32-bit ``Precision`` plugin on a ``SingleDeviceStrategy``,
    ``manual_backward(loss)`` is ``loss.backward()`` plus hooks and ``LightningOptimizer``
    steps are ``optimizer.step()`` plus hooks and a counter; other precisions (autocast,
    loss scaling) and strategies (gradient synchronisation) are not. The fused updates of
    BC and PPO are taken only when this returns None (:mod:`tdimitation.fused.lightning`
    also checks the hooks).
    """
    from lightning.pytorch.plugins.precision import Precision
    from lightning.pytorch.strategies import SingleDeviceStrategy

    strategy = trainer.strategy
    if type(strategy) is not SingleDeviceStrategy:
        # Under ddp, gradients are averaged inside backward passes, which fused updates skip.
        return f"strategy {type(strategy).__name__} (gradients synchronised in backward passes)"
    if type(strategy.precision_plugin) is not Precision:
        return f"precision {trainer.precision}"
    return None


def attached_trainer(module):
    """The Trainer ``module`` (a LightningModule) is attached to, or None."""
    try:
        return module.trainer
    except RuntimeError:  # Lightning's "not attached to a `Trainer`"
        return None


def plain_backward(loss: torch.Tensor) -> None:
    """The default ``backward`` of the generator interface (``update``) outside a Trainer."""
    loss.backward()
