"""Multi-process training: which strategies an algorithm trains under, and rank helpers.

BC and PPO train under Lightning's ``ddp`` strategy (``--trainer.strategy ddp
--trainer.devices N``): every process holds the whole model, DDP averages the gradients
of each backward pass, so the parameters stay identical across processes. Every other
algorithm refuses a multi-process strategy with one :class:`StrategyCheck` (a callback
every algorithm adds) before it trains, naming the strategies it supports.

The helpers read the process group from the Trainer an algorithm is attached to; without
a Trainer (or under a single-device strategy) there is one process, rank 0.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import numpy as np
import torch

from tdimitation.errors import StrategyError
from tdimitation.utils import attached_trainer

#: What the refusal names: the strategies every algorithm, and the multi-process ones, run.
SINGLE_PROCESS = "single-device (the default, --trainer.strategy auto)"
MULTI_PROCESS = "ddp (--trainer.strategy ddp --trainer.devices N)"
MULTI_PROCESS_ALGORITHMS = "BC and PPO"


def strategy_refusal(trainer: L.Trainer, module: Any) -> str | None:
    """Why ``module`` cannot train under ``trainer``'s strategy (None: it can).

    Every algorithm trains on one device (``SingleDeviceStrategy``); an algorithm whose
    ``multi_process`` attribute is True also under ``DDPStrategy``. Anything else (FSDP,
    DeepSpeed, model parallelism, or DDP for the other algorithms) is refused.
    """
    from lightning.pytorch.strategies import DDPStrategy, SingleDeviceStrategy

    strategy = trainer.strategy
    if isinstance(strategy, SingleDeviceStrategy):
        return None
    if getattr(module, "multi_process", False) and type(strategy) is DDPStrategy:
        return None
    name = type(module).__name__
    supported = SINGLE_PROCESS
    if getattr(module, "multi_process", False):
        supported += f" or {MULTI_PROCESS}"
    else:
        supported += f"; {MULTI_PROCESS} for {MULTI_PROCESS_ALGORITHMS} only"
    return (
        f"{name} cannot train under strategy {type(strategy).__name__} "
        f"({trainer.world_size} process{'es' if trainer.world_size != 1 else ''}): supported "
        f"strategies are {supported}; "
        "drop --trainer.strategy and --trainer.devices (or set --trainer.devices 1)"
    )


def check_strategy(trainer: L.Trainer, module: Any) -> None:
    """Raise :class:`~tdimitation.errors.StrategyError` if :func:`strategy_refusal` refuses."""
    reason = strategy_refusal(trainer, module)
    if reason is not None:
        raise StrategyError(reason)


class StrategyCheck(L.Callback):
    """Refuse a strategy the algorithm cannot train under, before anything trains."""

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        check_strategy(trainer, pl_module)


def rank_and_world(module: L.LightningModule) -> tuple[int, int]:
    """``(global rank, number of processes)`` of the fit ``module`` is in; ``(0, 1)`` alone."""
    trainer = attached_trainer(module)
    if trainer is None:
        return 0, 1
    return int(trainer.global_rank), int(trainer.world_size)


def rank_seed(seed: int, rank: int) -> int:
    """The seed of process ``rank`` in a run seeded ``seed``: ``seed`` itself on rank 0.

    Other ranks get independent streams (numpy's ``SeedSequence`` of ``(seed, rank)``), so
    a one-process run draws exactly what rank 0 of a multi-process run draws.
    """
    if rank == 0:
        return int(seed)
    return int(np.random.SeedSequence([int(seed) % 2**63, int(rank)]).generate_state(1)[0])


def gather_rows(module: L.LightningModule, rows: torch.Tensor) -> torch.Tensor:
    """``rows`` ``[B, ...]`` of every process, concatenated in rank order (alone: ``rows``).

    Every process must call it with rows of the same shape; all get the same result.
    """
    _, world = rank_and_world(module)
    if world == 1:
        return rows
    return torch.cat(_all_gather(rows.contiguous(), world))


def mean_over_processes(module: L.LightningModule, value: torch.Tensor) -> torch.Tensor:
    """The mean of ``value`` over the processes (alone: ``value``); the same on every one."""
    _, world = rank_and_world(module)
    if world == 1:
        return value
    return torch.stack(_all_gather(value.contiguous(), world)).mean(0)


def _all_gather(tensor: torch.Tensor, world: int) -> list[torch.Tensor]:
    # torch's collective directly: LightningModule.all_gather goes through a torch function
    # that warns of its deprecation on every call.
    parts = [torch.empty_like(tensor) for _ in range(world)]
    torch.distributed.all_gather(parts, tensor)
    return parts
