"""Value critics for actor-critic algorithms."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tensordict import TensorDictBase
from tensordict.nn import TensorDictModuleBase

from tdimitation.nn import ImageEncoder, RunningNorm, build_mlp, mlp_forward


class ValueCritic(TensorDictModuleBase):
    """State-value MLP: reads ``observation``, writes ``state_value`` ``[..., 1]``.

    Args:
        obs_dim: observation width (the encoder's output width when ``encoder`` is given).
        hidden_sizes: hidden layer widths.
        activation: activation name.
        obs_norm: observation normaliser to share with the actor (the critic never
            updates it), or None.
        encoder: image encoder of the critic's own (image observations), or None.
    """

    def __init__(
        self,
        obs_dim: int,
        hidden_sizes: Sequence[int] = (64, 64),
        activation: str = "tanh",
        obs_norm: RunningNorm | None = None,
        encoder: ImageEncoder | None = None,
    ) -> None:
        super().__init__()
        self.net = build_mlp(obs_dim, 1, hidden_sizes, activation, output_gain=1.0)
        self.obs_norm = obs_norm
        self.encoder = encoder
        self.in_keys = ["observation"]
        self.out_keys = ["state_value"]

    def value(self, observation: torch.Tensor) -> torch.Tensor:
        """State values ``[..., 1]``."""
        if self.encoder is not None:
            x = self.encoder(observation)
        else:
            x = observation if self.obs_norm is None else self.obs_norm(observation)
        return mlp_forward(self.net, x)

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        tensordict.set("state_value", self.value(tensordict.get("observation")))
        return tensordict
