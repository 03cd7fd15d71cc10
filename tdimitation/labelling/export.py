"""Answers out of the labelling store: CSV, and the preference dataset's file format."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import torch
from tensordict import TensorDict

from tdimitation.algorithms.preference.dataset import PreferenceDataset
from tdimitation.errors import LabellingError
from tdimitation.labelling.store import LabelStore

CSV_COLUMNS = ("answer_id", "session", "pair_id", "labeller", "choice", "label", "note", "created")


def export_csv(store: LabelStore, path: str | os.PathLike, session: str | None = None) -> int:
    """Write every answer (of ``session``) as CSV (atomically); returns the row count."""
    rows = store.export_rows(session)
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, CSV_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)
    return len(rows)


def export_dataset(store: LabelStore, path: str | os.PathLike, session: str) -> int:
    """Write ``session``'s labelled pairs as a :class:`PreferenceDataset` directory (what
    ``PreferenceDataset.load`` reads): the first answer of each pair, "can't tell" left
    out, with the fragments the gatherer saved. Returns the number of comparisons.
    """
    seen: set[int] = set()
    chosen = []
    for row in store.export_rows(session):
        if row["pair_id"] in seen:
            continue
        seen.add(row["pair_id"])
        if row["label"] is not None and row["fragments"]:
            chosen.append(row)
    if not chosen:
        raise LabellingError(f"session {session!r} has no labelled pairs to export")
    batches: dict[str, TensorDict] = {}
    pairs, labels = [], []
    for row in chosen:
        where = row["fragments"]
        if where not in batches:
            try:
                batches[where] = TensorDict.load_memmap(where)
            except (OSError, RuntimeError) as err:
                raise LabellingError(f"cannot read the fragments saved in {where}: {err}") from None
        pairs.append(batches[where][row["fragment_index"]].clone())
        labels.append(row["label"])
    dataset = PreferenceDataset()
    dataset.push(torch.stack(pairs), torch.tensor(labels, dtype=torch.float32))
    dataset.save(path)
    return len(dataset)


__all__ = ["CSV_COLUMNS", "export_csv", "export_dataset"]
