"""MLP actors: TensorDict policies with sampling, log-probabilities and a file format.

The actors are plain modules rather than torchrl ``ProbabilisticActor``s because one
``ProbabilisticActor`` call costs ~120 µs against ~30 µs for the same work written out
(speed notes §Q1); they still expose ``get_dist`` so torchrl-style losses can use them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from tensordict import TensorDictBase
from tensordict.nn import TensorDictModuleBase
from torch import nn
from torch.distributions import Categorical, Independent, Normal
from torchrl.data import Bounded, MultiCategorical
from torchrl.data import Categorical as CategoricalSpec
from torchrl.envs.utils import ExplorationType, exploration_type

from tdimitation.nn import build_mlp, mlp_forward


def is_deterministic() -> bool:
    """Whether torchrl's exploration type asks for deterministic actions."""
    return exploration_type() in (ExplorationType.DETERMINISTIC, ExplorationType.MODE)


class CategoricalActor(TensorDictModuleBase):
    """MLP policy over discrete actions.

    Writes ``action`` (int64 index; argmax when deterministic) and ``action_log_prob``.
    Sampling uses the Gumbel-max trick, which is exact and skips building a
    ``torch.distributions`` object per step.

    Args:
        obs_dim: flattened observation width.
        n_actions: number of discrete actions.
        hidden_sizes: hidden layer widths.
        activation: activation name (see :data:`tdimitation.nn.ACTIVATIONS`).
    """

    def __init__(
        self,
        obs_dim: int,
        n_actions: int,
        hidden_sizes: Sequence[int] = (32, 32),
        activation: str = "tanh",
    ) -> None:
        super().__init__()
        self.config = {
            "obs_dim": int(obs_dim),
            "n_actions": int(n_actions),
            "hidden_sizes": [int(h) for h in hidden_sizes],
            "activation": activation,
        }
        self.net = build_mlp(obs_dim, n_actions, hidden_sizes, activation, output_gain=0.01)
        self.in_keys = ["observation"]
        self.out_keys = ["action", "action_log_prob"]
        self._noise_cache: torch.Tensor | None = None
        self._noise_pos = 0

    def logits(self, observation: torch.Tensor) -> torch.Tensor:
        return mlp_forward(self.net, observation)

    def get_dist(self, tensordict: TensorDictBase) -> Categorical:
        return Categorical(logits=self.logits(tensordict.get("observation")))

    def log_prob(self, observation: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """Log-probability of ``action`` (int64 indices) in ``observation``."""
        log_p = torch.log_softmax(self.logits(observation), -1)
        return log_p.gather(-1, action.long().unsqueeze(-1)).squeeze(-1)

    def _gumbel_noise(self, like: torch.Tensor) -> torch.Tensor:
        # log(E), E ~ Exp(1), drawn in blocks of calls: one indexing op per step instead of
        # three random ops (collection calls the policy once per vector step).
        cache = self._noise_cache
        if cache is None or cache.shape[1:] != like.shape or self._noise_pos >= cache.shape[0]:
            cache = torch.empty((256,) + like.shape, dtype=like.dtype, device=like.device)
            self._noise_cache = cache.exponential_().log_()
            self._noise_pos = 0
        noise = self._noise_cache[self._noise_pos]
        self._noise_pos += 1
        return noise

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        log_p = torch.log_softmax(self.logits(tensordict.get("observation")), -1)
        if is_deterministic():
            action = log_p.argmax(-1)
        else:
            # Gumbel-max: argmax(log p - log E), E ~ Exp(1), samples from softmax(logits).
            action = (log_p - self._gumbel_noise(log_p)).argmax(-1)
        tensordict.set("action", action)
        tensordict.set("action_log_prob", log_p.gather(-1, action.unsqueeze(-1)).squeeze(-1))
        return tensordict


class GaussianActor(TensorDictModuleBase):
    """MLP policy over continuous actions: a diagonal Gaussian, clipped to the bounds.

    Writes ``action`` (the mean when deterministic) and ``action_log_prob`` (of the
    unclipped sample). The log standard deviation is a learned state-independent vector,
    as in Stable-Baselines3's PPO.

    Args:
        obs_dim: flattened observation width.
        action_dim: action width.
        low: lower action bounds (clipping), or None.
        high: upper action bounds, or None.
        hidden_sizes: hidden layer widths.
        activation: activation name.
        log_std_init: initial log standard deviation.
    """

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        low: Sequence[float] | None = None,
        high: Sequence[float] | None = None,
        hidden_sizes: Sequence[int] = (32, 32),
        activation: str = "tanh",
        log_std_init: float = 0.0,
    ) -> None:
        super().__init__()
        self.config = {
            "obs_dim": int(obs_dim),
            "action_dim": int(action_dim),
            "low": None if low is None else [float(x) for x in low],
            "high": None if high is None else [float(x) for x in high],
            "hidden_sizes": [int(h) for h in hidden_sizes],
            "activation": activation,
            "log_std_init": float(log_std_init),
        }
        self.net = build_mlp(obs_dim, action_dim, hidden_sizes, activation, output_gain=0.01)
        self.log_std = nn.Parameter(torch.full((action_dim,), float(log_std_init)))
        bounds = low is not None and high is not None
        self.register_buffer("low", torch.tensor(low, dtype=torch.float32) if bounds else None)
        self.register_buffer("high", torch.tensor(high, dtype=torch.float32) if bounds else None)
        self.in_keys = ["observation"]
        self.out_keys = ["action", "action_log_prob"]

    def get_dist(self, tensordict: TensorDictBase) -> Independent:
        loc = mlp_forward(self.net, tensordict.get("observation"))
        return Independent(Normal(loc, self.log_std.exp().expand_as(loc)), 1)

    def log_prob(self, observation: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        loc = mlp_forward(self.net, observation)
        var = (2 * self.log_std).exp()
        return (
            -0.5 * ((action - loc) ** 2 / var).sum(-1)
            - self.log_std.sum()
            - 0.5 * loc.shape[-1] * math.log(2 * math.pi)
        )

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        obs = tensordict.get("observation")
        loc = mlp_forward(self.net, obs)
        if is_deterministic():
            sample = loc
        else:
            sample = loc + torch.randn_like(loc) * self.log_std.exp()
        log_prob = self.log_prob(obs, sample)
        action = (
            sample
            if self.low is None
            else torch.maximum(torch.minimum(sample, self.high), self.low)
        )
        tensordict.set("action", action)
        tensordict.set("action_log_prob", log_prob)
        return tensordict


ACTOR_CLASSES: dict[str, type[TensorDictModuleBase]] = {
    "CategoricalActor": CategoricalActor,
    "GaussianActor": GaussianActor,
}


def build_actor(env, hidden_sizes: Sequence[int] = (32, 32), activation: str = "tanh"):
    """An MLP actor fitting ``env``'s observation and action specs.

    Discrete action spaces get a :class:`CategoricalActor`, Box action spaces a
    :class:`GaussianActor` clipped to the bounds.
    """
    obs_spec = env.observation_spec_unbatched["observation"]
    obs_dim = int(math.prod(obs_spec.shape)) if len(obs_spec.shape) else 1
    act_spec = env.full_action_spec_unbatched["action"]
    if isinstance(act_spec, CategoricalSpec) and not isinstance(act_spec, MultiCategorical):
        return CategoricalActor(obs_dim, act_spec.space.n, hidden_sizes, activation)
    if isinstance(act_spec, Bounded) or act_spec.dtype.is_floating_point:
        low = high = None
        if isinstance(act_spec, Bounded):
            low = act_spec.space.low.reshape(-1).tolist()
            high = act_spec.space.high.reshape(-1).tolist()
        action_dim = int(math.prod(act_spec.shape))
        return GaussianActor(obs_dim, action_dim, low, high, hidden_sizes, activation)
    raise NotImplementedError(f"no MLP actor for action spec {type(act_spec).__name__}")
