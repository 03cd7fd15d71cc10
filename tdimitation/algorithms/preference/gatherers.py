"""Preference gatherers: who labels the pairs, behind one asynchronous interface.

A gatherer receives pairs with integer ids (:meth:`PreferenceGatherer.submit`) and answers
some or all of them later (:meth:`PreferenceGatherer.poll` returns the ids answered since
the last poll and their labels). The algorithm keeps unanswered pairs pending and trains
on whatever has been answered, so a labeller that takes minutes (a human behind a web
page) plugs in without changes; the synthetic gatherer simply answers at once.

Labels are float32 in [0, 1]: the probability that the first fragment is preferred (1:
the first, 0: the second, 0.5: a tie). A NaN label withdraws a pair (it expired, or the
labeller could not tell): the algorithm drops it from the pending pairs without training
on it. ``tdimitation.labelling.HumanGatherer`` asks people through a web page.
"""

from __future__ import annotations

from typing import Any

import torch
from tensordict import TensorDictBase

from tdimitation.errors import PreferenceError
from tdimitation.objectives.preference import TRUE_REWARD, discounted_fragment_returns
from tdimitation.rng import make_rng, uniform


class PreferenceGatherer:
    """Base class of labellers (see the module docs for the protocol).

    Subclasses implement :meth:`submit` and :meth:`poll`; ``metrics`` holds the last
    values to log, and :meth:`state_dict`/:meth:`load_state_dict` what a checkpoint keeps.
    """

    def __init__(self) -> None:
        self.metrics: dict[str, float] = {}

    def submit(self, pairs: TensorDictBase, ids: torch.Tensor) -> None:
        """Ask for labels of ``pairs`` (``[P, 2, L]``), identified by ``ids`` (int64 ``[P]``)."""
        raise NotImplementedError

    def poll(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(ids, labels)`` answered since the last call (both ``[K]``, K may be 0; a NaN
        label withdraws its pair).
        """
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint keeps (tensors and primitives only)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""


class SyntheticGatherer(PreferenceGatherer):
    """Labels from the true reward: a Boltzmann-rational labeller.

    P(1 ≻ 2) = σ(clip(temperature · (R1 - R2), ±threshold)) with ``R`` the discounted true
    return of a fragment. Temperature 0 is a perfectly rational labeller (1, 0, or 0.5 for
    ties). With ``sample=True`` labels are Bernoulli draws of those probabilities from the
    gatherer's own generator (ties at temperature 0 stay 0.5); otherwise the
    probabilities themselves. Every answer is immediate. Logs ``entropy``, the mean binary
    entropy of the probabilities (in nats).

    Args:
        temperature: rationality (0: deterministic).
        discount_factor: γ of the fragment returns.
        sample: draw 0/1 labels instead of returning probabilities.
        seed: seed of the gatherer's generator (needed when ``sample`` is True).
        threshold: bound of the scaled return difference.
    """

    def __init__(
        self,
        temperature: float = 1.0,
        discount_factor: float = 1.0,
        sample: bool = True,
        seed: int | None = None,
        threshold: float = 50.0,
    ) -> None:
        super().__init__()
        if temperature < 0:
            raise PreferenceError(f"temperature must be >= 0, got {temperature}")
        if sample and seed is None:
            raise PreferenceError(
                "SyntheticGatherer(sample=True) needs a seed for its own generator (or "
                "sample=False for probabilities)"
            )
        if threshold <= 0:
            raise PreferenceError(f"threshold must be > 0, got {threshold}")
        self.temperature = float(temperature)
        self.discount_factor = float(discount_factor)
        self.sample = bool(sample)
        self.threshold = float(threshold)
        self.rng = make_rng(seed) if seed is not None else None
        self._answered: list[tuple[torch.Tensor, torch.Tensor]] = []

    def probabilities(self, pairs: TensorDictBase) -> torch.Tensor:
        """P(first fragment preferred) under the true reward, float32 ``[P]``."""
        reward = pairs.get(TRUE_REWARD, None)
        if reward is None:
            raise PreferenceError(
                "the synthetic gatherer needs the true reward (('next', 'reward')) in the "
                "fragments; use a gatherer that asks a labeller for reward-free data"
            )
        returns = discounted_fragment_returns(reward[..., 0].double(), self.discount_factor)
        diff = returns[:, 0] - returns[:, 1]
        if self.temperature == 0:
            probs = 0.5 * (1 + torch.sign(diff))
        else:
            probs = torch.sigmoid((self.temperature * diff).clamp(-self.threshold, self.threshold))
        return probs.float().cpu()

    def labels(self, pairs: TensorDictBase) -> torch.Tensor:
        """Labels of ``pairs`` (float32 ``[P]``); updates ``metrics``."""
        probs = self.probabilities(pairs)
        p = probs.double().clamp(1e-12, 1 - 1e-12)
        entropy = -(p * p.log() + (1 - p) * (1 - p).log())
        self.metrics = {"entropy": float(entropy.mean())}
        if not self.sample or self.temperature == 0:
            return probs
        draws = uniform(probs.shape, self.rng)
        return (draws < probs).float()

    def submit(self, pairs: TensorDictBase, ids: torch.Tensor) -> None:
        self._answered.append((ids.reshape(-1).long().cpu(), self.labels(pairs)))

    def poll(self) -> tuple[torch.Tensor, torch.Tensor]:
        if not self._answered:
            return torch.zeros(0, dtype=torch.int64), torch.zeros(0, dtype=torch.float32)
        ids = torch.cat([i for i, _ in self._answered])
        labels = torch.cat([lab for _, lab in self._answered])
        self._answered = []
        return ids, labels

    def state_dict(self) -> dict[str, Any]:
        ids, labels = self.poll()
        self._answered = [(ids, labels)] if ids.numel() else []
        return {
            "rng": None if self.rng is None else self.rng.get_state(),
            "answered_ids": ids,
            "answered_labels": labels,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("rng") is not None and self.rng is not None:
            self.rng.set_state(state["rng"])
        ids = state.get("answered_ids")
        answered = ids is not None and ids.numel() > 0
        self._answered = [(ids, state["answered_labels"])] if answered else []


def make_gatherer(
    env_id: str,
    seed: int | None,
    temperature: float,
    discount_factor: float,
    sample_labels: bool,
    label_threshold: float,
    human_gatherer: dict[str, Any] | None = None,
) -> PreferenceGatherer:
    """The labeller :class:`PreferenceComparisons` asks: people through the labelling page
    when ``human_gatherer`` gives its options, else the synthetic (Boltzmann) oracle.
    """
    if human_gatherer is not None:
        # Imported here: the labelling store needs the [label] extra.
        from tdimitation.labelling.gatherer import HumanGatherer

        return HumanGatherer(**{"env_id": env_id, "seed": labeller_seed(seed), **human_gatherer})
    return SyntheticGatherer(
        temperature,
        discount_factor,
        sample_labels,
        seed=labeller_seed(seed) if sample_labels else None,
        threshold=label_threshold,
    )


def labeller_seed(seed: int | None) -> int:
    """The labeller's own seed, apart from the run's other random streams."""
    return 7919 if seed is None else int(seed) + 7919


__all__ = ["PreferenceGatherer", "SyntheticGatherer", "make_gatherer"]
