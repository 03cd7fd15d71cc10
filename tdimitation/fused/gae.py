"""Generalized advantage estimation: torchrl's function, with a faster CPU loop."""

from __future__ import annotations

import numpy as np
import torch
from torchrl.objectives.value.functional import generalized_advantage_estimate


@torch.no_grad()
def gae(
    gamma: float,
    lmbda: float,
    value: torch.Tensor,
    next_value: torch.Tensor,
    reward: torch.Tensor,
    done: torch.Tensor,
    terminated: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Torchrl's ``generalized_advantage_estimate`` (time at dim -2), bit for bit, faster.

    Returns ``(advantage, value_target)``. The same float expressions for the TD errors and
    discounts, then the backward recursion ``A_t = δ_t + γλ(1 - done_t) A_{t+1}`` over time
    in numpy: torchrl's loop costs four tensor ops (~20 µs) per time step, 40 ms for a
    2048-step round; numpy's ~2 µs. Other devices and shapes use torchrl's function.
    Bootstrapping stops at ``terminated``; ``done`` (terminated or truncated) cuts the
    recursion.
    """
    if value.device.type != "cpu" or value.shape != reward.shape:
        return generalized_advantage_estimate(
            gamma, lmbda, value, next_value, reward, done, terminated
        )
    not_done, not_terminated = (~done).int(), (~terminated).int()
    delta = reward + (gamma * not_terminated * next_value) - value
    discount = lmbda * gamma * not_done
    # Time first, so each step of the recursion reads contiguous rows.
    delta_t = delta.movedim(-2, 0).contiguous().numpy()
    discount_t = discount.movedim(-2, 0).contiguous().numpy()
    advantage_t = np.empty_like(delta_t)
    previous = np.zeros_like(delta_t[0])
    for t in range(delta_t.shape[0] - 1, -1, -1):
        previous = advantage_t[t] = delta_t[t] + previous * discount_t[t]
    advantage = torch.from_numpy(advantage_t).movedim(0, -2)
    return advantage, advantage + value
