"""What the losses need from actors and critics, declared once as ``typing.Protocol``s.

Every loss in :mod:`tdimitation.objectives` reads its networks through these methods, so
any module that has them trains: tdimitation's MLP actors and critics implement them
directly, and :mod:`tdimitation.policies.adapters` gives torchrl's own modules
(``ProbabilisticActor``, ``ValueOperator``, Q-value networks) the same methods. The losses
adapt torchrl modules in their constructors (:func:`~tdimitation.policies.adapters.as_actor`
and friends), so ``PPOClipLoss(ProbabilisticActor(...), ValueOperator(...))`` works as
torchrl's ``ClipPPOLoss`` does.

Shapes: ``observation`` is ``[B, *obs_shape]``; ``action`` is ``[B]`` int64 indices for
discrete actions and ``[B, A]`` floats for continuous ones (the TED layout of
tdimitation's data; one-hot actors are converted by their adapter).

=====================  ===================================================================
Protocol               Used by
=====================  ===================================================================
ActionEvaluator        BCLoss (stochastic policies), PPOClipLoss, AIRLDiscriminatorLoss
ReparameterizedActor   SoftActorCriticLoss
CategoricalActor       DiscreteSoftActorCriticLoss
StateValueCritic       PPOClipLoss
ActionValueNetwork     QLearningLoss
CriticEnsemble         SoftActorCriticLoss / DiscreteSoftActorCriticLoss (critics other
                       than tdimitation's :class:`~tdimitation.objectives.EnsembleMLP`)
=====================  ===================================================================
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch

__all__ = [
    "ActionEvaluator",
    "ActionValueNetwork",
    "CategoricalPolicy",
    "CriticEnsemble",
    "ReparameterizedActor",
    "StateValueCritic",
]


@runtime_checkable
class ActionEvaluator(Protocol):
    """A stochastic policy that scores given actions (BC, PPO, AIRL's ``log pi``)."""

    def log_prob(self, observation: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """``log pi(action | observation)``, shape ``[B]``, differentiable."""
        ...

    def evaluate_actions(
        self, observation: torch.Tensor, action: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(log pi(action | observation), entropy of pi(. | observation))``, each ``[B]``.

        Policies without a closed-form entropy return an estimate (minus the
        log-probability of one sampled action).
        """
        ...


@runtime_checkable
class ReparameterizedActor(Protocol):
    """A continuous policy with reparameterised samples (SAC's actor loss).

    ``features`` is what tdimitation's :class:`~tdimitation.objectives.EnsembleMLP`
    critics read (the observation, normalised when the actor normalises it).
    """

    def features(self, observation: torch.Tensor) -> torch.Tensor:
        """The observation as the critics see it."""
        ...

    def sample(self, observation: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A reparameterised action ``[B, A]`` and its log-probability ``[B]``."""
        ...


@runtime_checkable
class CategoricalPolicy(Protocol):
    """A policy over discrete actions exposing its logits (discrete SAC's exact expectations)."""

    def features(self, observation: torch.Tensor) -> torch.Tensor:
        """The observation as the critics see it."""
        ...

    def logits(self, observation: torch.Tensor) -> torch.Tensor:
        """Unnormalised log-probabilities ``[B, n_actions]``."""
        ...


@runtime_checkable
class StateValueCritic(Protocol):
    """A state-value function ``V(s)`` (PPO's critic)."""

    def value(self, observation: torch.Tensor) -> torch.Tensor:
        """State values ``[..., 1]`` for observations ``[..., *obs_shape]``."""
        ...


@runtime_checkable
class ActionValueNetwork(Protocol):
    """A Q-network over discrete actions (DQN)."""

    def q_values(self, observation: torch.Tensor) -> torch.Tensor:
        """``Q(s, .)``, shape ``[B, n_actions]``."""
        ...


@runtime_checkable
class CriticEnsemble(Protocol):
    """``n`` critics evaluated together (SAC's twin critics).

    Continuous SAC calls :meth:`state_action_values`, discrete SAC :meth:`action_values`.
    ``detach_params=True`` gives outputs with gradients for the inputs only: the actor loss
    must not train the critics.
    """

    def state_action_values(
        self, observation: torch.Tensor, action: torch.Tensor, detach_params: bool = False
    ) -> torch.Tensor:
        """``Q_i(s, a)`` of every member, ``[n, B]``."""
        ...

    def action_values(self, observation: torch.Tensor, detach_params: bool = False) -> torch.Tensor:
        """``Q_i(s, .)`` of every member, ``[n, B, n_actions]``."""
        ...
