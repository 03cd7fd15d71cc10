"""Reward net wrappers: output normalisation, ensembles, confidence bounds.

``reward()`` (what losses train) stays the raw reward of the wrapped nets; the wrappers
here change only ``predict_processed`` (what RL sees). They compose, e.g.
``NormalizedRewardNet(ShapedRewardNet(MLPRewardNet(...)))``, and save with the net.
:func:`strip_wrappers` gives a view of a net without some wrapper types (the unshaped or
unnormalised reward) that shares parameters and statistics with it.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from tensordict.utils import NestedKey
from torch import nn

from tdimitation.nn import EMANorm, RunningNorm
from tdimitation.rewards.nets import (
    MaybeTensor,
    RewardNet,
    RewardNetError,
    RewardNetWrapper,
    build_from_spec,
    module_spec,
    register_reward_class,
)

NORMALIZERS = ("running", "ema")


@register_reward_class
class NormalizedRewardNet(RewardNetWrapper):
    """Standardise the base's processed reward by statistics of the rewards it produced.

    ``predict_processed`` returns ``(r − mean) / sqrt(var + eps)`` of the base's
    ``predict_processed`` output ``r``, first folding ``r`` into the statistics when
    ``update_stats`` (``forward`` updates them in training mode only). ``reward()`` is the
    base's raw reward: gradients never see normalisation. Unlike Stable-Baselines3's
    ``VecNormalize`` it standardises rewards, not return estimates. Pass
    ``update_stats=False`` (or call ``eval()``) when evaluating.

    Args:
        base: the reward net to normalise.
        normalizer: ``"running"`` (exact mean and variance of every reward seen,
            :class:`~tdimitation.nn.RunningNorm`) or ``"ema"`` (exponentially weighted,
            :class:`~tdimitation.nn.EMANorm`, which follows a reward that keeps training).
        ema_decay: decay of the ``"ema"`` normaliser.
        eps: added to the variance before the square root.
        clip: optional bound on the normalised reward.
        out_key: TensorDict key ``forward`` writes (default: the base's).
    """

    processes_output = True

    def __init__(
        self,
        base: RewardNet,
        normalizer: str = "running",
        ema_decay: float = 0.99,
        eps: float = 1e-8,
        clip: float | None = None,
        *,
        out_key: NestedKey | None = None,
    ) -> None:
        super().__init__(base, out_key=out_key)
        if normalizer == "running":
            self.normalizer = RunningNorm((), eps=eps, clip=clip)
        elif normalizer == "ema":
            self.normalizer = EMANorm((), decay=ema_decay, eps=eps, clip=clip)
        else:
            raise RewardNetError(
                f"unknown reward normalizer {normalizer!r}; choose one of {list(NORMALIZERS)}"
            )
        self._config = {
            "normalizer": normalizer,
            "ema_decay": float(ema_decay),
            "eps": float(eps),
            "clip": None if clip is None else float(clip),
        }

    def predict_processed(
        self,
        observation: MaybeTensor,
        action: MaybeTensor,
        next_observation: MaybeTensor,
        done: MaybeTensor,
        update_stats: bool = True,
    ) -> torch.Tensor:
        with torch.no_grad():
            reward = self.base.predict_processed(
                observation, action, next_observation, done, update_stats=update_stats
            )
            if update_stats:
                self.normalizer.update(reward)
            return self.normalizer(reward)


@register_reward_class
class RewardEnsemble(RewardNet):
    """Several reward nets on the same spaces; the reward is their mean.

    Train every member on its own loss with :meth:`members_reward` (``[M, *B]``,
    differentiable); :meth:`reward` is the differentiable member mean.
    :meth:`mean_and_variance` gives the mean and unbiased variance of the members'
    processed rewards (without gradients), which :class:`AddStdRewardWrapper` turns into
    confidence bounds; ``predict_processed`` is the mean.

    Args:
        members: at least two reward nets with equal observation and action spaces.
        out_key: TensorDict key ``forward`` writes.
    """

    def __init__(
        self, members: Sequence[RewardNet], *, out_key: NestedKey = "learned_reward"
    ) -> None:
        members = list(members)
        if len(members) < 2:
            raise RewardNetError(
                f"a RewardEnsemble needs at least 2 members, got {len(members)}; use the "
                "reward net itself for one"
            )
        for i, member in enumerate(members):
            if not isinstance(member, RewardNet):
                raise RewardNetError(
                    f"ensemble member {i} is a {type(member).__name__}, not a RewardNet"
                )
        first = members[0]
        for i, member in enumerate(members[1:], start=1):
            ours = _spaces(member)
            theirs = _spaces(first)
            if ours != theirs:
                raise RewardNetError(
                    f"ensemble member {i} has (observation_shape, action_dim, discrete, "
                    f"num_states) = {ours} but member 0 has {theirs}: members must share the "
                    "spaces"
                )
        super().__init__(
            first.observation_shape,
            first.action_dim,
            first.discrete_actions,
            num_states=first.num_states,
            out_key=out_key,
        )
        self.members = nn.ModuleList(members)

    def uses_training_mode(self) -> bool:
        return False  # modes matter only inside the members

    @property
    def num_members(self) -> int:
        return len(self.members)

    def used_inputs(self) -> frozenset[str]:
        used: frozenset[str] = frozenset()
        for member in self.members:
            used |= member.used_inputs()
        return used

    def members_reward(
        self,
        observation: MaybeTensor,
        action: MaybeTensor,
        next_observation: MaybeTensor,
        done: MaybeTensor,
    ) -> torch.Tensor:
        """Raw, differentiable rewards of every member, ``[M, *B]``."""
        return torch.stack(
            [m.reward(observation, action, next_observation, done) for m in self.members]
        )

    def reward(
        self,
        observation: MaybeTensor,
        action: MaybeTensor,
        next_observation: MaybeTensor,
        done: MaybeTensor,
    ) -> torch.Tensor:
        return self.members_reward(observation, action, next_observation, done).mean(0)

    def mean_and_variance(
        self,
        observation: MaybeTensor,
        action: MaybeTensor,
        next_observation: MaybeTensor,
        done: MaybeTensor,
        update_stats: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and unbiased variance over members of their processed rewards (no grad)."""
        values = self._members_processed(observation, action, next_observation, done, update_stats)
        return values.mean(0), values.var(0, correction=1)

    def predict_processed(
        self,
        observation: MaybeTensor,
        action: MaybeTensor,
        next_observation: MaybeTensor,
        done: MaybeTensor,
        update_stats: bool = True,
    ) -> torch.Tensor:
        return self._members_processed(
            observation, action, next_observation, done, update_stats
        ).mean(0)

    @torch.no_grad()
    def _members_processed(
        self,
        observation: MaybeTensor,
        action: MaybeTensor,
        next_observation: MaybeTensor,
        done: MaybeTensor,
        update_stats: bool,
    ) -> torch.Tensor:
        """Every member's processed reward, ``[M, *B]``."""
        return torch.stack(
            [
                m.predict_processed(
                    observation, action, next_observation, done, update_stats=update_stats
                )
                for m in self.members
            ]
        )

    def _own_config(self) -> dict:
        return {"members": [module_spec(m) for m in self.members]}

    @classmethod
    def _from_plain_config(cls, config: dict) -> RewardNet:
        config = dict(config)
        members = [build_from_spec(spec) for spec in config.pop("members")]
        return cls(members, **config)


@register_reward_class
class AddStdRewardWrapper(RewardNetWrapper):
    """Ensemble mean plus ``alpha`` standard deviations of the members' rewards.

    ``alpha > 0`` gives an optimistic (upper confidence) reward that rewards exploring
    where members disagree; ``alpha < 0`` a pessimistic one. ``reward()`` is the
    ensemble's raw mean.

    Args:
        ensemble: a :class:`RewardEnsemble`.
        alpha: default number of standard deviations added (``predict_processed`` also
            takes ``alpha=``).
        out_key: TensorDict key ``forward`` writes (default: the ensemble's).
    """

    processes_output = True

    def __init__(
        self,
        ensemble: RewardEnsemble,
        alpha: float = 0.0,
        *,
        out_key: NestedKey | None = None,
    ) -> None:
        if not isinstance(ensemble, RewardEnsemble):
            raise RewardNetError(
                f"AddStdRewardWrapper needs a RewardEnsemble (for the members' spread), got "
                f"{type(ensemble).__name__}"
            )
        super().__init__(ensemble, out_key=out_key)
        self.alpha = float(alpha)
        self._config = {"alpha": self.alpha}

    def predict_processed(
        self,
        observation: MaybeTensor,
        action: MaybeTensor,
        next_observation: MaybeTensor,
        done: MaybeTensor,
        update_stats: bool = True,
        alpha: float | None = None,
    ) -> torch.Tensor:
        mean, var = self.base.mean_and_variance(
            observation, action, next_observation, done, update_stats=update_stats
        )
        return mean + (self.alpha if alpha is None else float(alpha)) * var.sqrt()


def _spaces(net: RewardNet) -> tuple:
    return (net.observation_shape, net.action_dim, net.discrete_actions, net.num_states)


def _shallow_copy(net: nn.Module) -> nn.Module:
    """A new module object sharing ``net``'s parameters, buffers and submodules.

    Replacing a submodule of the copy leaves ``net`` untouched.
    """
    new = copy.copy(net)
    new._modules = net._modules.copy()
    new._parameters = net._parameters.copy()
    new._buffers = net._buffers.copy()
    if isinstance(net, RewardNet):
        new.__dict__["_mode_sensitive"] = None
        new._keys = dict(net._keys)
        new._key_overrides = dict(net._key_overrides)
    return new


def strip_wrappers(net: RewardNet, *wrapper_types: type[RewardNetWrapper]) -> RewardNet:
    """``net`` with every wrapper of ``wrapper_types`` replaced by its base, at any depth.

    ``strip_wrappers(net, ShapedRewardNet)`` is the unshaped reward (AIRL's test reward),
    ``strip_wrappers(net, NormalizedRewardNet)`` the unnormalised one. Other wrappers and
    ensemble members are kept. ``net`` is not modified: the result shares its parameters
    and statistics (so it keeps following training).
    """
    if isinstance(net, wrapper_types):
        return strip_wrappers(net.base, *wrapper_types)
    if isinstance(net, RewardEnsemble):
        members = [strip_wrappers(m, *wrapper_types) for m in net.members]
        if all(new is old for new, old in zip(members, net.members, strict=True)):
            return net
        new = _shallow_copy(net)
        new.members = nn.ModuleList(members)
        return new
    if isinstance(net, RewardNetWrapper):
        base = strip_wrappers(net.base, *wrapper_types)
        if base is net.base:
            return net
        new = _shallow_copy(net)
        new.base = base
        return new
    return net


__all__ = [
    "NORMALIZERS",
    "NormalizedRewardNet",
    "RewardEnsemble",
    "AddStdRewardWrapper",
    "strip_wrappers",
]
