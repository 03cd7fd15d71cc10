"""Soft actor-critic losses (continuous and discrete actions) and the twin-critic ensemble.

Two torchrl ``LossModule`` classes that work without Lightning; :class:`~tdimitation.rl.SAC`
trains with them:

* :class:`SoftActorCriticLoss`: squashed-Gaussian actor (our
  :class:`~tdimitation.policies.TanhNormalActor`, so policies map onto Stable-Baselines3's
  SAC actor), twin Q(s, a) critics with polyak-averaged targets, and a learned or fixed
  temperature (Haarnoja et al. 2018, "SAC algorithms and applications"). Same quantities
  as torchrl's ``SACLoss`` (checked in the tests), written on plain tensors because
  ``SACLoss`` spends several hundred µs per call on TensorDict bookkeeping.
* :class:`DiscreteSoftActorCriticLoss`: a categorical actor and twin Q(s, ·) critics with
  exact expectations over actions (Christodoulou 2019), the semantics of torchrl's
  ``DiscreteSACLoss``.

Both losses add ``loss_actor + loss_qvalue + loss_alpha`` for one backward pass: the actor
loss reads the critics through detached parameters, the critic targets are computed
without gradients and the temperature loss uses detached log-probabilities, so each
parameter group receives only its own loss's gradient and one optimizer steps them all.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tensordict import NestedKey, TensorDict, TensorDictBase
from torch import nn
from torchrl.objectives import LossModule

from tdimitation.errors import LossError, PolicyError
from tdimitation.nn import ACTIVATIONS
from tdimitation.policies.actors import CategoricalActor
from tdimitation.policies.adapters import as_actor, as_critic_ensemble

__all__ = [
    "DiscreteSoftActorCriticLoss",
    "EnsembleMLP",
    "SoftActorCriticLoss",
]

_LOSS_FUNCTIONS = ("l2", "smooth_l1", "l1")


class EnsembleMLP(nn.Module):
    """``n`` independent MLPs evaluated together (twin critics in one batched call).

    Weights are stacked (``weight_i`` is ``[n, in, out]``) and each layer is one
    ``baddbmm``: the same function and gradients as ``n`` separate MLPs with half (for
    ``n = 2``) the kernel calls. Each member is initialised like ``nn.Linear``.

    Args:
        in_features: input width.
        out_features: output width.
        hidden_sizes: hidden layer widths.
        activation: activation name (see :data:`tdimitation.nn.ACTIVATIONS`).
        n: number of members.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        hidden_sizes: Sequence[int] = (256, 256),
        activation: str = "relu",
        n: int = 2,
    ) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(
                f"unknown activation {activation!r}; choose one of {sorted(ACTIVATIONS)}"
            )
        self.n = int(n)
        self.activation = ACTIVATIONS[activation]()
        widths = [int(in_features), *(int(h) for h in hidden_sizes), int(out_features)]
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for fan_in, fan_out in zip(widths[:-1], widths[1:], strict=True):
            bound = 1.0 / math.sqrt(fan_in)  # nn.Linear's default initialisation
            self.weights.append(nn.Parameter(torch.empty(self.n, fan_in, fan_out)))
            self.biases.append(nn.Parameter(torch.empty(self.n, 1, fan_out)))
            nn.init.uniform_(self.weights[-1], -bound, bound)
            nn.init.uniform_(self.biases[-1], -bound, bound)

    def forward(self, x: torch.Tensor, detach_params: bool = False) -> torch.Tensor:
        """All members' outputs ``[n, B, out]`` for inputs ``[B, in]`` (or ``[n, B, in]``).

        With ``detach_params`` the output has gradients for ``x`` only (the actor loss
        must not train the critics).
        """
        if x.dim() == 2:
            x = x.unsqueeze(0).expand(self.n, *x.shape)
        last = len(self.weights) - 1
        for i, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            if detach_params:
                w, b = w.detach(), b.detach()
            x = torch.baddbmm(b, x, w)
            if i < last:
                x = self.activation(x)
        return x


def _distance(pred: torch.Tensor, target: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "l2":
        return F.mse_loss(pred, target, reduction="none")
    if kind == "smooth_l1":
        return F.smooth_l1_loss(pred, target, reduction="none")
    return F.l1_loss(pred, target, reduction="none")


def _polyak(target: nn.Module, source: nn.Module, tau: float) -> None:
    # target <- (1 - tau) target + tau source, one fused kernel per dtype/device group.
    with torch.no_grad():
        torch._foreach_lerp_(list(target.parameters()), list(source.parameters()), tau)


class _SoftActorCriticBase(LossModule):
    """Temperature, targets, keys and the TensorDict entry point shared by both losses."""

    @dataclass
    class _AcceptedKeys:
        """Configurable input keys (see ``set_keys``).

        Attributes:
            observation: observation key; the next observation is ``("next", observation)``.
            action: action key.
            reward: reward key under ``"next"``.
            terminated: termination flag under ``"next"`` (truncation still bootstraps).
        """

        observation: NestedKey = "observation"
        action: NestedKey = "action"
        reward: NestedKey = "reward"
        terminated: NestedKey = "terminated"

    default_keys = _AcceptedKeys
    tensor_keys: _AcceptedKeys
    out_keys = ["loss_actor", "loss_qvalue", "loss_alpha", "alpha", "entropy", "q_value"]

    def __init__(
        self,
        actor: nn.Module,
        qvalue: nn.Module,
        *,
        gamma: float,
        alpha_init: float,
        fixed_alpha: bool,
        target_entropy: float,
        loss_function: str,
    ) -> None:
        super().__init__()
        if loss_function not in _LOSS_FUNCTIONS:
            raise ValueError(
                f"unknown loss_function {loss_function!r}; choose one of {_LOSS_FUNCTIONS}"
            )
        if not 0.0 <= gamma <= 1.0:
            raise ValueError(f"gamma must be in [0, 1], got {gamma}")
        if alpha_init < 0 or (not fixed_alpha and alpha_init == 0):
            raise ValueError(
                f"the initial entropy coefficient must be > 0 (>= 0 when fixed), got {alpha_init}"
            )
        self.actor_network = actor
        # tdimitation's EnsembleMLP reads [features, rescaled action] in one batched call;
        # other critics are read through the CriticEnsemble protocol (adapted if torchrl's).
        self._mlp_critics = isinstance(qvalue, EnsembleMLP)
        self.qvalue_network = qvalue if self._mlp_critics else as_critic_ensemble(qvalue)
        qvalue = self.qvalue_network
        # The leading underscore keeps the target out of LossModule.parameters().
        self._target_qvalue_network = copy.deepcopy(qvalue).requires_grad_(False)
        self.gamma = float(gamma)
        self.loss_function = loss_function
        self.fixed_alpha = bool(fixed_alpha)
        log_alpha = torch.tensor(math.log(alpha_init) if alpha_init > 0 else -math.inf)
        if self.fixed_alpha:
            self.register_buffer("log_alpha", log_alpha)
        else:
            self.log_alpha = nn.Parameter(log_alpha)
        self.register_buffer("target_entropy", torch.tensor(float(target_entropy)))
        self._set_in_keys()

    @property
    def target_qvalue_network(self) -> nn.Module:
        """The polyak-averaged copy of the critics used for bootstrap targets."""
        return self._target_qvalue_network

    def _set_in_keys(self) -> None:
        keys = self.tensor_keys
        self._in_keys = [
            keys.observation,
            keys.action,
            ("next", keys.reward),
            ("next", keys.terminated),
            ("next", keys.observation),
        ]

    @property
    def in_keys(self) -> list[NestedKey]:
        return self._in_keys

    @in_keys.setter
    def in_keys(self, values) -> None:
        self._in_keys = list(values)

    def _forward_value_estimator_keys(self, **kwargs) -> None:
        self._set_in_keys()

    @property
    def alpha(self) -> torch.Tensor:
        """The current entropy coefficient (detached)."""
        return self.log_alpha.detach().exp()

    def update_target_networks(self, tau: float) -> None:
        """Polyak update of the target critics: ``target <- (1 - tau) target + tau critic``."""
        _polyak(self._target_qvalue_network, self.qvalue_network, tau)

    def _alpha_loss(self, neg_entropy: torch.Tensor) -> torch.Tensor:
        if self.fixed_alpha:
            return torch.zeros((), device=neg_entropy.device)
        return -(self.log_alpha * (neg_entropy.detach() + self.target_entropy)).mean()

    def compute(
        self,
        observation: torch.Tensor,
        action: torch.Tensor,
        reward: torch.Tensor,
        next_observation: torch.Tensor,
        terminated: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        """The losses and diagnostics on one minibatch of tensors (see the class docs)."""
        raise NotImplementedError

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        """Losses on a TED minibatch: ``loss_actor``, ``loss_qvalue``, ``loss_alpha`` + stats."""
        keys = self.tensor_keys
        out = self.compute(
            tensordict.get(keys.observation),
            tensordict.get(keys.action),
            tensordict.get(("next", keys.reward)),
            tensordict.get(("next", keys.observation)),
            tensordict.get(("next", keys.terminated)),
        )
        return TensorDict(out, batch_size=[])


class SoftActorCriticLoss(_SoftActorCriticBase):
    """SAC loss for continuous actions: squashed-Gaussian actor, twin Q(s, a) critics.

    With ``alpha = exp(log_alpha)`` (detached), ``a' ~ pi(s')`` and ``a~ ~ pi(s)``
    (reparameterised):

    * ``loss_qvalue = mean_batch sum_i d(Q_i(s, a), y)``,
      ``y = r + gamma (1 - terminated) (min_i Qtarget_i(s', a') - alpha log pi(a'|s'))``;
    * ``loss_actor = mean(alpha log pi(a~|s) - min_i Q_i(s, a~))`` (critic params detached);
    * ``loss_alpha = -mean(log_alpha (log pi(a~|s) + target_entropy))``.

    ``d`` is the squared error for ``loss_function="l2"`` (torchrl's ``SACLoss`` convention:
    summed over critics, no factor 1/2). The critics read the actor's normalised
    observations (its ``obs_norm``, if any) and actions rescaled to [-1, 1], so they do not
    depend on the env's action units. Other critics (a torchrl ``ValueOperator`` reading
    ``observation`` and ``action``, a list of them, or any
    :class:`~tdimitation.objectives.protocols.CriticEnsemble`) read raw observations and
    actions, as in torchrl's ``SACLoss``; one ``ValueOperator`` is copied into two critics.
    The actor is read through
    :class:`~tdimitation.objectives.protocols.ReparameterizedActor`: tdimitation's
    ``TanhNormalActor``, or a torchrl ``ProbabilisticActor`` with a ``TanhNormal``
    distribution, which the constructor wraps in a
    :class:`~tdimitation.policies.adapters.TorchRLPolicy`. Inputs: ``observation``, ``action``,
    ``("next", "reward")``, ``("next", "terminated")``, ``("next", "observation")``;
    rename them with ``set_keys``. Target networks are updated by
    :meth:`update_target_networks` (no torchrl ``SoftUpdate`` needed).

    Args:
        actor: a :class:`~tdimitation.policies.TanhNormalActor` or a torchrl
            ``ProbabilisticActor`` with reparameterised samples.
        qvalue: critics, an :class:`EnsembleMLP` over ``[obs, action]`` with one output, or
            torchrl ``ValueOperator`` modules (see above).
        gamma: discount factor.
        alpha_init: initial entropy coefficient.
        fixed_alpha: keep the coefficient fixed instead of learning it.
        target_entropy: entropy the learned coefficient aims for (default ``-dim(A)``;
            needed for a torchrl actor that carries no action spec).
        loss_function: critic distance, ``"l2"``, ``"smooth_l1"`` or ``"l1"``.
    """

    def __init__(
        self,
        actor: nn.Module,
        qvalue: nn.Module,
        *,
        gamma: float = 0.99,
        alpha_init: float = 1.0,
        fixed_alpha: bool = False,
        target_entropy: float | None = None,
        loss_function: str = "l2",
    ) -> None:
        actor = as_actor(actor)
        if not (
            callable(getattr(actor, "sample", None)) and callable(getattr(actor, "features", None))
        ):
            raise PolicyError(
                f"SoftActorCriticLoss needs an actor with reparameterised samples "
                f"(TanhNormalActor or a torchrl ProbabilisticActor), got {type(actor).__name__}"
            )
        if target_entropy is None:
            scale = getattr(actor, "action_scale", None)
            action_dim = scale.numel() if scale is not None else getattr(actor, "action_dim", None)
            if action_dim is None:
                raise LossError(
                    "the default target entropy is -dim(A), and this actor does not know its "
                    "action space: pass target_entropy= or give the ProbabilisticActor a spec"
                )
            target_entropy = -float(action_dim)
        super().__init__(
            actor,
            qvalue,
            gamma=gamma,
            alpha_init=alpha_init,
            fixed_alpha=fixed_alpha,
            target_entropy=target_entropy,
            loss_function=loss_function,
        )

    def _critic_input(self, features: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        actor = self.actor_network
        scale = getattr(actor, "action_scale", None)
        if scale is not None:
            action = (action - actor.action_bias) / scale
        return torch.cat([features, action], -1)

    def _critic_values(
        self,
        critics: nn.Module,
        features: torch.Tensor,
        observation: torch.Tensor,
        action: torch.Tensor,
        detach_params: bool = False,
    ) -> torch.Tensor:
        """``Q_i(s, a)`` ``[n, B]`` of ``critics`` (the online or the target ensemble)."""
        if self._mlp_critics:
            critic_input = self._critic_input(features, action)
            return critics(critic_input, detach_params=detach_params).squeeze(-1)
        return critics.state_action_values(observation, action, detach_params)

    def compute(
        self,
        observation: torch.Tensor,
        action: torch.Tensor,
        reward: torch.Tensor,
        next_observation: torch.Tensor,
        terminated: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        actor = self.actor_network
        alpha = self.alpha
        reward = reward.reshape(-1)
        not_done = 1.0 - terminated.reshape(-1).to(reward.dtype)
        features = actor.features(observation)
        # Target first, then the actor sample: the same RNG order as torchrl's SACLoss.
        with torch.no_grad():
            next_action, next_log_prob = actor.sample(next_observation)
            q_next = self._critic_values(
                self._target_qvalue_network,
                actor.features(next_observation),
                next_observation,
                next_action,
            )
            next_value = q_next.min(0).values - alpha * next_log_prob
            target = reward + self.gamma * not_done * next_value
        q = self._critic_values(self.qvalue_network, features, observation, action)
        loss_qvalue = _distance(q, target.expand_as(q), self.loss_function).sum(0).mean()

        new_action, log_prob = actor.sample(observation)
        q_new = self._critic_values(
            self.qvalue_network, features, observation, new_action, detach_params=True
        )
        loss_actor = (alpha * log_prob - q_new.min(0).values).mean()
        return {
            "loss_actor": loss_actor,
            "loss_qvalue": loss_qvalue,
            "loss_alpha": self._alpha_loss(log_prob),
            "alpha": alpha,
            "entropy": -log_prob.detach().mean(),
            "q_value": q.detach().mean(),
        }


class DiscreteSoftActorCriticLoss(_SoftActorCriticBase):
    """SAC loss for discrete actions: categorical actor, twin Q(s, ·) critics.

    Expectations over actions are exact: with ``p = pi(·|s)``,

    * ``y = r + gamma (1 - terminated) sum_a p'(a) (min_i Qtarget_i(s', a) - alpha log p'(a))``,
      ``loss_qvalue = mean_batch sum_i d(Q_i(s, a), y)``;
    * ``loss_actor = mean sum_a p(a) (alpha log p(a) - min_i Q_i(s, a))`` (critics detached);
    * ``loss_alpha = -mean(log_alpha (-H(p) + target_entropy))``.

    The quantities of torchrl's ``DiscreteSACLoss``; the default target entropy is its
    ``0.98 * log(n_actions)``. Same keys as :class:`SoftActorCriticLoss` (actions are int64
    indices). The actor is read through
    :class:`~tdimitation.objectives.protocols.CategoricalPolicy` (tdimitation's
    ``CategoricalActor``, or a torchrl ``ProbabilisticActor`` with a ``Categorical`` or
    ``OneHotCategorical`` distribution, adapted by the constructor); critics other than an
    :class:`EnsembleMLP` (torchrl ``ValueOperator`` modules writing ``Q(s, .)``) read raw
    observations.

    Args:
        actor: a :class:`~tdimitation.policies.CategoricalActor` or a torchrl categorical
            ``ProbabilisticActor``.
        qvalue: critics, an :class:`EnsembleMLP` over observations with ``n_actions``
            outputs, or torchrl ``ValueOperator`` modules.
        gamma: discount factor.
        alpha_init: initial entropy coefficient.
        fixed_alpha: keep the coefficient fixed instead of learning it.
        target_entropy: entropy the learned coefficient aims for.
        target_entropy_weight: when ``target_entropy`` is None, it is this fraction of the
            maximum entropy ``log(n_actions)``.
        loss_function: critic distance, ``"l2"``, ``"smooth_l1"`` or ``"l1"``.
    """

    def __init__(
        self,
        actor: nn.Module,
        qvalue: nn.Module,
        *,
        gamma: float = 0.99,
        alpha_init: float = 1.0,
        fixed_alpha: bool = False,
        target_entropy: float | None = None,
        target_entropy_weight: float = 0.98,
        loss_function: str = "l2",
    ) -> None:
        actor = as_actor(actor)
        if not (
            callable(getattr(actor, "logits", None)) and callable(getattr(actor, "features", None))
        ):
            raise PolicyError(
                "DiscreteSoftActorCriticLoss needs a categorical actor (CategoricalActor or a "
                f"torchrl ProbabilisticActor), got {type(actor).__name__}"
            )
        if target_entropy is None:
            if isinstance(actor, CategoricalActor):
                n_actions = actor.config["n_actions"]
            else:
                n_actions = getattr(actor, "n_actions", None)
            if n_actions is None:
                raise LossError(
                    "the default target entropy needs the number of actions, which this actor "
                    "does not know: pass target_entropy= or give the ProbabilisticActor a spec"
                )
            target_entropy = target_entropy_weight * math.log(int(n_actions))
        super().__init__(
            actor,
            qvalue,
            gamma=gamma,
            alpha_init=alpha_init,
            fixed_alpha=fixed_alpha,
            target_entropy=target_entropy,
            loss_function=loss_function,
        )

    def _critic_all(
        self, critics: nn.Module, features: torch.Tensor, observation: torch.Tensor
    ) -> torch.Tensor:
        """``Q_i(s, .)`` ``[n, B, A]`` of ``critics`` (the online or the target ensemble)."""
        if self._mlp_critics:
            return critics(features)
        return critics.action_values(observation)

    def compute(
        self,
        observation: torch.Tensor,
        action: torch.Tensor,
        reward: torch.Tensor,
        next_observation: torch.Tensor,
        terminated: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        actor = self.actor_network
        alpha = self.alpha
        reward = reward.reshape(-1)
        not_done = 1.0 - terminated.reshape(-1).to(reward.dtype)
        with torch.no_grad():
            next_log_p = torch.log_softmax(actor.logits(next_observation), -1)
            q_next = self._critic_all(
                self._target_qvalue_network, actor.features(next_observation), next_observation
            )
            soft_q = q_next.min(0).values - alpha * next_log_p
            next_value = (next_log_p.exp() * soft_q).sum(-1)
            target = reward + self.gamma * not_done * next_value
        q_all = self._critic_all(
            self.qvalue_network, actor.features(observation), observation
        )  # [n, B, A]
        index = action.long().reshape(1, -1, 1).expand(q_all.shape[0], -1, 1)
        q = q_all.gather(-1, index).squeeze(-1)
        loss_qvalue = _distance(q, target.expand_as(q), self.loss_function).sum(0).mean()

        log_p = torch.log_softmax(actor.logits(observation), -1)
        p = log_p.exp()
        # Same input as q_all, so its detached values are the critics with detached params.
        min_q = q_all.detach().min(0).values
        loss_actor = (p * (alpha * log_p - min_q)).sum(-1).mean()
        neg_entropy = (p * log_p).sum(-1)
        return {
            "loss_actor": loss_actor,
            "loss_qvalue": loss_qvalue,
            "loss_alpha": self._alpha_loss(neg_entropy),
            "alpha": alpha,
            "entropy": -neg_entropy.detach().mean(),
            "q_value": q.detach().mean(),
        }
