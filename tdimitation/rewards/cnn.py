"""Reward nets and potentials for image observations: a conv stack, then an MLP head."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tensordict.utils import NestedKey
from torch import nn

from tdimitation.errors import SpaceMismatchError
from tdimitation.nn import build_cnn, build_mlp, cnn_output_width, mlp_forward
from tdimitation.rewards.base import (
    REWARD_INPUTS,
    MaybeTensor,
    RewardNet,
    RewardNetError,
    _check_common,
    _mlp,
    register_reward_class,
    spaces_from_env,
)


def _image_layout(observation_shape: Sequence[int], hwc_format: bool) -> tuple[int, int, int]:
    """``(C, H, W)`` of image observations, or a clear error if they are not images."""
    if len(observation_shape) != 3:
        raise SpaceMismatchError(
            f"CNN reward nets and potentials need image observations (H, W, C) or (C, H, W); "
            f"got shape {tuple(observation_shape)} (use MLPRewardNet for vectors)"
        )
    if hwc_format:
        h, w, c = observation_shape
    else:
        c, h, w = observation_shape
    return int(c), int(h), int(w)


def _guess_hwc(observation_shape: Sequence[int]) -> bool:
    # Images with at most 4 trailing channels (grey, RGB, RGBA, 4 stacked frames) are HWC.
    return len(observation_shape) == 3 and observation_shape[-1] <= 4 < observation_shape[0]


class _ImageFeatures(nn.Module):
    """Shared by the CNN net and potential: images to float ``[*B, C, H, W]`` in [0, 1]."""

    mode_free = True

    def __init__(self, observation_shape: Sequence[int], hwc_format: bool) -> None:
        super().__init__()
        self.observation_shape = tuple(int(s) for s in observation_shape)
        self.hwc_format = bool(hwc_format)
        self.chw = _image_layout(self.observation_shape, self.hwc_format)

    def image(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Size]:
        """``obs [*B, *obs_shape]`` as float ``[prod(B), C, H, W]`` and the batch shape."""
        batch = obs.shape[:-3]
        if tuple(obs.shape[-3:]) != self.observation_shape:
            raise SpaceMismatchError(
                f"expected image observations of shape [*batch, {self.observation_shape}], got "
                f"{tuple(obs.shape)}"
            )
        x = obs.reshape(-1, *self.observation_shape)
        if self.hwc_format:
            x = x.permute(0, 3, 1, 2)
        # uint8 pixels are scaled to [0, 1]; float images are taken as already scaled.
        x = x.to(torch.get_default_dtype()) / 255.0 if obs.dtype == torch.uint8 else x.float()
        return x, batch


@register_reward_class
class CNNRewardNet(RewardNet):
    """A reward net for image observations: conv features, then an MLP head.

    The observation and next observation (those used) are stacked along channels and go
    through one conv stack (:func:`~tdimitation.nn.build_cnn`, Nature-DQN-like by
    default), so the convolutions can compare them. The action (one-hot when discrete) and
    done flag are concatenated to the conv features before the MLP head. ``uint8`` pixels
    are scaled to [0, 1]; float images are used as they are.

    Args:
        observation_shape: ``(H, W, C)`` (``hwc_format=True``) or ``(C, H, W)``.
        action_dim: number of discrete actions, or the continuous action width.
        discrete_actions: whether actions are int64 indices.
        use_state: feed the observation.
        use_action: feed the action.
        use_next_state: feed the next observation.
        use_done: feed the done flag.
        hwc_format: whether images are channels-last (gymnasium's convention).
        hidden_channels: channels of the conv layers.
        kernel_sizes: kernel sizes of the conv layers.
        strides: strides of the conv layers.
        hidden_sizes: widths of the MLP head's hidden layers.
        activation: activation name.
        dropout: dropout probability after each hidden layer of the head.
        out_key: TensorDict key ``forward`` writes.
    """

    def __init__(
        self,
        observation_shape: Sequence[int],
        action_dim: int,
        discrete_actions: bool,
        *,
        use_state: bool = True,
        use_action: bool = True,
        use_next_state: bool = False,
        use_done: bool = False,
        hwc_format: bool = True,
        hidden_channels: Sequence[int] = (32, 64, 64),
        kernel_sizes: Sequence[int] = (8, 4, 3),
        strides: Sequence[int] = (4, 2, 1),
        hidden_sizes: Sequence[int] = (512,),
        activation: str = "relu",
        dropout: float = 0.0,
        out_key: NestedKey = "learned_reward",
    ) -> None:
        super().__init__(observation_shape, action_dim, discrete_actions, out_key=out_key)
        if not (use_state or use_next_state):
            raise RewardNetError(
                "CNNRewardNet needs an image: set use_state or use_next_state to True"
            )
        _check_common(activation, dropout)
        self.use_state, self.use_action = bool(use_state), bool(use_action)
        self.use_next_state, self.use_done = bool(use_next_state), bool(use_done)
        self.images = _ImageFeatures(self.observation_shape, hwc_format)
        self.hwc_format = bool(hwc_format)
        self._config = {
            "observation_shape": list(self.observation_shape),
            "action_dim": self.action_dim,
            "discrete_actions": self.discrete_actions,
            "use_state": self.use_state,
            "use_action": self.use_action,
            "use_next_state": self.use_next_state,
            "use_done": self.use_done,
            "hwc_format": self.hwc_format,
            "hidden_channels": [int(c) for c in hidden_channels],
            "kernel_sizes": [int(k) for k in kernel_sizes],
            "strides": [int(s) for s in strides],
            "hidden_sizes": [int(h) for h in hidden_sizes],
            "activation": activation,
            "dropout": float(dropout),
        }
        c, h, w = self.images.chw
        in_channels = c * (self.use_state + self.use_next_state)
        self.cnn = build_cnn(in_channels, hidden_channels, kernel_sizes, strides, activation)
        features = cnn_output_width(self.cnn, (in_channels, h, w))
        width = features + self.action_dim * self.use_action + self.use_done
        self.head = _mlp(width, hidden_sizes, activation, float(dropout))

    @classmethod
    def from_env(cls, env, **kwargs) -> CNNRewardNet:
        """A net for ``env``'s image observations; kwargs as in the constructor.

        ``hwc_format`` is guessed when not given: channels-last when the last dimension
        is at most 4.
        """
        obs_shape, action_dim, discrete = spaces_from_env(env)
        kwargs.setdefault("hwc_format", _guess_hwc(obs_shape))
        return cls(obs_shape, action_dim, discrete, **kwargs)

    def used_inputs(self) -> frozenset[str]:
        flags = (self.use_state, self.use_action, self.use_next_state, self.use_done)
        return frozenset(name for name, on in zip(REWARD_INPUTS, flags, strict=True) if on)

    def uses_training_mode(self) -> bool:
        return False  # dropout layers are submodules, switched on their own

    def reward(
        self,
        observation: MaybeTensor,
        action: MaybeTensor,
        next_observation: MaybeTensor,
        done: MaybeTensor,
    ) -> torch.Tensor:
        images = []
        batch = None
        if self.use_state:
            x, batch = self.images.image(self._require("observation", observation))
            images.append(x)
        if self.use_next_state:
            x, batch = self.images.image(self._require("next_observation", next_observation))
            images.append(x)
        x = images[0] if len(images) == 1 else torch.cat(images, 1)
        parts = [self.cnn(x).reshape(*batch, -1)]
        if self.use_action:
            parts.append(self._action_features(self._require("action", action), batch))
        if self.use_done:
            parts.append(self._done_feature(self._require("done", done), batch))
        features = parts[0] if len(parts) == 1 else torch.cat(parts, -1)
        return mlp_forward(self.head, features).squeeze(-1)


@register_reward_class
class CNNPotential(nn.Module):
    """A state potential Φ(s) for image observations: conv stack, then an MLP.

    Args:
        observation_shape: ``(H, W, C)`` or ``(C, H, W)`` (see ``hwc_format``).
        hwc_format: whether images are channels-last.
        hidden_channels: channels of the conv layers.
        kernel_sizes: kernel sizes of the conv layers.
        strides: strides of the conv layers.
        hidden_sizes: widths of the MLP's hidden layers.
        activation: activation name.
    """

    mode_free = True  # forward ignores training mode

    def __init__(
        self,
        observation_shape: Sequence[int],
        hwc_format: bool = True,
        hidden_channels: Sequence[int] = (32, 64, 64),
        kernel_sizes: Sequence[int] = (8, 4, 3),
        strides: Sequence[int] = (4, 2, 1),
        hidden_sizes: Sequence[int] = (512,),
        activation: str = "relu",
    ) -> None:
        super().__init__()
        _check_common(activation, 0.0)
        self.images = _ImageFeatures(observation_shape, hwc_format)
        self.config = {
            "observation_shape": list(self.images.observation_shape),
            "hwc_format": bool(hwc_format),
            "hidden_channels": [int(c) for c in hidden_channels],
            "kernel_sizes": [int(k) for k in kernel_sizes],
            "strides": [int(s) for s in strides],
            "hidden_sizes": [int(h) for h in hidden_sizes],
            "activation": activation,
        }
        c, h, w = self.images.chw
        self.cnn = build_cnn(c, hidden_channels, kernel_sizes, strides, activation)
        features = cnn_output_width(self.cnn, (c, h, w))
        self.head = build_mlp(features, 1, hidden_sizes, activation)

    def forward(self, observation: torch.Tensor) -> torch.Tensor:
        x, batch = self.images.image(observation)
        return mlp_forward(self.head, self.cnn(x)).squeeze(-1).reshape(batch)


__all__ = ["CNNRewardNet", "CNNPotential"]
