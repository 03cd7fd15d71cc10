"""Discriminator losses of adversarial imitation (GAIL and AIRL) as torchrl ``LossModule``s.

Both train a binary classifier between expert transitions (label 1) and generator
transitions (label 0) with binary cross-entropy on logits; they differ in what the logit is:

* GAIL (Ho & Ermon 2016): ``logit = D(s, a, s', done)``, the reward network's raw output.
  The generator is rewarded with ``softplus(logit) = -log(1 - sigmoid(logit))``, high where
  the discriminator believes the transition is the expert's.
* AIRL (Fu et al. 2018): ``logit = f(s, a, s', done) - log pi(a | s)``, so that
  ``D = exp(f) / (exp(f) + pi)``. The generator is rewarded with ``f`` (the shaped reward
  network's output, as ``imitation`` does); at test time the *unshaped* part of ``f`` is
  the learned reward.

torchrl's ``GAILLoss`` is only a BCE on probabilities with no generator reward and no AIRL
form, hence these.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from tensordict import TensorDict, TensorDictBase
from tensordict.utils import NestedKey
from torch import nn
from torchrl.objectives import LossModule

from tdimitation.errors import LossError
from tdimitation.policies.adapters import as_actor
from tdimitation.rewards.nets import evaluating
from tdimitation.rng import Stochastic, uniform


class DiscriminatorLoss(LossModule, Stochastic):
    """GAIL's discriminator loss: BCE-with-logits, expert label 1, generator label 0.

    ``forward(expert, generator)`` takes two batches of transitions of equal size and
    returns ``loss`` (the total), ``loss_discriminator`` (the BCE), ``grad_penalty`` (when
    enabled), and metrics: ``accuracy``, ``accuracy_expert``, ``accuracy_generator``,
    ``entropy`` (mean binary entropy of the predictions, in nats), ``logit_expert`` and
    ``logit_generator`` (means), ``n_expert`` and ``n_generator``,
    ``proportion_expert_true`` (the share of expert samples in the batch, 0.5 with
    batches of equal size) and ``proportion_expert_pred`` (the share of samples the
    discriminator calls expert, ``logit > 0``). These are ``imitation``'s ``disc_acc``,
    ``disc_acc_expert``, ``disc_acc_gen``, ``disc_entropy``, ``n_expert``, ``n_generated``,
    ``disc_proportion_expert_true`` and ``disc_proportion_expert_pred``.

    Bad arguments and batches raise :class:`~tdimitation.errors.LossError` (a
    ``ValueError``).

    The optional gradient penalty (Gulrajani et al. 2017) adds
    ``gradient_penalty * E[(||grad_x logit(x)|| - 1)^2]`` at random interpolations ``x`` of
    the float inputs (observations, next observations, continuous actions) of expert and
    generator pairs; discrete actions and ``done`` are taken from the expert row.

    Keys (``set_keys``): ``observation``, ``action``, ``next_observation``
    (``("next", "observation")``), ``done`` (``("next", "done")``).

    Args:
        reward_net: a :class:`~tdimitation.rewards.RewardNet` (anything with
            ``reward(observation, action, next_observation, done) -> Tensor[B]``).
        gradient_penalty: weight of the gradient penalty (0 disables it).
        generator_reward_type: ``"softplus"`` (GAIL's ``-log(1 - D)``) or ``"logit"``
            (``log D - log(1 - D)``, which does not saturate when the discriminator is
            confident).
    """

    @dataclass
    class _AcceptedKeys:
        observation: NestedKey = "observation"
        action: NestedKey = "action"
        next_observation: NestedKey = ("next", "observation")
        done: NestedKey = ("next", "done")

    default_keys = _AcceptedKeys
    tensor_keys: _AcceptedKeys

    def __init__(
        self,
        reward_net: nn.Module,
        *,
        gradient_penalty: float = 0.0,
        generator_reward_type: str = "softplus",
    ) -> None:
        super().__init__()
        if generator_reward_type not in ("softplus", "logit"):
            raise LossError(
                "generator_reward_type must be 'softplus' or 'logit', got "
                f"{generator_reward_type!r}"
            )
        self.generator_reward_type = generator_reward_type
        if not callable(getattr(reward_net, "reward", None)):
            raise LossError(
                f"{type(reward_net).__name__} has no reward(observation, action, "
                "next_observation, done) method: use a tdimitation.rewards network"
            )
        if gradient_penalty < 0:
            raise LossError(f"gradient_penalty must be >= 0, got {gradient_penalty}")
        self.reward_net = reward_net
        self.gradient_penalty = float(gradient_penalty)
        self._tensor_keys = self._AcceptedKeys()

    def _forward_value_estimator_keys(self, **kwargs) -> None:
        pass

    @property
    def in_keys(self) -> list[NestedKey]:
        k = self.tensor_keys
        return [k.observation, k.action, k.next_observation, k.done]

    @property
    def out_keys(self) -> list[str]:
        return ["loss", "loss_discriminator", "accuracy"]

    # ------------------------------------------------------------------ logits
    def inputs(self, tensordict: TensorDictBase) -> tuple[torch.Tensor, ...]:
        """``(observation, action, next_observation, done)`` of a batch of transitions."""
        k = self.tensor_keys
        # Indexing, not get(): a missing (e.g. renamed) key is a KeyError naming it.
        return (
            tensordict[k.observation],
            tensordict[k.action],
            tensordict[k.next_observation],
            tensordict[k.done],
        )

    def logits(
        self,
        observation: torch.Tensor,
        action: torch.Tensor,
        next_observation: torch.Tensor,
        done: torch.Tensor,
    ) -> torch.Tensor:
        """The discriminator's logit ``[*B]`` (high: expert-like)."""
        return self.reward_net.reward(observation, action, next_observation, done)

    @torch.no_grad()
    def generator_reward(self, tensordict: TensorDictBase) -> torch.Tensor:
        """The reward ``[*B, 1]`` the generator is trained on: ``softplus(logit)``.

        Evaluated in evaluation mode: input-normalisation statistics learn from the
        discriminator's training batches only, and dropout is off.
        """
        with evaluating(self.reward_net):
            logits = self.logits(*self.inputs(tensordict))
        if self.generator_reward_type == "logit":
            return logits.unsqueeze(-1)
        return F.softplus(logits).unsqueeze(-1)

    # ------------------------------------------------------------------- loss
    def forward(self, expert: TensorDictBase, generator: TensorDictBase) -> TensorDictBase:
        """The loss and metrics on one expert and one generator batch of equal size."""
        n_expert, n_generator = expert.numel(), generator.numel()
        if n_expert != n_generator:
            raise LossError(
                f"the discriminator needs expert and generator batches of the same size, got "
                f"{n_expert} expert and {n_generator} generator transitions: draw as many "
                "demonstrations per update as generator samples (demo batch size)"
            )
        if n_expert == 0:
            raise LossError("the discriminator got empty batches")
        expert_in = [t.reshape(n_expert, *t.shape[expert.ndim :]) for t in self.inputs(expert)]
        generator_in = [
            t.reshape(n_generator, *t.shape[generator.ndim :]) for t in self.inputs(generator)
        ]
        # One network call on both batches: half the kernel launches of two calls.
        joined = [_cat(e, g) for e, g in zip(expert_in, generator_in, strict=True)]
        logits = self.logits(*joined)
        labels = torch.cat([logits.new_ones(n_expert), logits.new_zeros(n_generator)])
        bce = F.binary_cross_entropy_with_logits(logits, labels)
        loss = bce
        out: dict[str, Any] = {}
        if self.gradient_penalty > 0:
            penalty = self._gradient_penalty(expert_in, generator_in)
            out["grad_penalty"] = penalty.detach()
            loss = loss + self.gradient_penalty * penalty
        with torch.no_grad():
            predicted_expert = logits > 0
            correct = predicted_expert == labels.bool()
            probability = torch.sigmoid(logits)
            # Binary entropy from logits, stable for large |logit|.
            entropy = F.binary_cross_entropy_with_logits(logits, probability, reduction="none")
            out |= {
                "accuracy": correct.float().mean(),
                "accuracy_expert": correct[:n_expert].float().mean(),
                "accuracy_generator": correct[n_expert:].float().mean(),
                "entropy": entropy.mean(),
                "logit_expert": logits[:n_expert].mean(),
                "logit_generator": logits[n_expert:].mean(),
                "n_expert": torch.tensor(float(n_expert)),
                "n_generator": torch.tensor(float(n_generator)),
                "proportion_expert_true": labels.mean(),
                "proportion_expert_pred": predicted_expert.float().mean(),
            }
        out["loss"] = loss
        out["loss_discriminator"] = bce
        return TensorDict(out, batch_size=[])

    def _gradient_penalty(
        self, expert_in: list[torch.Tensor], generator_in: list[torch.Tensor]
    ) -> torch.Tensor:
        n = expert_in[0].shape[0]
        mixed: list[torch.Tensor] = []
        leaves: list[torch.Tensor] = []
        for index, (e, g) in enumerate(zip(expert_in, generator_in, strict=True)):
            if e.is_floating_point() and index != 3:  # done stays a flag
                shape = (n, *([1] * (e.ndim - 1)))
                weight = uniform(shape, self.rng, e.device, e.dtype)  # the run's generator
                x = (weight * e + (1 - weight) * g).requires_grad_(True)
                leaves.append(x)
                mixed.append(x)
            else:
                mixed.append(e)
        with evaluating(self.reward_net):  # interpolates must not move input statistics
            logits = self.logits(*mixed)
        # allow_unused: a net may ignore some inputs (e.g. the next observation).
        grads = torch.autograd.grad(logits.sum(), leaves, create_graph=True, allow_unused=True)
        used = [g.reshape(n, -1) for g in grads if g is not None]
        if not used:
            return logits.new_zeros(())
        norm = torch.cat(used, dim=1).norm(dim=1)
        return (norm - 1).pow(2).mean()


class AIRLDiscriminatorLoss(DiscriminatorLoss):
    """AIRL's discriminator loss: the logit is ``f(s, a, s', done) - log pi(a | s)``.

    ``f`` is the (usually shaped, see :class:`~tdimitation.rewards.ShapedRewardNet`) reward
    network; ``log pi`` is the generator policy's log-probability of the action, evaluated
    without gradient (the discriminator does not train the policy). The generator is
    rewarded with ``f``; the learned reward for later use is ``f``'s unshaped base.

    Args:
        reward_net: the reward network ``f``.
        policy: the generator policy, read through
            :class:`~tdimitation.objectives.protocols.ActionEvaluator` (``log_prob``): a
            tdimitation actor, or a torchrl ``ProbabilisticActor`` (adapted here).
        gradient_penalty: weight of the gradient penalty (see :class:`DiscriminatorLoss`).
        generator_reward_type: ``"f"`` (as ``imitation``) or ``"logit"`` (``f - log pi``,
            the paper's reward, an entropy-regularised objective).

    Raises:
        LossError: if the policy cannot give log-probabilities.
    """

    def __init__(
        self,
        reward_net: nn.Module,
        policy: nn.Module,
        *,
        gradient_penalty: float = 0.0,
        generator_reward_type: str = "f",
    ) -> None:
        if generator_reward_type not in ("f", "logit"):
            raise LossError(
                "AIRL's generator_reward_type must be 'f' or 'logit', got "
                f"{generator_reward_type!r}"
            )
        super().__init__(reward_net, gradient_penalty=gradient_penalty)
        self.generator_reward_type = generator_reward_type
        policy = as_actor(policy)
        if not callable(getattr(policy, "log_prob", None)):
            raise LossError(
                f"AIRL needs a generator policy with log-probabilities (log_prob(observation, "
                f"action)), but {type(policy).__name__} has none: use a stochastic policy "
                "such as PPO's or SAC's actor (DQN's greedy policy has no log-probabilities)"
            )
        # Not a submodule: the policy belongs to the generator (its parameters must not
        # appear twice in state dicts or join the discriminator's optimizer).
        self.__dict__["policy"] = policy

    def logits(
        self,
        observation: torch.Tensor,
        action: torch.Tensor,
        next_observation: torch.Tensor,
        done: torch.Tensor,
    ) -> torch.Tensor:
        f = self.reward_net.reward(observation, action, next_observation, done)
        with torch.no_grad():
            log_prob = self.policy.log_prob(observation, action).reshape(f.shape)
        return f - log_prob

    @torch.no_grad()
    def generator_reward(self, tensordict: TensorDictBase) -> torch.Tensor:
        """The reward ``[*B, 1]`` the generator is trained on: ``f`` (shaped), or the logit."""
        with evaluating(self.reward_net):
            if self.generator_reward_type == "logit":
                return self.logits(*self.inputs(tensordict)).unsqueeze(-1)
            return self.reward_net.reward(*self.inputs(tensordict)).unsqueeze(-1)


def _cat(expert: torch.Tensor, generator: torch.Tensor) -> torch.Tensor:
    if expert.dtype != generator.dtype:
        # e.g. float64 demonstrations against float32 rollouts, or bool vs float flags.
        generator = generator.to(expert.dtype)
    return torch.cat([expert, generator])
