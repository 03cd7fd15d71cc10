"""The pairs sent to a gatherer and not yet answered, kept by id until their labels come."""

from __future__ import annotations

from typing import Any

import torch
from tensordict import TensorDict, TensorDictBase

from tdimitation.algorithms.preference.gatherers import PreferenceGatherer
from tdimitation.errors import PreferenceError


class PendingPairs:
    """Pairs submitted to a gatherer, waiting for their labels.

    Each pair gets the next integer id when it is submitted; :meth:`answered` matches the
    ids a gatherer answers with the pairs, removes them, and returns the pairs with their
    labels (withdrawn pairs, labelled NaN, are removed and not returned).

    Attributes:
        pairs: the waiting pairs ``[P, 2, L]`` (None when none wait).
        ids: their ids (int64 ``[P]``).
        next_id: the id the next submitted pair gets.
    """

    def __init__(self) -> None:
        self.pairs: TensorDictBase | None = None
        self.ids = torch.zeros(0, dtype=torch.int64)
        self.next_id = 0

    def submit(self, pairs: TensorDictBase, gatherer: PreferenceGatherer) -> None:
        """Give ``pairs`` ids, keep them, and ask ``gatherer`` for their labels."""
        ids = torch.arange(self.next_id, self.next_id + pairs.shape[0])
        self.next_id += pairs.shape[0]
        self.pairs = pairs if self.pairs is None else torch.cat([self.pairs, pairs])
        self.ids = torch.cat([self.ids, ids])
        gatherer.submit(pairs, ids)

    def answered(
        self, ids: torch.Tensor, labels: torch.Tensor
    ) -> tuple[TensorDictBase | None, torch.Tensor]:
        """The answered pairs and their labels, no longer waiting (None: no pairs)."""
        if ids.numel() == 0 or self.pairs is None:
            return None, labels[:0]
        match = self.ids.unsqueeze(0) == ids.unsqueeze(1)  # [answers, waiting]
        if not bool(match.any(1).all()):
            raise PreferenceError("the gatherer answered ids that were never submitted")
        position = match.float().argmax(1)
        if labels.shape == ids.shape:  # other shapes reach the dataset's checks as they are
            # A NaN label withdraws a pair (it expired, or the labeller could not tell).
            kept = ~torch.isnan(labels)
            position, labels = position[kept], labels[kept]
        pairs = self.pairs[position]
        waiting = ~match.any(0)
        self.pairs = self.pairs[waiting] if bool(waiting.any()) else None
        self.ids = self.ids[waiting]
        return pairs, labels

    def state_dict(self) -> dict[str, Any]:
        return {
            "pending": None if self.pairs is None else self.pairs.to_dict(),
            "pending_ids": self.ids,
            "next_pair_id": self.next_id,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pairs = state["pending"]
        self.pairs = None if pairs is None else TensorDict.from_dict(pairs, batch_dims=3)
        self.ids = state["pending_ids"]
        self.next_id = int(state["next_pair_id"])


__all__ = ["PendingPairs"]
