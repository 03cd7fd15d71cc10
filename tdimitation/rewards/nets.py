"""Reward networks on vectors and discrete spaces: MLP nets, potentials, shaping, zero.

The base classes, errors and class registry are in :mod:`tdimitation.rewards.base`, the
image nets in :mod:`tdimitation.rewards.cnn`; every name stays importable from this
module too. See :class:`~tdimitation.rewards.base.RewardNet` for the two ways of
evaluating a net.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tensordict.utils import NestedKey
from torch import nn

from tdimitation.nn import EMANorm, RunningNorm, build_mlp, mlp_forward
from tdimitation.rewards.base import (
    DEFAULT_KEYS,
    REWARD_CLASSES,
    REWARD_INPUTS,
    MaybeTensor,
    RewardFileError,
    RewardNet,
    RewardNetError,
    RewardNetWrapper,
    _check_common,
    _check_num_states,
    _check_uses,
    _mlp,
    build_from_spec,
    env_spaces,
    evaluating,
    iter_reward_nets,
    module_spec,
    num_states_from_env,
    observation_batch_shape,
    observation_features,
    observation_width,
    register_reward_class,
    spaces_from_env,
)
from tdimitation.rewards.cnn import CNNPotential, CNNRewardNet

#: Input normalisers of :class:`MLPRewardNet` by ``normalize_input`` name.
INPUT_NORMALIZERS: dict[str, type[nn.Module]] = {"running": RunningNorm, "ema": EMANorm}


def _input_normalizer_name(value: str | bool | None) -> str | None:
    # True/False are the older boolean form (recipes and GAIL/AIRL pass True).
    if value is True:
        return "running"
    if value is False or value is None:
        return None
    if value not in INPUT_NORMALIZERS:
        raise RewardNetError(
            f"unknown normalize_input {value!r}; choose None, "
            f"{', '.join(map(repr, INPUT_NORMALIZERS))}"
        )
    return value


@register_reward_class
class MLPRewardNet(RewardNet):
    """An MLP over the flattened, concatenated selected inputs.

    Discrete actions and discrete observations are one-hot encoded (FrozenLake's input
    is 16 + 4 wide for state and action); ``done`` enters as a 0/1 feature. With
    ``normalize_input`` a :class:`~tdimitation.nn.RunningNorm` (``"running"``: exact
    statistics of every input seen) or :class:`~tdimitation.nn.EMANorm` (``"ema"``, decay
    0.99: per-batch exponentially weighted) standardises the concatenated input; its
    statistics are updated by :meth:`reward` in training mode only (so by discriminator
    training, not by RL rollouts).

    Args:
        observation_shape: shape of one observation (flattened inside); ``()`` for a
            discrete observation.
        action_dim: number of discrete actions, or the continuous action width.
        discrete_actions: whether actions are int64 indices.
        use_state: feed the observation.
        use_action: feed the action.
        use_next_state: feed the next observation.
        use_done: feed the done flag.
        hidden_sizes: hidden layer widths.
        activation: activation name (see :data:`tdimitation.nn.ACTIVATIONS`).
        dropout: dropout probability after each hidden layer (training mode only).
        normalize_input: ``None`` (no input normalisation), ``"running"`` or ``"ema"``.
            ``True`` means ``"running"`` and ``False`` means ``None`` (older recipes and
            files); the config stores the name.
        num_states: number of values of a discrete observation (one-hot encoded), or
            None for array observations (see :class:`RewardNet`).
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
        hidden_sizes: Sequence[int] = (32, 32),
        activation: str = "relu",
        dropout: float = 0.0,
        normalize_input: str | bool | None = None,
        num_states: int | None = None,
        out_key: NestedKey = "learned_reward",
    ) -> None:
        super().__init__(
            observation_shape, action_dim, discrete_actions, num_states=num_states, out_key=out_key
        )
        normalize_input = _input_normalizer_name(normalize_input)
        _check_uses(
            "MLPRewardNet",
            use_state=use_state,
            use_action=use_action,
            use_next_state=use_next_state,
            use_done=use_done,
        )
        _check_common(activation, dropout)
        self.use_state, self.use_action = bool(use_state), bool(use_action)
        self.use_next_state, self.use_done = bool(use_next_state), bool(use_done)
        self._config = {
            "observation_shape": list(self.observation_shape),
            "action_dim": self.action_dim,
            "discrete_actions": self.discrete_actions,
            "use_state": self.use_state,
            "use_action": self.use_action,
            "use_next_state": self.use_next_state,
            "use_done": self.use_done,
            "hidden_sizes": [int(h) for h in hidden_sizes],
            "activation": activation,
            "dropout": float(dropout),
            "normalize_input": normalize_input,
            "num_states": self.num_states,
        }
        width = (
            self.observation_width * (self.use_state + self.use_next_state)
            + self.action_dim * self.use_action
            + self.use_done
        )
        self.input_norm = INPUT_NORMALIZERS[normalize_input](width) if normalize_input else None
        self.mlp = _mlp(width, hidden_sizes, activation, float(dropout))

    @classmethod
    def from_env(cls, env, **kwargs) -> MLPRewardNet:
        """A net fitting ``env``'s observation and action specs; kwargs as in the constructor."""
        return cls(**env_spaces(env), **kwargs)

    def used_inputs(self) -> frozenset[str]:
        flags = (self.use_state, self.use_action, self.use_next_state, self.use_done)
        return frozenset(name for name, on in zip(REWARD_INPUTS, flags, strict=True) if on)

    def uses_training_mode(self) -> bool:
        return self.input_norm is not None  # input statistics update in training mode

    def reward(
        self,
        observation: MaybeTensor,
        action: MaybeTensor,
        next_observation: MaybeTensor,
        done: MaybeTensor,
    ) -> torch.Tensor:
        batch = self._batch_shape(
            observation if self.use_state else None,
            action if self.use_action else None,
            next_observation if self.use_next_state else None,
            done if self.use_done else None,
        )
        parts = []
        if self.use_state:
            parts.append(self._flat_observation(self._require("observation", observation), batch))
        if self.use_action:
            parts.append(self._action_features(self._require("action", action), batch))
        if self.use_next_state:
            nxt = self._require("next_observation", next_observation)
            parts.append(self._flat_observation(nxt, batch))
        if self.use_done:
            parts.append(self._done_feature(self._require("done", done), batch))
        x = parts[0] if len(parts) == 1 else torch.cat(parts, -1)
        if self.input_norm is not None:
            if self.training:
                self.input_norm.update(x.detach())
            x = self.input_norm(x)
        return mlp_forward(self.mlp, x).squeeze(-1)


@register_reward_class
class MLPPotential(nn.Module):
    """A state potential Φ(s) for reward shaping: an MLP on the flattened observation.

    Args:
        observation_shape: shape of one observation.
        hidden_sizes: hidden layer widths.
        activation: activation name.
        num_states: number of values of a discrete observation (one-hot encoded), or
            None for array observations.
    """

    mode_free = True  # forward ignores training mode

    def __init__(
        self,
        observation_shape: Sequence[int],
        hidden_sizes: Sequence[int] = (32, 32),
        activation: str = "relu",
        num_states: int | None = None,
    ) -> None:
        super().__init__()
        _check_common(activation, 0.0)
        self.observation_shape = tuple(int(s) for s in observation_shape)
        _check_num_states(num_states, self.observation_shape)
        self.num_states = None if num_states is None else int(num_states)
        self.config = {
            "observation_shape": list(self.observation_shape),
            "hidden_sizes": [int(h) for h in hidden_sizes],
            "activation": activation,
            "num_states": self.num_states,
        }
        width = observation_width(self.observation_shape, self.num_states)
        self.mlp = build_mlp(width, 1, hidden_sizes, activation)

    def forward(self, observation: torch.Tensor) -> torch.Tensor:
        batch = observation_batch_shape(
            observation, self.observation_shape, self.num_states, "MLPPotential observation"
        )
        x = observation_features(observation, batch, self.num_states)
        return mlp_forward(self.mlp, x).squeeze(-1)


@register_reward_class
class ZeroRewardNet(RewardNet):
    """A reward of 0 for every transition (``imitation``'s ``zero`` reward), ``[*B]``.

    A baseline ("what does RL learn without reward?") and a placeholder where a reward
    function is required. It has no parameters; the batch shape is read from the
    observation.

    Args:
        observation_shape: shape of one observation.
        action_dim: number of discrete actions, or the continuous action width.
        discrete_actions: whether actions are int64 indices.
        num_states: number of values of a discrete observation, or None.
        out_key: TensorDict key ``forward`` writes.
    """

    def __init__(
        self,
        observation_shape: Sequence[int],
        action_dim: int,
        discrete_actions: bool,
        *,
        num_states: int | None = None,
        out_key: NestedKey = "learned_reward",
    ) -> None:
        super().__init__(
            observation_shape, action_dim, discrete_actions, num_states=num_states, out_key=out_key
        )
        self._config = {
            "observation_shape": list(self.observation_shape),
            "action_dim": self.action_dim,
            "discrete_actions": self.discrete_actions,
            "num_states": self.num_states,
        }

    @classmethod
    def from_env(cls, env, **kwargs) -> ZeroRewardNet:
        """A zero reward for ``env``'s spaces."""
        return cls(**env_spaces(env), **kwargs)

    def used_inputs(self) -> frozenset[str]:
        return frozenset({"observation"})

    def uses_training_mode(self) -> bool:
        return False

    def reward(
        self,
        observation: MaybeTensor,
        action: MaybeTensor,
        next_observation: MaybeTensor,
        done: MaybeTensor,
    ) -> torch.Tensor:
        observation = self._require("observation", observation)
        batch = self._batch_shape(observation, None, None, None)
        return torch.zeros(batch, device=observation.device)


@register_reward_class
class ShapedRewardNet(RewardNetWrapper):
    """Potential-based shaping: ``r(s, a, s', d) + γ·(1 − d)·Φ(s') − Φ(s)``.

    Shaping by a potential leaves optimal policies unchanged (Ng et al., 1999), so AIRL
    trains the shaped net and evaluates the unshaped ``.base``. ``done`` masks the next
    potential: after the last step there is no future. To mask terminations only (and
    bootstrap through time-limit truncations) use ``set_keys(done=("next",
    "terminated"))``. Shaping must apply to the raw reward, so ``base`` may not contain
    normalisation wrappers (wrap the shaped net instead).

    Args:
        base: the reward net being shaped (the unshaped reward).
        potential: a module mapping observations ``[*B, *obs_shape]`` to ``[*B]`` (or
            ``[*B, 1]``); default an MLP (32, 32) (:class:`MLPPotential`, one-hot
            encoding discrete observations), or a
            :class:`CNNPotential` with the base's architecture when ``base`` is a
            :class:`CNNRewardNet`.
        discount: γ, the RL discount factor, in [0, 1].
        out_key: TensorDict key ``forward`` writes (default: the base's).
    """

    def __init__(
        self,
        base: RewardNet,
        potential: nn.Module | None = None,
        discount: float = 0.99,
        *,
        out_key: NestedKey | None = None,
    ) -> None:
        super().__init__(base, out_key=out_key)
        for inner in iter_reward_nets(base):
            if inner.processes_output:
                raise RewardNetError(
                    f"ShapedRewardNet cannot wrap a {type(inner).__name__}: shaping applies "
                    "to the raw reward; wrap the shaped net instead, e.g. "
                    "NormalizedRewardNet(ShapedRewardNet(net))"
                )
        if not 0.0 <= float(discount) <= 1.0:
            raise RewardNetError(f"discount must be in [0, 1], got {discount}")
        if potential is None:
            if isinstance(base, CNNRewardNet):
                # Same conv architecture as the base, which is known to fit the images.
                arch = ("hidden_channels", "kernel_sizes", "strides", "hidden_sizes", "activation")
                potential = CNNPotential(
                    base.observation_shape,
                    hwc_format=base.hwc_format,
                    **{k: base._config[k] for k in arch},
                )
            else:
                potential = MLPPotential(base.observation_shape, num_states=base.num_states)
        self.potential = potential
        self.discount = float(discount)
        self._config = {"discount": self.discount}

    @classmethod
    def from_env(
        cls,
        env,
        *,
        discount: float = 0.99,
        potential_hidden_sizes: Sequence[int] = (32, 32),
        **base_kwargs,
    ) -> ShapedRewardNet:
        """An :class:`MLPRewardNet` base (``base_kwargs``) shaped by an MLP potential.

        The defaults are ``imitation``'s ``BasicShapedRewardNet``: base hidden sizes
        ``(32,)`` (unless ``base_kwargs`` sets ``hidden_sizes``), potential ``(32, 32)``,
        discount 0.99.
        """
        base_kwargs.setdefault("hidden_sizes", (32,))
        base = MLPRewardNet.from_env(env, **base_kwargs)
        activation = base_kwargs.get("activation", "relu")
        potential = MLPPotential(
            base.observation_shape, potential_hidden_sizes, activation, num_states=base.num_states
        )
        return cls(base, potential, discount)

    def used_inputs(self) -> frozenset[str]:
        return self.base.used_inputs() | {"observation", "next_observation", "done"}

    def _potential(self, observation: torch.Tensor, batch: torch.Size) -> torch.Tensor:
        value = self.potential(observation)
        return value.reshape(batch)

    def reward(
        self,
        observation: MaybeTensor,
        action: MaybeTensor,
        next_observation: MaybeTensor,
        done: MaybeTensor,
    ) -> torch.Tensor:
        observation = self._require("observation", observation)
        next_observation = self._require("next_observation", next_observation)
        batch = self._batch_shape(observation, None, None, None)
        base = self.base.reward(observation, action, next_observation, done)
        not_done = 1.0 - self._done_feature(self._require("done", done), batch).squeeze(-1)
        phi = self._potential(observation, batch)
        phi_next = self._potential(next_observation, batch)
        return base + self.discount * not_done * phi_next - phi

    def _own_config(self) -> dict:
        return {
            "base": module_spec(self.base),
            "potential": module_spec(self.potential),
            **self._config,
        }

    @classmethod
    def _from_plain_config(cls, config: dict) -> RewardNet:
        config = dict(config)
        base = build_from_spec(config.pop("base"))
        potential = build_from_spec(config.pop("potential"))
        return cls(base, potential, **config)


__all__ = [
    "REWARD_INPUTS",
    "DEFAULT_KEYS",
    "REWARD_CLASSES",
    "INPUT_NORMALIZERS",
    "MaybeTensor",
    "RewardNetError",
    "RewardFileError",
    "RewardNet",
    "RewardNetWrapper",
    "MLPRewardNet",
    "CNNRewardNet",
    "MLPPotential",
    "CNNPotential",
    "ShapedRewardNet",
    "ZeroRewardNet",
    "register_reward_class",
    "module_spec",
    "build_from_spec",
    "spaces_from_env",
    "num_states_from_env",
    "env_spaces",
    "observation_batch_shape",
    "observation_features",
    "observation_width",
    "iter_reward_nets",
    "evaluating",
]
