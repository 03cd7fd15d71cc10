"""Small network builders shared by policies, critics and reward networks."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from tdimitation.errors import NetworkError

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
        raise NetworkError(
            f"unknown activation {activation!r}; choose one of {sorted(ACTIVATIONS)}"
        )
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


class _MomentNorm(nn.Module):
    """Shared part of :class:`RunningNorm` and :class:`EMANorm`: buffers and ``forward``.

    Subclasses implement ``_fold(batch_mean, batch_var, n)``; ``update`` computes the
    batch moments in float64 and calls it.
    """

    def __init__(self, shape: Sequence[int] | int, eps: float, clip: float | None) -> None:
        super().__init__()
        shape = (int(shape),) if isinstance(shape, int) else tuple(int(s) for s in shape)
        self.eps = float(eps)
        self.clip = clip
        self.register_buffer("mean", torch.zeros(shape, dtype=torch.float64))
        self.register_buffer("var", torch.ones(shape, dtype=torch.float64))
        self.register_buffer("count", torch.zeros((), dtype=torch.float64))

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        """Fold a batch of inputs ``[B, *shape]`` into the statistics."""
        batch = x.reshape(-1, *self.mean.shape).to(torch.float64)
        n = batch.shape[0]
        if n == 0:
            return
        self._fold(batch.mean(0), batch.var(0, correction=0), n)

    def _fold(self, batch_mean: torch.Tensor, batch_var: torch.Tensor, n: int) -> None:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = self.mean.to(x.dtype)
        std = (self.var + self.eps).sqrt().to(x.dtype)
        out = (x - mean) / std
        if self.clip is not None:
            out = out.clamp(-self.clip, self.clip)
        return out


class RunningNorm(_MomentNorm):
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
        super().__init__(shape, eps, clip)

    def _fold(self, batch_mean: torch.Tensor, batch_var: torch.Tensor, n: int) -> None:
        total = self.count + n
        delta = batch_mean - self.mean
        self.mean += delta * (n / total)
        # Combine sums of squared deviations (Chan et al.); var is the population variance.
        m2 = self.var * self.count + batch_var * n + delta.pow(2) * self.count * n / total
        self.var.copy_(m2 / total)
        self.count.copy_(total)


@torch.no_grad()
def discounted_returns(
    reward: torch.Tensor, done: torch.Tensor, carry: torch.Tensor, gamma: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Running discounted returns of ``[N, T]`` rewards, each env's sum reset after ``done``.

    ``carry`` ``[N]`` is each env's return before this block; returns the block's returns
    ``[N, T]`` and the carry after it (the statistics SB3's ``VecNormalize`` scales rewards
    by, computed per block instead of per step).
    """
    carry = carry.to(reward.device)
    returns = torch.empty_like(reward)
    for t in range(reward.shape[1]):
        carry = gamma * carry + reward[:, t]
        returns[:, t] = carry
        carry = torch.where(done[:, t], torch.zeros_like(carry), carry)
    return returns, carry


def scale_by_return_std(
    reward: torch.Tensor, return_norm: RunningNorm, clip: float = 10.0
) -> torch.Tensor:
    """``reward`` divided by the running std of the discounted return, clipped to ``±clip``.

    Scaled, not centred (as ``VecNormalize``): a shift would change which returns are best.
    """
    scale = (return_norm.var + return_norm.eps).sqrt().to(reward.dtype)
    return (reward / scale).clamp(-clip, clip)


class EMANorm(_MomentNorm):
    """Normalise inputs by exponentially weighted moving mean and variance, per batch.

    Same interface as :class:`RunningNorm` (``update(x)``, ``forward(x)``), but recent
    batches weigh more, so the statistics follow a drifting input (a reward net's output
    while it trains). The statistics after ``n`` batches are those of the mixture of all
    batches seen, batch ``i`` (0-based) weighted by ``decay ** (n - 1 - i)`` whatever its
    size: its mean is the weighted mean of the batch means, its variance the weighted mean
    of the batch variances plus the weighted spread of the batch means around the mean.

    They are computed incrementally: the ``n``-th batch (mean ``m_b``, population variance
    ``v_b``) enters with rate ``r = 1 / sum(decay ** k for k < n)``, so the first batch is
    taken whole (``r = 1``: no bias toward the placeholder mean 0 and variance 1) and ``r``
    falls to ``1 - decay`` as batches accumulate (a plain EMA in the limit). With
    ``delta = m_b - mean``::

        mean <- mean + r * delta
        var  <- (1 - r) * var + r * (v_b + (1 - r) * delta ** 2)

    which is the two-component mixture of the old statistics (weight ``1 - r``) and the
    batch (weight ``r``). With ``decay=0.5``, batches ``[1, 3]`` then ``[5, 7, 9]`` give
    rates 1 then 2/3, mean 16/3 and variance 23/3.

    Buffers (saved in state dicts and checkpoints): ``mean``, ``var``, ``count`` (samples
    seen), ``num_batches`` (int64) and ``inv_learning_rate`` (the sum ``1 / r`` after the
    last update).

    Args:
        shape: shape of one input (without the batch dimension); ``()`` for scalars.
        decay: weight of the old statistics relative to a new batch, in (0, 1).
        eps: added to the variance before the square root.
        clip: optional bound on the normalised values.
    """

    def __init__(
        self,
        shape: Sequence[int] | int,
        decay: float = 0.99,
        eps: float = 1e-8,
        clip: float | None = None,
    ) -> None:
        super().__init__(shape, eps, clip)
        if not 0.0 < float(decay) < 1.0:
            raise NetworkError(
                f"EMANorm decay must be in (0, 1), got {decay}; 0.99 averages over about "
                "the last 100 batches"
            )
        self.decay = float(decay)
        self.register_buffer("num_batches", torch.zeros((), dtype=torch.int64))
        self.register_buffer("inv_learning_rate", torch.zeros((), dtype=torch.float64))

    def _fold(self, batch_mean: torch.Tensor, batch_var: torch.Tensor, n: int) -> None:
        # Tensor arithmetic throughout: no host synchronisation when the buffers are on a GPU.
        self.inv_learning_rate += self.decay ** self.num_batches.to(torch.float64)
        rate = self.inv_learning_rate.reciprocal()
        delta = batch_mean - self.mean
        self.mean += rate * delta
        self.var.copy_((1 - rate) * self.var + rate * (batch_var + (1 - rate) * delta.pow(2)))
        self.num_batches += 1
        self.count += n


def build_cnn(
    in_channels: int,
    hidden_channels: Sequence[int] = (32, 64, 64),
    kernel_sizes: Sequence[int] = (8, 4, 3),
    strides: Sequence[int] = (4, 2, 1),
    activation: str = "relu",
) -> nn.Sequential:
    """A convolutional feature extractor: (Conv2d, activation) per layer, then Flatten.

    The defaults are the Nature-DQN stack, meant for images of about 84x84; smaller images
    need smaller kernels and strides. Input ``[B, C, H, W]`` (float), output ``[B, F]``;
    :func:`cnn_output_width` gives ``F`` for an image size.

    Args:
        in_channels: channels of the input images.
        hidden_channels: output channels of each conv layer.
        kernel_sizes: kernel size of each conv layer.
        strides: stride of each conv layer.
        activation: name in :data:`ACTIVATIONS`.
    """
    if activation not in ACTIVATIONS:
        raise NetworkError(
            f"unknown activation {activation!r}; choose one of {sorted(ACTIVATIONS)}"
        )
    if not (len(hidden_channels) == len(kernel_sizes) == len(strides)) or not hidden_channels:
        raise NetworkError(
            "build_cnn needs one kernel size and one stride per conv layer, got "
            f"hidden_channels={list(hidden_channels)}, kernel_sizes={list(kernel_sizes)}, "
            f"strides={list(strides)}"
        )
    layers: list[nn.Module] = []
    channels = int(in_channels)
    for out, kernel, stride in zip(hidden_channels, kernel_sizes, strides, strict=True):
        conv = nn.Conv2d(channels, int(out), int(kernel), int(stride))
        layers += [conv, ACTIVATIONS[activation]()]
        channels = int(out)
    layers.append(nn.Flatten())
    return nn.Sequential(*layers)


def cnn_output_width(cnn: nn.Module, image_shape: Sequence[int]) -> int:
    """Width of ``cnn``'s flat output for one ``(C, H, W)`` image.

    Raises a :class:`~tdimitation.errors.NetworkError` (a ``ValueError``) naming the image
    shape when it is too small for the conv stack.
    """
    try:
        with torch.no_grad():
            out = cnn(torch.zeros((1, *(int(s) for s in image_shape))))
    except RuntimeError as err:
        raise NetworkError(
            f"images of shape (C, H, W) = {tuple(image_shape)} are too small for this conv "
            f"stack ({err}); use smaller kernel_sizes/strides"
        ) from None
    return int(out.shape[-1])


def is_channels_last(image_shape: Sequence[int]) -> bool:
    """Whether a 3-d image shape is ``(H, W, C)`` rather than ``(C, H, W)``.

    Channels-last when the last dimension holds at most 4 channels (grey, RGB, RGBA or 4
    stacked frames) and the first does not: gymnasium's RGB frames are ``(210, 160, 3)``,
    Atari frame stacks ``(4, 84, 84)``.
    """
    return len(image_shape) == 3 and image_shape[-1] <= 4 < image_shape[0]


class ImageEncoder(nn.Module):
    """Features of image observations: a conv stack, then one Linear + ReLU layer.

    The defaults are the Nature-DQN network (Mnih et al. 2015): convolutions of 32, 64 and
    64 channels (kernels 8, 4, 3; strides 4, 2, 1) and 512 features, meant for images of
    about 84x84. ``forward`` takes observations ``[*B, *image_shape]`` and returns
    ``[*B, out_features]``; ``uint8`` pixels are scaled to [0, 1], float images are taken as
    already scaled. The constructor arguments are kept in ``config`` (primitives), so an
    owner can store them and rebuild the encoder.

    Args:
        image_shape: shape of one observation, ``(C, H, W)`` or ``(H, W, C)``.
        channels_last: whether the shape is ``(H, W, C)`` (None: guessed with
            :func:`is_channels_last`).
        hidden_channels: output channels of each conv layer.
        kernel_sizes: kernel size of each conv layer.
        strides: stride of each conv layer.
        features: width of the output (the Linear layer after the convolutions).
        activation: activation of the conv layers (name in :data:`ACTIVATIONS`).
    """

    def __init__(
        self,
        image_shape: Sequence[int],
        channels_last: bool | None = None,
        hidden_channels: Sequence[int] = (32, 64, 64),
        kernel_sizes: Sequence[int] = (8, 4, 3),
        strides: Sequence[int] = (4, 2, 1),
        features: int = 512,
        activation: str = "relu",
    ) -> None:
        super().__init__()
        shape = tuple(int(s) for s in image_shape)
        if len(shape) != 3:
            raise NetworkError(
                f"an image encoder needs observations of shape (C, H, W) or (H, W, C), got "
                f"{shape}; vector observations go to an MLP directly"
            )
        if channels_last is None:
            channels_last = is_channels_last(shape)
        self.config = {
            "image_shape": list(shape),
            "channels_last": bool(channels_last),
            "hidden_channels": [int(c) for c in hidden_channels],
            "kernel_sizes": [int(k) for k in kernel_sizes],
            "strides": [int(s) for s in strides],
            "features": int(features),
            "activation": activation,
        }
        self.image_shape = shape
        self.channels_last = bool(channels_last)
        c, h, w = (shape[2], shape[0], shape[1]) if channels_last else shape
        self.cnn = build_cnn(c, hidden_channels, kernel_sizes, strides, activation)
        self.linear = nn.Linear(cnn_output_width(self.cnn, (c, h, w)), int(features))
        self.out_features = int(features)

    def forward(self, observation: torch.Tensor) -> torch.Tensor:
        if tuple(observation.shape[-3:]) != self.image_shape:
            raise NetworkError(
                f"expected images of shape [*batch, {', '.join(map(str, self.image_shape))}], "
                f"got {list(observation.shape)}"
            )
        batch = observation.shape[:-3]
        x = observation.reshape(-1, *self.image_shape)
        if self.channels_last:
            x = x.permute(0, 3, 1, 2)
        weight = self.linear.weight
        # Moved while still uint8 (4x fewer bytes), then scaled in the network's dtype.
        x = x.to(weight.device)
        x = x.to(weight.dtype) / 255.0 if x.dtype == torch.uint8 else x.to(weight.dtype)
        x = torch.relu(F.linear(self.cnn(x), weight, self.linear.bias))
        return x.reshape(*batch, self.out_features)
