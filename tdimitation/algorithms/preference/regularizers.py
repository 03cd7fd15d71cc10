"""Regularisers of reward training, with an optional adaptive strength λ.

* :class:`LpRegularizer` adds ``λ · Σ_params ||w||_p`` to the loss.
* :class:`WeightDecayRegularizer` shrinks the weights directly after each backward pass,
  ``w ← w - λ · lr · w`` (decoupled from the loss and its gradient).
* :class:`IntervalParamScaler` adapts λ after each epoch from the validation/train loss
  ratio: overfitting (ratio above the interval) raises λ by ``1 + scaling_factor``,
  underfitting (below) lowers it by ``1 - scaling_factor``. It needs a validation split,
  which the reward trainer takes out of the preference dataset.

A regulariser is configured first (all primitives, so recipes can set it) and bound to a
network's parameters and optimizer by the reward trainer (:meth:`Regularizer.bind`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from tdimitation.errors import PreferenceError

LambdaUpdater = Callable[[float, float, float], float]


class IntervalParamScaler:
    """Scale λ up or down when val/train loss leaves ``tolerable_interval``.

    Args:
        scaling_factor: relative change per update, in (0, 1).
        tolerable_interval: ``(low, high)`` with ``0 <= low < high``.
    """

    def __init__(self, scaling_factor: float, tolerable_interval: Sequence[float]) -> None:
        if not 0.0 < scaling_factor < 1.0:
            raise PreferenceError(f"scaling_factor must be in (0, 1), got {scaling_factor}")
        interval = tuple(float(x) for x in tolerable_interval)
        if len(interval) != 2:
            raise PreferenceError(f"tolerable_interval needs 2 bounds, got {len(interval)}")
        low, high = interval
        if low < 0 or high <= low:
            raise PreferenceError(
                f"tolerable_interval must satisfy 0 <= low < high, got {list(interval)}"
            )
        self.scaling_factor = float(scaling_factor)
        self.low, self.high = low, high

    def __call__(self, lambda_: float, train_loss: float, val_loss: float) -> float:
        if train_loss <= 0:
            # A zero training loss: any validation loss means overfitting.
            ratio = float("inf") if val_loss > 0 else 1.0
        else:
            ratio = val_loss / train_loss
        if ratio > self.high:
            return lambda_ * (1.0 + self.scaling_factor)
        if ratio < self.low:
            return lambda_ * (1.0 - self.scaling_factor)
        return lambda_


class Regularizer:
    """Base class: a strength λ, an optional updater and validation split.

    Args:
        initial_lambda: starting strength.
        lambda_updater: ``(λ, train_loss, val_loss) -> λ'`` called after each epoch.
        val_split: share of the preferences held out to drive the updater (needed with
            an updater, refused without one).
    """

    def __init__(
        self,
        initial_lambda: float,
        lambda_updater: LambdaUpdater | None = None,
        val_split: float | None = None,
    ) -> None:
        if lambda_updater is None and initial_lambda == 0.0:
            raise PreferenceError(
                "a regulariser with initial_lambda 0 and no lambda_updater does nothing"
            )
        if lambda_updater is not None and val_split is None:
            raise PreferenceError("a lambda_updater needs val_split (the held-out share)")
        if lambda_updater is None and val_split is not None:
            raise PreferenceError("val_split is only used by a lambda_updater; give one")
        if val_split is not None and not 0.0 < float(val_split) < 1.0:
            raise PreferenceError(f"val_split must be in (0, 1), got {val_split}")
        self.lambda_ = float(initial_lambda)
        self.lambda_updater = lambda_updater
        self.val_split = None if val_split is None else float(val_split)
        self.params: list[torch.nn.Parameter] = []
        self.optimizer: torch.optim.Optimizer | None = None

    def bind(self, params, optimizer: torch.optim.Optimizer) -> Regularizer:
        """Attach the parameters and optimizer this regulariser acts on."""
        self.params = [p for p in params if p.requires_grad]
        self.optimizer = optimizer
        return self

    def penalty(self) -> torch.Tensor | None:
        """A term added to the loss (None: none)."""
        return None

    def after_backward(self) -> None:
        """Act on the weights after the backward pass (before the optimizer step)."""

    def update_params(self, train_loss: float, val_loss: float) -> None:
        """Update λ from the epoch's losses (a no-op without an updater)."""
        if self.lambda_updater is not None:
            self.lambda_ = float(self.lambda_updater(self.lambda_, train_loss, val_loss))

    def state_dict(self) -> dict[str, Any]:
        """λ (the only state that changes)."""
        return {"lambda": self.lambda_}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.lambda_ = float(state["lambda"])


class LpRegularizer(Regularizer):
    """Adds ``λ · Σ ||w||_p`` over the parameters to the loss.

    Args:
        p: order of the norm (> 0).
        **kwargs: see :class:`Regularizer`.
    """

    def __init__(self, initial_lambda: float, p: float = 2.0, **kwargs: Any) -> None:
        super().__init__(initial_lambda, **kwargs)
        if p <= 0:
            raise PreferenceError(f"the norm order p must be > 0, got {p}")
        self.p = float(p)

    def penalty(self) -> torch.Tensor:
        norms = torch._foreach_norm(self.params, self.p)
        return self.lambda_ * torch.stack(norms).sum()


class WeightDecayRegularizer(Regularizer):
    """Decoupled weight decay: ``w ← w - λ · lr · w`` after each backward pass."""

    @torch.no_grad()
    def after_backward(self) -> None:
        for group in self.optimizer.param_groups:
            params = [p for p in group["params"] if p.requires_grad]
            if params:
                torch._foreach_mul_(params, 1.0 - self.lambda_ * group["lr"])


#: Regulariser classes by name (the ``kind`` of :func:`make_regularizer`).
REGULARIZERS: dict[str, type[Regularizer]] = {
    "lp": LpRegularizer,
    "weight_decay": WeightDecayRegularizer,
}


def make_regularizer(
    kind: str,
    initial_lambda: float,
    val_split: float | None = None,
    scaling_factor: float | None = None,
    tolerable_interval: Sequence[float] | None = None,
    **kwargs: Any,
) -> Regularizer:
    """A regulariser from primitives (a recipe's ``regularizer:`` mapping).

    ``scaling_factor`` and ``tolerable_interval`` together build an
    :class:`IntervalParamScaler`; other keys (``p``) go to the class.
    """
    if kind not in REGULARIZERS:
        raise PreferenceError(f"unknown regularizer {kind!r}; choose one of {sorted(REGULARIZERS)}")
    updater = None
    if scaling_factor is not None or tolerable_interval is not None:
        if scaling_factor is None or tolerable_interval is None:
            raise PreferenceError("the λ scaler needs both scaling_factor and tolerable_interval")
        updater = IntervalParamScaler(scaling_factor, tolerable_interval)
    return REGULARIZERS[kind](initial_lambda, lambda_updater=updater, val_split=val_split, **kwargs)


__all__ = [
    "REGULARIZERS",
    "IntervalParamScaler",
    "LpRegularizer",
    "Regularizer",
    "WeightDecayRegularizer",
    "make_regularizer",
]
