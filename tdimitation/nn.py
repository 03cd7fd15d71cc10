"""Small network builders shared by policies, critics and reward networks."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "leaky_relu": nn.LeakyReLU,
    "silu": nn.SiLU,
}


def build_mlp(
    in_features: int,
    out_features: int,
    hidden_sizes: Sequence[int] = (32, 32),
    activation: str = "tanh",
    *,
    output_gain: float | None = None,
) -> nn.Sequential:
    """A plain MLP: Linear, activation, ..., Linear.

    Args:
        in_features: input width.
        out_features: output width.
        hidden_sizes: widths of the hidden layers (empty for a linear map).
        activation: name in :data:`ACTIVATIONS`.
        output_gain: if set, orthogonal initialisation of the last layer with this gain and
            a zero bias (0.01 is usual for policy heads, 1.0 for value heads).
    """
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; choose one of {sorted(ACTIVATIONS)}")
    layers: list[nn.Module] = []
    width = in_features
    for size in hidden_sizes:
        layers += [nn.Linear(width, int(size)), ACTIVATIONS[activation]()]
        width = int(size)
    last = nn.Linear(width, out_features)
    if output_gain is not None:
        nn.init.orthogonal_(last.weight, gain=output_gain)
        nn.init.zeros_(last.bias)
    layers.append(last)
    return nn.Sequential(*layers)


def mlp_forward(mlp: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """Evaluate an MLP built by :func:`build_mlp` without per-layer module calls.

    Same result as ``mlp(x)``, but each layer is a functional call: ``nn.Module.__call__``
    costs ~5 µs per layer, which is as much as the layer's arithmetic at collection batch
    sizes (8-64 rows) on CPU. Falls back to ``mlp(x)`` for layers it does not know.
    """
    for layer in mlp:
        kind = type(layer)
        if kind is nn.Linear:
            x = F.linear(x, layer.weight, layer.bias)
        elif kind in _FUNCTIONAL:
            x = _FUNCTIONAL[kind](x)
        else:
            x = layer(x)
    return x


_FUNCTIONAL = {
    nn.Tanh: torch.tanh,
    nn.ReLU: torch.relu,
    nn.SiLU: F.silu,
    nn.GELU: F.gelu,
    nn.ELU: F.elu,
}


class RunningNorm(nn.Module):
    """Normalise inputs by running mean and variance (exact, over everything seen).

    ``update(x)`` folds a batch ``[B, *shape]`` into the statistics with the parallel
    variance formula; ``forward(x)`` returns ``(x - mean) / sqrt(var + eps)``, clipped to
    ``±clip`` when ``clip`` is set. Statistics are buffers, so they travel in state dicts
    and checkpoints, and a saved policy carries them. Batches ``[1, 3]`` then ``[5, 7, 9]``
    give mean 5 and (population) variance 8.

    Args:
        shape: shape of one input (without the batch dimension).
        eps: added to the variance before the square root.
        clip: optional bound on the normalised values.
    """

    def __init__(self, shape: Sequence[int] | int, eps: float = 1e-8, clip: float | None = None):
        super().__init__()
        shape = (int(shape),) if isinstance(shape, int) else tuple(int(s) for s in shape)
        self.eps = float(eps)
        self.clip = clip
        self.register_buffer("mean", torch.zeros(shape, dtype=torch.float64))
        self.register_buffer("var", torch.ones(shape, dtype=torch.float64))
        self.register_buffer("count", torch.zeros((), dtype=torch.float64))

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        """Fold a batch of inputs into the running statistics."""
        batch = x.reshape(-1, *self.mean.shape).to(torch.float64)
        n = batch.shape[0]
        if n == 0:
            return
        batch_mean = batch.mean(0)
        batch_var = batch.var(0, correction=0)
        total = self.count + n
        delta = batch_mean - self.mean
        self.mean += delta * (n / total)
        # Combine sums of squared deviations (Chan et al.); var is the population variance.
        m2 = self.var * self.count + batch_var * n + delta.pow(2) * self.count * n / total
        self.var.copy_(m2 / total)
        self.count.copy_(total)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = self.mean.to(x.dtype)
        std = (self.var + self.eps).sqrt().to(x.dtype)
        out = (x - mean) / std
        if self.clip is not None:
            out = out.clamp(-self.clip, self.clip)
        return out
