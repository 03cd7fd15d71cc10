"""One Adam for the fused updates: ``torch.optim.Adam``'s update on buffers they own.

:class:`FlatAdam` stands in for ``optimizer.step()`` without the wrapper around the update
(profiler and step hooks, a state lookup per parameter, dtype grouping), which costs more
than the update itself at these networks' sizes. PPO's fused update keeps parameters,
gradient and moments in one flat buffer each (:class:`FlatLayout`); there the update is
Adam's arithmetic written out, the same as ``torch.optim.Adam``'s for-loop implementation
bit for bit (a call of the fused kernel measured ~3% slower per PPO step). BC's updates the
parameters and the optimizer's own moments in place with exactly the call
``Adam.step()`` makes (``torch.optim.adam.adam``, the optimizer's public functional form,
with its group's hyperparameters and implementation): bit for bit ``step()``'s update.
:func:`adam_refusal` says which optimizers it implements.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Sequence
from typing import Protocol

import torch
from torch import nn
from torch.optim.adam import adam

#: Keyword arguments of ``torch.optim.adam.adam`` that :class:`FlatAdam` passes; another
#: torch version whose function takes other ones is refused (the update would differ).
_ADAM_ARGUMENTS = frozenset(
    "amsgrad has_complex beta1 beta2 lr weight_decay eps maximize foreach capturable "
    "differentiable fused grad_scale found_inf decoupled_weight_decay".split()
)


@functools.cache
def _adam_signature_known() -> bool:
    return _ADAM_ARGUMENTS <= set(inspect.signature(adam).parameters)


class FlatLayout(Protocol):
    """Where each parameter lives in a flat buffer (PPO's twin actor-critic layout)."""

    def parameters(self) -> list[nn.Parameter]: ...

    def new_buffer(self) -> torch.Tensor: ...

    def param_views(self, flat: torch.Tensor) -> list[tuple[nn.Parameter, torch.Tensor]]: ...

    def load(
        self, flat: torch.Tensor, tensors: dict[nn.Parameter, torch.Tensor] | None = None
    ) -> torch.Tensor: ...

    def store(
        self, flat: torch.Tensor, tensors: dict[nn.Parameter, torch.Tensor] | None = None
    ) -> None: ...


def adam_refusal(
    optimizer: torch.optim.Optimizer, parameters: Sequence[nn.Parameter]
) -> str | None:
    """Why :class:`FlatAdam` cannot stand in for ``optimizer`` over ``parameters`` (None: it can).

    Implemented: ``torch.optim.Adam`` (or ``AdamW`` without weight decay) over exactly
    ``parameters``, with float learning rate, betas and eps shared by all groups, and
    fused, foreach or for-loop implementation. Refused: weight decay, AMSGrad,
    ``maximize``, capturable or differentiable mode, gradient scaling, complex parameters,
    partially initialised state, and a ``torch.optim.adam.adam`` with other arguments.
    """
    if type(optimizer) not in (torch.optim.Adam, torch.optim.AdamW):
        return f"optimizer {type(optimizer).__name__} (the fused updates implement Adam)"
    groups = optimizer.param_groups
    for group in groups:
        if group["weight_decay"]:
            return "Adam with weight decay"
        if group["amsgrad"]:
            return "Adam with AMSGrad"
        if group["maximize"]:
            return "Adam with maximize=True"
        if group.get("capturable") or group.get("differentiable"):
            return "capturable or differentiable Adam"
        if any(torch.is_tensor(v) for v in (group["lr"], group["eps"], *group["betas"])):
            return "a tensor learning rate or beta"
        if any(group[k] != groups[0][k] for k in ("lr", "betas", "eps", "foreach", "fused")):
            return "param groups with different hyperparameters"
        if "decoupled_weight_decay" not in group:
            return "an Adam without decoupled_weight_decay (another torch version)"
    params = [p for group in groups for p in group["params"]]
    if len(params) != len(parameters) or {id(p) for p in params} != {id(p) for p in parameters}:
        return "the optimizer's parameters are not exactly the ones the fused update trains"
    if any(p.is_complex() for p in params):
        return "complex parameters"
    if getattr(optimizer, "grad_scale", None) is not None:
        return "gradient scaling"
    if getattr(optimizer, "found_inf", None) is not None:
        return "gradient scaling"
    states = [optimizer.state.get(p) for p in params]
    if any(states) and not all(
        s and {"step", "exp_avg", "exp_avg_sq"} <= s.keys() and "max_exp_avg_sq" not in s
        for s in states
    ):
        return "partially initialised or unexpected Adam state"
    if any(states) and len({float(s["step"]) for s in states}) != 1:
        return "Adam step counts differ between parameters"
    if not _adam_signature_known():
        return "torch.optim.adam.adam takes other arguments in this torch version"
    return None


class FlatAdam:
    """``torch.optim.Adam``'s step on buffers a fused update owns (see the module docstring).

    With a ``layout``, parameters, gradient and Adam's moments are gathered into one flat
    buffer each at construction; :meth:`step` updates them (from :attr:`grad`) and
    :meth:`finish` writes parameters, moments and step counts back, so the optimizer and
    the modules end where ``optimizer.step()`` calls would leave them. Without a layout,
    :meth:`step` takes one gradient per parameter and updates the parameters and the
    optimizer's moments in place (nothing to write back).

    An optimizer without state yet takes its first step itself (``optimizer.step()``
    creates the state in its own format); the buffers continue from there. Step hooks
    registered on the optimizer do not run inside :meth:`step`. Call it under
    ``torch.no_grad()``.

    Args:
        optimizer: the torch optimizer (accepted by :func:`adam_refusal`).
        parameters: the parameters it updates, in the order gradients are given.
        layout: the flat layout of ``parameters``, or None to update them in place.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        parameters: Sequence[nn.Parameter],
        layout: FlatLayout | None = None,
    ) -> None:
        self.optimizer, self.layout = optimizer, layout
        self.parameters = list(parameters)
        self.group = optimizer.param_groups[0]
        #: Steps applied to the buffers (not through ``optimizer.step()``).
        self.flat_steps = 0
        if layout is None:
            self.params, self.grad = self.parameters, None
        else:
            self.params = [layout.load(layout.new_buffer())]
            self.grad = layout.new_buffer().zero_()
        self.started = self._load_state()

    def _load_state(self) -> bool:
        state = self.optimizer.state
        if not state.get(self.parameters[0]):
            return False
        states = [state[p] for p in self.parameters]
        layout = self.layout
        if layout is None:
            self.exp_avgs = [s["exp_avg"] for s in states]
            self.exp_avg_sqs = [s["exp_avg_sq"] for s in states]
            self.steps = [s["step"] for s in states]
            return True
        params = self.parameters
        self.exp_avgs = [layout.load(layout.new_buffer(), {p: state[p]["exp_avg"] for p in params})]
        self.exp_avg_sqs = [
            layout.load(layout.new_buffer(), {p: state[p]["exp_avg_sq"] for p in params})
        ]
        #: The optimizer's step count when the buffers were loaded.
        self.step_count = float(states[0]["step"])
        return True

    @property
    def lr(self) -> float:
        return self.group["lr"]

    @property
    def betas(self) -> tuple[float, float]:
        return self.group["betas"]

    @property
    def eps(self) -> float:
        return self.group["eps"]

    def step(self, grads: Sequence[torch.Tensor] | None = None) -> None:
        """One Adam step from ``grads`` (one per parameter) or, with a layout, :attr:`grad`."""
        if not self.started:
            self._first_step(grads)
            return
        self.flat_steps += 1
        if self.layout is not None:
            self._flat_step()
            return
        group = self.group
        beta1, beta2 = group["betas"]
        # The call Adam.step() makes, with the group's current hyperparameters.
        adam(
            self.params,
            list(grads),
            self.exp_avgs,
            self.exp_avg_sqs,
            [],
            self.steps,
            amsgrad=False,
            has_complex=False,
            beta1=beta1,
            beta2=beta2,
            lr=group["lr"],
            weight_decay=0.0,
            eps=group["eps"],
            maximize=False,
            foreach=group["foreach"],
            capturable=False,
            differentiable=False,
            fused=group["fused"],
            grad_scale=None,
            found_inf=None,
            decoupled_weight_decay=group["decoupled_weight_decay"],
        )

    def _first_step(self, grads: Sequence[torch.Tensor] | None) -> None:
        # The optimizer creates its state in its own format; continue from there.
        if self.layout is not None:
            grads = [view for _, view in self.layout.param_views(self.grad)]
        for p, g in zip(self.parameters, grads, strict=True):
            p.grad = g
        self.optimizer.step()
        if self.layout is not None:
            self.layout.load(self.params[0])
        self.started = self._load_state()

    def _flat_step(self) -> None:
        """Adam's update of the flat buffers, as ``torch.optim.Adam``'s for-loop computes it."""
        group = self.group
        beta1, beta2 = group["betas"]
        step = self.step_count + self.flat_steps
        bias_correction1 = 1 - beta1**step
        bias_correction2 = 1 - beta2**step
        grad, exp_avg, exp_avg_sq = self.grad, self.exp_avgs[0], self.exp_avg_sqs[0]
        exp_avg.lerp_(grad, 1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        denom = exp_avg_sq.sqrt().div_(math.sqrt(bias_correction2)).add_(group["eps"])
        self.params[0].addcdiv_(exp_avg, denom, value=-group["lr"] / bias_correction1)

    @torch.no_grad()
    def finish(self) -> None:
        """With a layout: write parameters, moments and step counts back; leave the last
        gradients in ``.grad``.
        """
        layout = self.layout
        if layout is None:
            return
        last = self.grad.clone()
        for p, view in layout.param_views(last):
            p.grad = view
        steps = self.flat_steps
        if not steps:
            return
        layout.store(self.params[0])
        state = self.optimizer.state
        params = self.parameters
        layout.store(self.exp_avgs[0], {p: state[p]["exp_avg"] for p in params})
        layout.store(self.exp_avg_sqs[0], {p: state[p]["exp_avg_sq"] for p in params})
        for p in params:
            state[p]["step"].add_(steps)


def clip_flat_(grad: torch.Tensor, max_norm: float) -> None:
    """``clip_grad_norm_`` on a flat gradient: scale by ``min(1, max_norm / (norm + 1e-6))``."""
    total = torch.linalg.vector_norm(grad)
    grad.mul_(torch.clamp(max_norm / (total + 1e-6), max=1.0))


def adam_formula_(
    params: torch.Tensor,
    grad: torch.Tensor,
    exp_avg: torch.Tensor,
    exp_avg_sq: torch.Tensor,
    step: torch.Tensor,
    lr: torch.Tensor,
    beta1: float,
    beta2: float,
    eps: float,
) -> None:
    """Adam's update written out, with the step count and learning rate as tensors.

    For ``torch.compile`` (which fuses it with the gradient computation into one graph):
    :meth:`FlatAdam.step`'s arithmetic on flat buffers.
    """
    step.add_(1)
    bias_correction1 = 1 - beta1**step
    bias_correction2 = 1 - beta2**step
    exp_avg.lerp_(grad, 1 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    denom = (exp_avg_sq.sqrt() / bias_correction2.sqrt()).add_(eps)
    params.sub_((lr / bias_correction1) * exp_avg / denom)
