"""Fused updates: PPO's and BC's training steps without autograd, and when to take them.

The autograd updates in :class:`tdimitation.rl.PPO` and :class:`tdimitation.algorithms.BC`
are the specification: a loss module's ``forward``, ``backward``, ``optimizer.step()``. A
fused update computes the same steps with the gradients written out in closed form and
Adam applied to buffers it owns, several times faster on a CPU at these networks' sizes.

* :func:`fused_update_for` is the one place that decides: it returns a fused update for
  exactly the loss classes and options one implements, or the reason it cannot (a loss
  subclass, an unknown option, a network layout, an optimizer setting, a dtype, hooks).
* :class:`FirstMinibatchCheck`: at the start of every fit the fused gradients are compared
  once with autograd's on the first minibatch; if they disagree, the fit runs the autograd
  update and says why.
* Per-optimizer-step hooks do not fire inside a fused update (Lightning's
  ``on_before_optimizer_step``/backward hooks refuse the fused path when overridden;
  ``torch.optim`` step hooks are not run); the algorithms count and log the steps.
"""

from __future__ import annotations

import functools
import inspect
import warnings
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
from tensordict import TensorDictBase
from torch import nn
from torchrl.objectives import LossModule

from tdimitation.fused.bc import BCFusedUpdate, BCGradients
from tdimitation.fused.gae import gae
from tdimitation.fused.lightning import backward_blocker, module_step_blocker, unwrap_optimizer
from tdimitation.fused.ppo import PPOFusedUpdate, PPOGradients

#: Tolerance of the first-minibatch check, per parameter tensor: the largest absolute
#: difference between fused and autograd gradients may be at most
#: ``GRADIENT_ATOL + GRADIENT_RTOL * max|autograd gradient|``. Measured in float32 over
#: ~1,000 random PPO and BC networks and minibatches (tanh/ReLU, 0-2 hidden layers of 16-256
#: units, batches of 32-256): at most 1.8e-6 of the tensor's largest entry, and 3e-9 in
#: absolute terms where that entry is below 1e-2. A wrong term of the closed form is off by
#: the size of the gradient itself.
GRADIENT_RTOL = 1e-4
GRADIENT_ATOL = 1e-7


class FusedUpdateWarning(UserWarning):
    """A fused update disagreed with autograd on the first minibatch; autograd is used."""


class FusedUpdate(Protocol):
    """What the dispatcher returns (:class:`PPOFusedUpdate`, :class:`BCFusedUpdate`)."""

    loss: LossModule

    def parameters(self) -> list[nn.Parameter]: ...

    def reference_loss(self, minibatch: TensorDictBase) -> torch.Tensor: ...

    def minibatch_gradients(self, minibatch: TensorDictBase) -> list[torch.Tensor]: ...


@dataclass(frozen=True)
class FusedOptions:
    """What the update around the loss does, as far as a fused update must reproduce it.

    Attributes:
        backward: the backward function the autograd update would call (None:
            ``loss.backward()``; a LightningModule's ``manual_backward``; anything else
            refuses the fused path).
        max_grad_norm: gradient clipping norm of each step (None: none).
        compile: ``torch.compile`` the fused step where the update supports it (PPO).
    """

    backward: Callable[[torch.Tensor], None] | None = None
    max_grad_norm: float | None = None
    compile: bool = False


_UPDATES: tuple[type, ...] = (PPOFusedUpdate, BCFusedUpdate)


def fused_update_for(
    loss: LossModule, optimizer: torch.optim.Optimizer, config: FusedOptions
) -> FusedUpdate | str:
    """A fused update for ``loss`` trained by ``optimizer``, or why there is none.

    Taken only for exactly :class:`~tdimitation.objectives.PPOClipLoss` or
    :class:`~tdimitation.objectives.BCLoss` (a subclass may compute something else), with
    no constructor option outside those the update reads set away from its default, float32
    parameters on one device, autocast off, a plain Adam (:func:`~tdimitation.fused.adam.
    adam_refusal`), and a backward that is ``loss.backward()`` or Lightning's plain
    ``manual_backward`` with no backward/optimizer-step hook overridden. The loss's
    ``tensor_keys`` do not matter: the algorithms read their data through them either way.

    Args:
        loss: the loss module the autograd update would call.
        optimizer: the optimizer (a ``LightningOptimizer`` is unwrapped).
        config: what else the update does (:class:`FusedOptions`).

    Returns:
        The update object, or a one-line reason to record (``update_path``).
    """
    update_class = next((u for u in _UPDATES if type(loss) is u.loss_class), None)
    if update_class is None:
        for candidate in _UPDATES:
            if isinstance(loss, candidate.loss_class):
                base = candidate.loss_class.__name__
                return f"subclass {type(loss).__name__} of {base}"
        return f"no fused update for {type(loss).__name__}"
    reason = _unknown_option(loss, update_class.options)
    if reason is not None:
        return reason
    params = list(loss.parameters())
    if not params:
        return "the loss has no parameters"
    if any(p.dtype != torch.float32 for p in params):
        return "parameters are not float32 (the fused updates are checked in float32)"
    if len({p.device for p in params}) != 1:
        return "parameters on several devices"
    if torch.is_autocast_enabled(params[0].device.type):
        return "autocast is enabled"
    reason = backward_blocker(config.backward)
    if reason is not None:
        return reason
    optimizer = unwrap_optimizer(optimizer)
    reason = update_class.refusal(loss, optimizer)
    if reason is not None:
        return reason
    if update_class is PPOFusedUpdate:
        return PPOFusedUpdate(loss, optimizer, config.max_grad_norm, config.compile)
    return BCFusedUpdate(loss, optimizer)


@functools.cache
def _constructor_parameters(loss_class: type) -> tuple[tuple[str, inspect.Parameter], ...]:
    return tuple(inspect.signature(loss_class.__init__).parameters.items())


def _unknown_option(loss: LossModule, implemented: tuple[str, ...]) -> str | None:
    """A constructor option of ``loss`` the update does not read, set away from its default."""
    for name, parameter in _constructor_parameters(type(loss)):
        if parameter.kind is not inspect.Parameter.KEYWORD_ONLY or name in implemented:
            continue
        if parameter.default is inspect.Parameter.empty:
            return f"{type(loss).__name__} option {name} (not implemented by the fused update)"
        value = getattr(loss, name, parameter.default)
        if not isinstance(value, type(parameter.default)) or value != parameter.default:
            return (
                f"{type(loss).__name__} option {name}={value!r} "
                "(not implemented by the fused update)"
            )
    return None


def gradient_disagreement(update: FusedUpdate, minibatch: TensorDictBase) -> str | None:
    """Compare ``update``'s gradients with autograd's of its loss on ``minibatch``.

    Both at the current parameters; nothing is drawn from any RNG and nothing is written to
    parameters or ``.grad``. Returns None if every parameter's gradient agrees within
    :data:`GRADIENT_RTOL`/:data:`GRADIENT_ATOL`, else the reason.
    """
    params = update.parameters()
    fused = update.minibatch_gradients(minibatch)
    with torch.enable_grad():
        reference = torch.autograd.grad(update.reference_loss(minibatch), params, allow_unused=True)
    for index, (param, got, want) in enumerate(zip(params, fused, reference, strict=True)):
        want = torch.zeros_like(param) if want is None else want.detach()
        error = float((got - want).abs().max())
        tolerance = GRADIENT_ATOL + GRADIENT_RTOL * float(want.abs().max())
        if not error <= tolerance:  # also catches NaN
            shape = "x".join(map(str, param.shape))
            return (
                f"fused gradients disagree with autograd on the first minibatch (parameter "
                f"{index}, {shape}: max error {error:.2e} > tolerance {tolerance:.2e})"
            )
    return None


class FirstMinibatchCheck:
    """Runs :func:`gradient_disagreement` once per fit and remembers the verdict.

    A fit is recognised by its optimizer: every fit builds its own
    (``configure_optimizers``), so the first fused update with a new optimizer (or a new
    loss module) is checked, and the result holds until either changes.
    """

    def __init__(self) -> None:
        self._key: tuple[weakref.ref, weakref.ref] | None = None
        #: Why the check failed for the current fit (None: it passed or has not run).
        self.reason: str | None = None

    def __getstate__(self) -> dict:
        # Weak references do not pickle; a copied module checks again on its next fit.
        return {"_key": None, "reason": None}

    def __call__(
        self,
        update: FusedUpdate | str,
        optimizer: torch.optim.Optimizer,
        first_minibatch: Callable[[], TensorDictBase],
    ) -> FusedUpdate | str:
        """``update`` if it may be used in this fit, else the reason not to."""
        if isinstance(update, str):
            return update
        optimizer = unwrap_optimizer(optimizer)
        key = self._key
        if key is None or key[0]() is not optimizer or key[1]() is not update.loss:
            self._key = (weakref.ref(optimizer), weakref.ref(update.loss))
            self.reason = gradient_disagreement(update, first_minibatch())
            if self.reason is not None:
                warnings.warn(
                    f"{self.reason}; this fit uses the autograd update",
                    FusedUpdateWarning,
                    stacklevel=3,
                )
        return update if self.reason is None else self.reason


__all__ = [
    "GRADIENT_ATOL",
    "GRADIENT_RTOL",
    "BCFusedUpdate",
    "BCGradients",
    "FirstMinibatchCheck",
    "FusedOptions",
    "FusedUpdate",
    "FusedUpdateWarning",
    "PPOFusedUpdate",
    "PPOGradients",
    "fused_update_for",
    "gae",
    "gradient_disagreement",
    "module_step_blocker",
]
