"""The human gatherer: preference queries published to the labelling store, answered by
people on the page ``tdimitation label serve`` serves, collected while training goes on.
"""

from __future__ import annotations

import math
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

import torch
from tensordict import TensorDictBase

from tdimitation.algorithms.preference.gatherers import PreferenceGatherer
from tdimitation.errors import LabellingError
from tdimitation.labelling.clips import ClipRenderer
from tdimitation.labelling.store import LabelStore
from tdimitation.rng import make_rng, uniform
from tdimitation.tracking import data_dir

SESSION_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,100}$")


def default_database(root: str | os.PathLike | None = None) -> str:
    """``sqlite:///DATA_DIR/labelling/labels.db`` (the data directory's SQLite store)."""
    path = data_dir(root) / "labelling"
    path.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path / 'labels.db'}"


def default_clip_dir(root: str | os.PathLike | None = None) -> Path:
    """``DATA_DIR/labelling/clips``."""
    return data_dir(root) / "labelling" / "clips"


class HumanGatherer(PreferenceGatherer):
    """Labels from people: each submitted pair becomes a query with two clips in the store.

    :meth:`poll` returns the answers that arrived since the last poll (the first answer of
    each pair; "can't tell" and expired pairs as NaN labels, which the algorithm drops), and
    waits until at least ``min_answers`` labels came in or no pair is left open. Pairs
    unanswered ``timeout`` seconds after their submission expire. ``agreement_frac`` of the
    pairs (drawn from the gatherer's seeded generator) are shown to two labellers; the
    second answer only counts towards the agreement on the status page.

    Everything is in the store, so a restarted training process resumes from a checkpoint
    (which keeps the answers already taken and the pairs still open) without asking again.

    Args:
        database: SQLAlchemy URL of the store (default: SQLite in the data directory).
        clip_dir: where clips and the pairs' fragments are written.
        session: name of this run's queries in the store (letters, digits, ``_.-``).
        env_id: the env that draws clips from observations (see :mod:`.clips`).
        min_answers: labels each poll waits for (0: never wait).
        timeout: seconds after which an unanswered pair expires.
        agreement_frac: share of pairs shown to two labellers.
        seed: seed of the generator drawing the agreement pairs.
        poll_interval: seconds between looks at the store while waiting.
        max_wait: longest wait of one poll in seconds (None: until enough answers or no
            pair is open, which ``timeout`` bounds).
        fps: clip frame rate.
        clip_scale: size factor of the clips' frames.
    """

    def __init__(
        self,
        database: str | None = None,
        clip_dir: str | None = None,
        session: str = "default",
        env_id: str | None = None,
        min_answers: int = 1,
        timeout: float = 3600.0,
        agreement_frac: float = 0.0,
        seed: int = 0,
        poll_interval: float = 0.5,
        max_wait: float | None = None,
        fps: float = 20.0,
        clip_scale: float = 0.5,
    ) -> None:
        super().__init__()
        if not SESSION_NAME.match(session):
            raise LabellingError(
                f"session {session!r} must be 1-100 letters, digits, '_', '.' or '-'"
            )
        if min_answers < 0 or timeout <= 0 or poll_interval <= 0:
            raise LabellingError("min_answers must be >= 0, timeout and poll_interval > 0")
        if not 0.0 <= agreement_frac <= 1.0:
            raise LabellingError(f"agreement_frac must be in [0, 1], got {agreement_frac}")
        self.database = database
        self.clip_dir = clip_dir
        self.session = session
        self.env_id = env_id
        self.min_answers = int(min_answers)
        self.timeout = float(timeout)
        self.agreement_frac = float(agreement_frac)
        self.poll_interval = float(poll_interval)
        self.max_wait = max_wait
        self.fps = fps
        self.clip_scale = clip_scale
        self.rng = make_rng(seed)
        self._cursor = 0  # the largest answer id taken
        self._open: set[int] = set()
        self._store: LabelStore | None = None
        self._renderer: ClipRenderer | None = None

    @staticmethod
    def loggable_options(options: dict[str, Any]) -> dict[str, Any]:
        """``options`` with any password in the database URL masked (for logging)."""
        database = options.get("database")
        if not database:
            return dict(options)
        import sqlalchemy as sa

        try:
            shown = sa.engine.make_url(database).render_as_string(hide_password=True)
        except sa.exc.ArgumentError:
            shown = "<unparsable database URL>"
        return {**options, "database": shown}

    @property
    def store(self) -> LabelStore:
        """The store, opened on first use (building a recipe's module touches no files)."""
        if self._store is None:
            self._store = LabelStore(self.database or default_database())
        return self._store

    @property
    def renderer(self) -> ClipRenderer:
        """The clip renderer, created on first use."""
        if self._renderer is None:
            clips = Path(self.clip_dir) if self.clip_dir else default_clip_dir()
            self._renderer = ClipRenderer(clips, self.env_id, self.fps, self.clip_scale)
        return self._renderer

    @property
    def open_ids(self) -> set[int]:
        """Pair ids submitted and neither answered nor expired yet."""
        return set(self._open)

    def submit(self, pairs: TensorDictBase, ids: torch.Tensor) -> None:
        ids = ids.reshape(-1).long().cpu()
        if ids.numel() == 0:
            return
        renderer = self.renderer
        fragments = renderer.clip_dir.parent / "fragments" / self.session / f"{int(ids[0]):09d}"
        if not (fragments / "meta.json").exists():
            pairs.cpu().memmap(prefix=fragments)
        doubles = uniform((ids.numel(),), self.rng) < self.agreement_frac
        rows = []
        for i, pair_id in enumerate(ids.tolist()):
            rows.append(
                {
                    "pair_id": pair_id,
                    "left_clip": renderer.render(pairs[i, 0]),
                    "right_clip": renderer.render(pairs[i, 1]),
                    "fragments": str(fragments),
                    "fragment_index": i,
                    "copies": 2 if bool(doubles[i]) else 1,
                }
            )
        self.store.add_queries(self.session, rows, time.time() + self.timeout)
        self._open.update(ids.tolist())

    def _take(self) -> tuple[list[int], list[float]]:
        ids, labels = [], []
        for answer_id, pair_id, label in self.store.claim_answers(self.session, self._cursor):
            self._cursor = max(self._cursor, answer_id)
            if pair_id in self._open:
                self._open.discard(pair_id)
                ids.append(pair_id)
                labels.append(math.nan if label is None else float(label))
        for pair_id in self.store.expire(self.session):
            if pair_id in self._open:
                self._open.discard(pair_id)
                ids.append(pair_id)
                labels.append(math.nan)
        return ids, labels

    def poll(self) -> tuple[torch.Tensor, torch.Tensor]:
        start = last_report = time.monotonic()
        ids, labels = self._take()
        while self._open and sum(not math.isnan(x) for x in labels) < self.min_answers:
            waited = time.monotonic() - start
            if self.max_wait is not None and waited >= self.max_wait:
                break
            if time.monotonic() - last_report >= 10:
                last_report = time.monotonic()
                got = sum(not math.isnan(x) for x in labels)
                print(
                    f"waiting for labels: {got}/{self.min_answers}, {len(self._open)} pairs "
                    f"open, {waited:.0f} s",
                    file=sys.stderr,
                    flush=True,
                )
            time.sleep(self.poll_interval)
            more_ids, more_labels = self._take()
            ids += more_ids
            labels += more_labels
        answered = sum(not math.isnan(x) for x in labels)
        self.metrics = {
            "human/answers": float(answered),
            "human/dropped": float(len(labels) - answered),
            "human/open": float(len(self._open)),
        }
        return torch.tensor(ids, dtype=torch.int64), torch.tensor(labels, dtype=torch.float32)

    def state_dict(self) -> dict[str, Any]:
        return {
            "cursor": self._cursor,
            "open_ids": torch.tensor(sorted(self._open), dtype=torch.int64),
            "rng": self.rng.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._cursor = int(state["cursor"])
        self._open = set(state["open_ids"].tolist())
        self.rng.set_state(state["rng"])

    def close(self) -> None:
        """Release the store's connections and the renderer."""
        if self._renderer is not None:
            self._renderer.close()
        if self._store is not None:
            self._store.close()


__all__ = ["HumanGatherer", "default_clip_dir", "default_database"]
