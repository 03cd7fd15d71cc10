"""The one-step Q-learning loss that :class:`~tdimitation.rl.DQN` trains with.

:class:`QLearningLoss` is a torchrl ``LossModule`` (declared keys, ``set_keys``) computed on
plain tensors: torchrl's ``DQNLoss`` gives the same value (tested) but spends several hundred
microseconds per call on TensorDict and functional-parameter bookkeeping, more than the
arithmetic of a minibatch of 64 on CPU.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tensordict import TensorDict, TensorDictBase
from tensordict.utils import NestedKey
from torchrl.objectives import LossModule

from tdimitation.nn import mlp_forward
from tdimitation.policies.actors import QValueActor
from tdimitation.policies.adapters import as_q_network

__all__ = ["QLearningLoss"]

_LOSS_FUNCTIONS = ("smooth_l1", "l2")


class QLearningLoss(LossModule):
    """One-step Q-learning loss with a target network (optionally double DQN).

    For a transition ``(s, a, r, s')``: ``y = r + gamma * (1 - terminated) * Q_target(s', a*)``
    with ``a* = argmax_a Q_target(s', a)``, or ``argmax_a Q(s', a)`` with ``double_dqn``;
    the loss is the Huber (``"smooth_l1"``) or squared (``"l2"``) distance between
    ``Q(s, a)`` and ``y``, averaged over the batch. Truncated episodes keep bootstrapping:
    only ``("next", "terminated")`` stops it.

    For tdimitation's :class:`~tdimitation.policies.QValueActor` the target network is a
    frozen copy of its MLP (``value_network.net``) that reads the *online* network's
    observation normaliser, so both networks always see identically normalised inputs.
    Other Q-networks are read through
    :class:`~tdimitation.objectives.protocols.ActionValueNetwork` (``q_values``); a torchrl
    module writing ``action_value`` (a ``ValueOperator`` or ``QValueActor``) is wrapped by the
    constructor in a :class:`~tdimitation.policies.adapters.TorchRLQValues`, and the target
    is a frozen copy of the whole network. :meth:`update_target` copies (``tau=1``) or
    Polyak-averages (``tau<1``) the online weights into the target.

    Reads ``observation``, ``action``, ``("next", "observation")``, ``("next", "reward")``
    and ``("next", "terminated")`` (rename with :meth:`set_keys`); writes ``loss`` and
    ``q_value`` (mean ``Q(s, a)``, detached). ``forward`` is what :class:`~tdimitation.rl.DQN`
    calls on every minibatch; :meth:`loss_from_tensors` computes the same from tensors.

    Args:
        value_network: the online Q-network (a :class:`~tdimitation.policies.QValueActor`,
            a torchrl Q-value module, or anything with ``q_values(observation)``).
        gamma: discount factor.
        double_dqn: choose the bootstrap action with the online network (van Hasselt et
            al., 2016) instead of the target network.
        loss_function: ``"smooth_l1"`` (Huber with delta 1, as Stable-Baselines3) or ``"l2"``.
    """

    @dataclass
    class _AcceptedKeys:
        """Configurable TensorDict keys (``reward`` and ``terminated`` live under ``next``).

        Attributes:
            observation: observation key (also read under ``"next"``).
            action: key of the int64 action index.
            reward: reward key inside ``"next"``.
            terminated: termination flag inside ``"next"``.
        """

        observation: NestedKey = "observation"
        action: NestedKey = "action"
        reward: NestedKey = "reward"
        terminated: NestedKey = "terminated"

    default_keys = _AcceptedKeys
    tensor_keys: _AcceptedKeys
    out_keys = ["loss", "q_value"]

    def __init__(
        self,
        value_network: QValueActor | torch.nn.Module,
        *,
        gamma: float = 0.99,
        double_dqn: bool = False,
        loss_function: str = "smooth_l1",
    ) -> None:
        super().__init__()
        if loss_function not in _LOSS_FUNCTIONS:
            raise ValueError(
                f"loss_function must be one of {_LOSS_FUNCTIONS}, got {loss_function!r}"
            )
        value_network = as_q_network(value_network)
        self.value_network = value_network
        # QValueActor: copy only its MLP (the target shares the online normaliser).
        self._mlp_target = isinstance(value_network, QValueActor)
        online = value_network.net if self._mlp_target else value_network
        self.target_net = copy.deepcopy(online).requires_grad_(False)
        self.gamma = float(gamma)
        self.double_dqn = bool(double_dqn)
        self.loss_function = loss_function

    @property
    def in_keys(self) -> list[NestedKey]:
        keys = self.tensor_keys
        return [
            keys.observation,
            keys.action,
            ("next", keys.observation),
            ("next", keys.reward),
            ("next", keys.terminated),
        ]

    def _forward_value_estimator_keys(self, **kwargs) -> None:
        # No value estimator: keys are read from tensor_keys at every call.
        pass

    def target_q_values(self, next_observation: torch.Tensor) -> torch.Tensor:
        """Target-network Q-values of ``next_observation`` (online normaliser statistics)."""
        if not self._mlp_target:
            return self.target_net.q_values(next_observation)
        return mlp_forward(self.target_net, self.value_network.features(next_observation))

    @torch.no_grad()
    def td_target(
        self, reward: torch.Tensor, next_observation: torch.Tensor, terminated: torch.Tensor
    ) -> torch.Tensor:
        """The target ``r + gamma * (1 - terminated) * V_target(s')``, shape ``[B]``."""
        next_q = self.target_q_values(next_observation)
        if self.double_dqn:
            next_action = self.value_network.q_values(next_observation).argmax(-1, keepdim=True)
            next_value = next_q.gather(-1, next_action).squeeze(-1)
        else:
            next_value = next_q.max(-1).values
        not_terminated = (~terminated.reshape(next_value.shape)).to(next_value.dtype)
        return reward.reshape(next_value.shape) + self.gamma * not_terminated * next_value

    def loss_from_tensors(
        self,
        observation: torch.Tensor,
        action: torch.Tensor,
        reward: torch.Tensor,
        next_observation: torch.Tensor,
        terminated: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The loss and the detached mean ``Q(s, a)`` of one batch of tensors.

        Shapes: ``observation``/``next_observation`` ``[B, D]``, ``action`` ``[B]`` (int),
        ``reward``/``terminated`` ``[B]`` or ``[B, 1]``.
        """
        q = self.value_network.q_values(observation)
        q_taken = q.gather(-1, action.long().reshape(-1, 1)).squeeze(-1)
        target = self.td_target(reward, next_observation, terminated)
        if self.loss_function == "smooth_l1":
            loss = F.smooth_l1_loss(q_taken, target)
        else:
            loss = F.mse_loss(q_taken, target)
        return loss, q_taken.detach().mean()

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        keys = self.tensor_keys
        loss, q_value = self.loss_from_tensors(
            tensordict.get(keys.observation),
            tensordict.get(keys.action),
            tensordict.get(("next", keys.reward)),
            tensordict.get(("next", keys.observation)),
            tensordict.get(("next", keys.terminated)),
        )
        return TensorDict({"loss": loss, "q_value": q_value}, batch_size=[])

    @torch.no_grad()
    def update_target(self, tau: float = 1.0) -> None:
        """Copy (``tau >= 1``) or Polyak-average (``target += tau * (online - target)``)."""
        network = self.value_network
        online = (network.net if self._mlp_target else network).parameters()
        for target_p, online_p in zip(self.target_net.parameters(), online, strict=True):
            if tau >= 1.0:
                target_p.copy_(online_p)
            else:
                target_p.lerp_(online_p, tau)
