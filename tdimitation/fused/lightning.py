"""When a fused update may replace Lightning's backward and optimizer step.

A fused update computes gradients and applies the optimizer step itself, without
Lightning's ``manual_backward`` and ``LightningOptimizer.step``. That is exact when those
are plain torch calls and nothing hooks them; these functions say why not otherwise. Only
public Lightning APIs are used.
"""

from __future__ import annotations

from collections.abc import Callable

import lightning as L
import torch
from lightning.pytorch.core.optimizer import LightningOptimizer

from tdimitation.utils import attached_trainer, nonplain_training_reason, plain_backward

#: Lightning hooks around a backward pass or an optimizer step; a fused update skips them.
STEP_HOOKS = ("backward", "on_before_backward", "on_after_backward", "on_before_optimizer_step")


def unwrap_optimizer(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """The torch optimizer inside a ``LightningOptimizer`` (or ``optimizer`` itself)."""
    return optimizer.optimizer if isinstance(optimizer, LightningOptimizer) else optimizer


def module_step_blocker(module: L.LightningModule) -> str | None:
    """Why a fused update may not replace ``module``'s Lightning backward/step (None: it may).

    Exact when ``manual_backward`` and the optimizer wrapper are plain torch calls
    (:func:`~tdimitation.utils.nonplain_training_reason`), the Trainer does not clip
    gradients, and neither the module nor a callback overrides a backward or optimizer-step
    hook. Without a Trainer there is nothing to skip.
    """
    from lightning.pytorch import Callback, LightningModule
    from lightning.pytorch.utilities.model_helpers import is_overridden

    trainer = attached_trainer(module)
    if trainer is None:
        return None
    reason = nonplain_training_reason(trainer)
    if reason is not None:
        return reason
    if trainer.gradient_clip_val:
        return "Trainer gradient clipping"
    if any(is_overridden(hook, module, LightningModule) for hook in STEP_HOOKS):
        return f"{type(module).__name__} overrides a backward or optimizer-step hook"
    for callback in trainer.callbacks:
        if any(is_overridden(hook, callback, Callback) for hook in STEP_HOOKS[1:]):
            return f"callback {type(callback).__name__} hooks backward or optimizer steps"
    return None


def backward_blocker(backward: Callable[[torch.Tensor], None] | None) -> str | None:
    """Why ``backward`` may do more than ``loss.backward()`` (None: it does not).

    ``backward`` is None or :func:`~tdimitation.utils.plain_backward` (plain torch), or a
    LightningModule's own ``manual_backward``, which is ``loss.backward()`` plus hooks
    under Lightning's default 32-bit precision on one device (:func:`module_step_blocker`).
    """
    if backward is None or backward is plain_backward:
        return None
    owner = getattr(backward, "__self__", None)
    if (
        not isinstance(owner, L.LightningModule)
        or getattr(backward, "__func__", None) is not L.LightningModule.manual_backward
    ):
        return "a custom backward function"
    return module_step_blocker(owner)
