"""The preference dataset: labelled pairs of fragments, bounded, stored compactly.

Pairs live in one preallocated ``[capacity, 2, L]`` TensorDict (a ring buffer: the oldest
pairs are overwritten first once ``max_size`` is reached), optionally memory-mapped to a
directory, so memory stays flat however long a run is. Each stored fragment is a copy of
its ``L`` transitions, never a view into the trajectory it came from. Files are plain
memory-mapped tensors plus JSON metadata (tensordict's ``memmap`` format): no pickle.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from tensordict import TensorDict, TensorDictBase

from tdimitation.errors import PreferenceError, TrajectoryFileError

_META = "preference_dataset.json"


class PreferenceDataset:
    """Labelled fragment pairs, oldest first.

    Args:
        max_size: most pairs kept (None: unbounded, grows by doubling).
        memmap_dir: keep the pairs in memory-mapped files under this directory (needs
            ``max_size``: the files are allocated once at full size).
    """

    def __init__(self, max_size: int | None = None, memmap_dir: str | None = None) -> None:
        if max_size is not None and max_size < 1:
            raise PreferenceError(f"max_size must be >= 1 or None, got {max_size}")
        if memmap_dir is not None and max_size is None:
            raise PreferenceError(
                "a memory-mapped preference dataset needs max_size (its files are allocated "
                "once at full size)"
            )
        self.max_size = max_size
        self.memmap_dir = memmap_dir
        self._pairs: TensorDictBase | None = None
        self._labels: torch.Tensor | None = None
        self._size = 0
        self._next = 0  # physical row the next pair is written to

    def __len__(self) -> int:
        return self._size

    @property
    def fragment_length(self) -> int | None:
        """``L`` of the stored fragments (None while empty)."""
        return None if self._pairs is None else int(self._pairs.shape[2])

    # ------------------------------------------------------------- writing
    def _check(self, pairs: TensorDictBase, labels: torch.Tensor) -> None:
        if pairs.batch_dims != 3 or pairs.shape[1] != 2:
            raise PreferenceError(
                f"fragment pairs must have batch shape [P, 2, L], got {list(pairs.shape)}"
            )
        if not isinstance(labels, torch.Tensor) or labels.dtype != torch.float32:
            kind = labels.dtype if isinstance(labels, torch.Tensor) else type(labels).__name__
            raise PreferenceError(f"preference labels must be a float32 tensor, got {kind}")
        if labels.shape != pairs.shape[:1]:
            raise PreferenceError(
                f"preference labels have shape {list(labels.shape)} but there are "
                f"{pairs.shape[0]} pairs: give one label per pair"
            )
        if labels.numel() and not bool(((labels >= 0) & (labels <= 1)).all()):
            raise PreferenceError("preference labels must lie in [0, 1]")
        if self._pairs is not None and pairs.shape[2] != self._pairs.shape[2]:
            raise PreferenceError(
                f"fragments of length {pairs.shape[2]} cannot join a dataset of length "
                f"{self._pairs.shape[2]}"
            )

    def _allocate(self, example: TensorDictBase, capacity: int) -> None:
        template = example[:1].cpu()
        store = template.expand(capacity, *template.shape[1:]).clone()
        labels = torch.zeros(capacity, dtype=torch.float32)
        if self.memmap_dir is not None:
            Path(self.memmap_dir).mkdir(parents=True, exist_ok=True)
            store = TensorDict({"pairs": store, "labels": labels}, [capacity]).memmap_(
                prefix=self.memmap_dir
            )
            self._pairs, self._labels = store["pairs"], store["labels"]
        else:
            self._pairs, self._labels = store, labels

    def _grow(self, needed: int) -> None:
        capacity = self._pairs.shape[0]
        new_capacity = max(needed, 2 * capacity)
        old_pairs, old_labels = self.pairs(), self.labels()
        self._allocate(old_pairs if old_pairs.shape[0] else self._pairs, new_capacity)
        self._pairs[: self._size] = old_pairs
        self._labels[: self._size] = old_labels
        self._next = self._size

    def push(self, pairs: TensorDictBase, labels: torch.Tensor) -> None:
        """Add labelled pairs (copies), evicting the oldest beyond ``max_size``."""
        self._check(pairs, labels)
        n = pairs.shape[0]
        if n == 0:
            return
        pairs, labels = pairs.cpu(), labels.cpu()
        if self.max_size is not None and n > self.max_size:
            pairs, labels, n = pairs[-self.max_size :], labels[-self.max_size :], self.max_size
        if self._pairs is None:
            self._allocate(pairs, self.max_size or max(n, 16))
        elif self.max_size is None and self._size + n > self._pairs.shape[0]:
            self._grow(self._size + n)
        capacity = self._pairs.shape[0]
        rows = (self._next + torch.arange(n)) % capacity
        self._pairs[rows] = pairs.select(*self._pairs.keys(True, True))
        self._labels[rows] = labels
        self._next = int((self._next + n) % capacity)
        self._size = min(self._size + n, capacity)

    # ------------------------------------------------------------- reading
    def _order(self) -> torch.Tensor:
        """Physical rows in logical (oldest-first) order."""
        capacity = self._pairs.shape[0]
        first = (self._next - self._size) % capacity
        return (first + torch.arange(self._size)) % capacity

    def pairs(self, index: torch.Tensor | None = None) -> TensorDictBase:
        """Stored pairs ``[n, 2, L]`` (all, oldest first, or at logical ``index``)."""
        if self._pairs is None:
            raise PreferenceError("the preference dataset is empty")
        rows = self._order() if index is None else self._order()[index]
        return self._pairs[rows]

    def labels(self, index: torch.Tensor | None = None) -> torch.Tensor:
        """Stored labels ``[n]`` (all, oldest first, or at logical ``index``)."""
        if self._labels is None:
            raise PreferenceError("the preference dataset is empty")
        rows = self._order() if index is None else self._order()[index]
        return self._labels[rows].clone()

    def __getitem__(self, index: torch.Tensor) -> tuple[TensorDictBase, torch.Tensor]:
        return self.pairs(index), self.labels(index)

    # ---------------------------------------------------------- persistence
    def state_dict(self) -> dict[str, Any]:
        """Contents (sized to them, oldest first) and settings, for checkpoints."""
        empty = self._size == 0
        return {
            "max_size": self.max_size,
            "pairs": None if empty else self.pairs().to_dict(),
            "labels": None if empty else self.labels(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Replace the contents with :meth:`state_dict`'s."""
        self._pairs, self._labels, self._size, self._next = None, None, 0, 0
        if state["pairs"] is not None:
            pairs = TensorDict.from_dict(state["pairs"], batch_dims=3)
            self.push(pairs, state["labels"].float())

    def save(self, path: str | os.PathLike) -> None:
        """Write the dataset to directory ``path`` (memory-mapped tensors + JSON, atomic)."""
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        if self._size:
            TensorDict({"pairs": self.pairs(), "labels": self.labels()}, [self._size]).memmap(
                prefix=tmp / "data"
            )
        (tmp / _META).write_text(json.dumps({"max_size": self.max_size, "size": self._size}))
        if path.exists():
            shutil.rmtree(path)
        tmp.rename(path)

    @classmethod
    def load(
        cls, path: str | os.PathLike, max_size: int | None = None, memmap_dir: str | None = None
    ) -> PreferenceDataset:
        """Read a dataset :meth:`save` wrote (``max_size`` overrides the saved bound)."""
        path = Path(path)
        try:
            meta = json.loads((path / _META).read_text())
        except (OSError, ValueError) as err:
            raise TrajectoryFileError(
                f"{path} is not a saved preference dataset (no readable {_META}): {err}"
            ) from None
        dataset = cls(max_size if max_size is not None else meta["max_size"], memmap_dir)
        if meta["size"]:
            data = TensorDict.load_memmap(path / "data")
            dataset.push(data["pairs"].clone(), data["labels"].clone())
        return dataset


__all__ = ["PreferenceDataset"]
