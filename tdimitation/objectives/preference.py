"""The Bradley–Terry preference model and its cross-entropy loss.

A *pair batch* is a TensorDict of shape ``[P, 2, L]`` in the TED layout (``observation``,
``action``, ``("next", "observation")``, ``("next", "done")`` and, when the true reward is
known, ``("next", "reward")``): ``P`` pairs of two fragments of ``L`` transitions each.

The probability that fragment 1 is preferred is

    P(1 ≻ 2) = noise / 2 + (1 - noise) · σ(clip(R1 - R2, ±threshold)),   R = Σ_t γᵗ r_t,

with ``r`` the learned reward (one probability per member for an ensemble). Clipping
keeps the logit finite when returns differ by a lot; the noise term models a labeller who
answers at random with probability ``noise``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from tensordict import TensorDict, TensorDictBase
from torch import nn
from torchrl.objectives import LossModule

from tdimitation.errors import LossError, PreferenceError
from tdimitation.rewards import AddStdRewardWrapper, RewardEnsemble, RewardNet
from tdimitation.rewards.base import REWARD_INPUTS

TRUE_REWARD = ("next", "reward")


def discounted_fragment_returns(rewards: torch.Tensor, discount: float) -> torch.Tensor:
    """Discounted sums over the last (time) dimension: ``Σ_t γᵗ r[..., t]``."""
    if discount == 1.0:
        return rewards.sum(-1)
    weights = discount ** torch.arange(rewards.shape[-1], device=rewards.device)
    return (rewards * weights.to(rewards.dtype)).sum(-1)


def _ensemble_of(net: RewardNet) -> RewardEnsemble | None:
    """The ensemble under ``net`` (itself or inside an :class:`AddStdRewardWrapper`)."""
    if isinstance(net, RewardEnsemble):
        return net
    if isinstance(net, AddStdRewardWrapper):
        return net.base
    return None


class PreferenceModel(nn.Module):
    """Probabilities that the first fragment of each pair is preferred (Bradley–Terry).

    Args:
        reward_net: the learned reward; a :class:`~tdimitation.rewards.RewardEnsemble`
            (optionally inside an :class:`~tdimitation.rewards.AddStdRewardWrapper`)
            gives one probability per member.
        noise_prob: probability that the labeller answers at random.
        discount_factor: γ of the fragment returns.
        threshold: bound of the return difference (the logit).
    """

    def __init__(
        self,
        reward_net: RewardNet,
        noise_prob: float = 0.0,
        discount_factor: float = 1.0,
        threshold: float = 50.0,
    ) -> None:
        super().__init__()
        if not 0.0 <= noise_prob <= 1.0:
            raise PreferenceError(f"noise_prob must be in [0, 1], got {noise_prob}")
        if not 0.0 < discount_factor <= 1.0:
            raise PreferenceError(f"discount_factor must be in (0, 1], got {discount_factor}")
        if threshold <= 0:
            raise PreferenceError(f"threshold must be > 0, got {threshold}")
        self.reward_net = reward_net
        self.noise_prob = float(noise_prob)
        self.discount_factor = float(discount_factor)
        self.threshold = float(threshold)
        self.ensemble = _ensemble_of(reward_net)

    @property
    def num_members(self) -> int | None:
        """Ensemble size, or None for a single reward net."""
        return None if self.ensemble is None else self.ensemble.num_members

    def _inputs(self, net: RewardNet, pairs: TensorDictBase) -> list[torch.Tensor | None]:
        used = net.used_inputs()
        keys = dict(zip(REWARD_INPUTS, (None,) * 4, strict=True))
        keys.update({name: key for name, key in zip(_used_names(net), net.in_keys, strict=True)})
        return [pairs.get(keys[n]) if n in used else None for n in REWARD_INPUTS]

    def rewards(self, pairs: TensorDictBase, member: int | None = None) -> torch.Tensor:
        """Differentiable learned rewards: ``[P, 2, L]``, or ``[M, P, 2, L]`` for an ensemble.

        ``member`` selects one ensemble member (``[P, 2, L]``).
        """
        if self.ensemble is None:
            if member is not None:
                raise PreferenceError("member= needs an ensemble reward net")
            return self.reward_net.reward(*self._inputs(self.reward_net, pairs))
        if member is not None:
            net = self.ensemble.members[member]
            return net.reward(*self._inputs(net, pairs))
        return self.ensemble.members_reward(*self._inputs(self.ensemble, pairs))

    def logits(self, rewards: torch.Tensor) -> torch.Tensor:
        """Clipped return differences ``R1 - R2`` from rewards ``[..., P, 2, L]``."""
        returns = discounted_fragment_returns(rewards, self.discount_factor)
        diff = returns[..., 0] - returns[..., 1]
        return diff.clamp(-self.threshold, self.threshold)

    def probability(self, logits: torch.Tensor) -> torch.Tensor:
        """P(fragment 1 ≻ fragment 2) from clipped logits."""
        p = torch.sigmoid(logits)
        if self.noise_prob:
            p = 0.5 * self.noise_prob + (1.0 - self.noise_prob) * p
        return p

    def forward(
        self, pairs: TensorDictBase, member: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(probabilities, true-reward probabilities or None)``.

        Probabilities are ``[P]`` (``[M, P]`` for a whole ensemble); the second element is
        computed from ``("next", "reward")`` with the same γ, clip and noise when present.
        """
        probs = self.probability(self.logits(self.rewards(pairs, member)))
        true = pairs.get(TRUE_REWARD, None)
        if true is None:
            return probs, None
        return probs, self.probability(self.logits(true[..., 0].to(probs.dtype)))


def _used_names(net: RewardNet) -> list[str]:
    used = net.used_inputs()
    return [name for name in REWARD_INPUTS if name in used]


def _cross_entropy(model: PreferenceModel, logits: torch.Tensor, target: torch.Tensor):
    if model.noise_prob == 0.0:
        # Exact on logits: stays finite where σ saturates.
        return F.binary_cross_entropy_with_logits(logits, target.expand_as(logits))
    p = model.probability(logits)
    return F.binary_cross_entropy(p, target.expand_as(p))


class PreferenceLoss(LossModule):
    """Cross-entropy between predicted preference probabilities and labels.

    ``forward(pairs, preferences, member=None)`` takes a pair batch ``[P, 2, L]`` and the
    labels ``[P]`` (float32 in [0, 1]: 1 prefers the first fragment, 0.5 is a tie) and
    returns a TensorDict with ``loss``, ``accuracy`` (share of pairs whose predicted and
    labelled preferred fragment agree) and, when the pairs carry the true reward,
    ``gt_reward_loss`` (the same cross-entropy of the probabilities the true reward
    implies, a floor on what the learned reward can reach). For a whole ensemble the loss
    is the mean of the members' losses; ``member`` trains one member. Works outside
    Lightning: call ``backward`` on ``loss``.

    Args:
        preference_model: the :class:`PreferenceModel`.
    """

    def __init__(self, preference_model: PreferenceModel) -> None:
        super().__init__()
        self.preference_model = preference_model

    def forward(
        self,
        pairs: TensorDictBase,
        preferences: torch.Tensor,
        member: int | None = None,
    ) -> TensorDictBase:
        if pairs.batch_dims != 3 or pairs.shape[1] != 2:
            raise LossError(
                f"preference pairs must have batch shape [P, 2, L], got {list(pairs.shape)}"
            )
        if preferences.shape != pairs.shape[:1]:
            raise LossError(
                f"preferences have shape {list(preferences.shape)} but there are "
                f"{pairs.shape[0]} pairs: give one label per pair"
            )
        model = self.preference_model
        logits = model.logits(model.rewards(pairs, member))
        target = preferences.to(logits.dtype)
        out = {"loss": _cross_entropy(model, logits, target)}
        with torch.no_grad():
            correct = (logits > 0) == (target > 0.5)
            out["accuracy"] = correct.float().mean()
            true = pairs.get(TRUE_REWARD, None)
            if true is not None:
                true_logits = model.logits(true[..., 0].to(logits.dtype))
                out["gt_reward_loss"] = _cross_entropy(model, true_logits, target)
        return TensorDict(out, batch_size=[])


__all__ = ["PreferenceLoss", "PreferenceModel", "discounted_fragment_returns"]
