"""The labelling store: queries, clips, labellers and answers in one SQL database.

SQLite by default (a file under the data directory); any SQLAlchemy database URL selects
another server (e.g. ``postgresql://user@host/labels`` for a team). Everything lives in the
database, so a server or training process that restarts loses nothing: a pending query is
served again (to the labeller it was assigned to), an answered one is not asked again.

A query is one pair of fragments of a training *session*, shown to ``copies`` labellers
(1, or 2 for agreement checks). Each labeller answers a query at most once. The gatherer of
the training process *claims* answers: a claimed answer can no longer be undone.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from tdimitation.errors import LabellingError

# What each button means, as the label of "the left clip is preferred" (imitation's
# semantics: 1 left, 0 right, 0.5 equal); "can't tell" answers are kept but not trained on.
CHOICES: dict[str, float | None] = {"left": 1.0, "right": 0.0, "equal": 0.5, "cant_tell": None}
MAX_NOTE_CHARS = 500
MAX_NAME_CHARS = 100

metadata = sa.MetaData()
labellers = sa.Table(
    "labellers",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(MAX_NAME_CHARS), nullable=False, unique=True),
    sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
    sa.Column("created", sa.Float, nullable=False),
)
queries = sa.Table(
    "queries",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("session", sa.String(200), nullable=False),
    sa.Column("pair_id", sa.BigInteger, nullable=False),
    sa.Column("left_clip", sa.String(200), nullable=False),
    sa.Column("right_clip", sa.String(200), nullable=False),
    sa.Column("fragments", sa.String(1000), nullable=True),
    sa.Column("fragment_index", sa.Integer, nullable=True),
    sa.Column("copies", sa.Integer, nullable=False),
    sa.Column("created", sa.Float, nullable=False),
    sa.Column("expires", sa.Float, nullable=False),
    # pending (no answer yet), answered, expired
    sa.Column("status", sa.String(16), nullable=False),
    sa.UniqueConstraint("session", "pair_id"),
)
assignments = sa.Table(
    "assignments",
    metadata,
    sa.Column("query_id", sa.Integer, sa.ForeignKey("queries.id"), primary_key=True),
    sa.Column("labeller_id", sa.Integer, sa.ForeignKey("labellers.id"), primary_key=True),
    sa.Column("assigned", sa.Float, nullable=False),
)
answers = sa.Table(
    "answers",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("query_id", sa.Integer, sa.ForeignKey("queries.id"), nullable=False),
    sa.Column("labeller_id", sa.Integer, sa.ForeignKey("labellers.id"), nullable=False),
    sa.Column("choice", sa.String(16), nullable=False),
    sa.Column("label", sa.Float, nullable=True),
    sa.Column("note", sa.String(MAX_NOTE_CHARS), nullable=False, default=""),
    sa.Column("created", sa.Float, nullable=False),
    sa.Column("claimed", sa.Boolean, nullable=False, default=False),
    sa.UniqueConstraint("query_id", "labeller_id"),
)


class AnswerRejected(LabellingError):
    """An answer or undo the store refuses; ``status`` is the HTTP status to reply with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Labeller:
    """A labeller known to the store (``id`` and display ``name``)."""

    id: int
    name: str


def hash_token(token: str) -> str:
    """The stored form of a token (tokens themselves are never stored)."""
    return hashlib.sha256(token.encode()).hexdigest()


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    # WAL lets the page server read while the training process writes.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


class LabelStore:
    """Queries, labellers and answers in a SQL database (see the module docs).

    Args:
        url: a SQLAlchemy database URL (``sqlite:///path/labels.db``, ``postgresql://...``).
    """

    def __init__(self, url: str) -> None:
        try:
            parsed = sa.engine.make_url(url)
            if parsed.get_backend_name() == "sqlite" and parsed.database not in (
                None,
                "",
                ":memory:",
            ):
                # A SQLite file's directory is made for it (as the data directory is).
                Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
            if url.startswith("sqlite"):
                self.engine = sa.create_engine(
                    url, connect_args={"check_same_thread": False, "timeout": 60}
                )
                sa.event.listen(self.engine, "connect", _sqlite_pragmas)
            else:
                self.engine = sa.create_engine(url, pool_pre_ping=True)
            metadata.create_all(self.engine)
        except (sa.exc.ArgumentError, sa.exc.OperationalError, ModuleNotFoundError) as err:
            first = str(err).splitlines()[0]
            raise LabellingError(
                f"cannot open the labelling database {url!r} ({first}); give a SQLAlchemy "
                "URL such as sqlite:///labels.db whose directory exists"
            ) from None
        self.url = url
        # Serialises the read-then-write steps (serving a query) within one server process.
        self._lock = threading.Lock()

    def close(self) -> None:
        """Release the database connections."""
        self.engine.dispose()

    # ----------------------------------------------------------------- labellers
    def add_labeller(self, name: str) -> str:
        """Register labeller ``name``; returns their new token (shown once, stored hashed)."""
        name = name.strip()
        if not name or len(name) > MAX_NAME_CHARS:
            raise LabellingError(f"a labeller name must be 1-{MAX_NAME_CHARS} characters")
        token = secrets.token_urlsafe(24)
        with self.engine.begin() as conn:
            if conn.execute(sa.select(labellers.c.id).where(labellers.c.name == name)).first():
                raise LabellingError(f"labeller {name!r} exists already; choose another name")
            conn.execute(
                labellers.insert().values(
                    name=name, token_hash=hash_token(token), created=time.time()
                )
            )
        return token

    def labeller(self, token: str | None) -> Labeller | None:
        """The labeller holding ``token``, or None for a missing or unknown token."""
        if not token or len(token) > 200:
            return None
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(labellers.c.id, labellers.c.name).where(
                    labellers.c.token_hash == hash_token(token)
                )
            ).first()
        return None if row is None else Labeller(row.id, row.name)

    # ------------------------------------------------------------------- queries
    def add_queries(self, session: str, rows: list[dict[str, Any]], expires: float) -> None:
        """Publish queries of ``session`` (dicts with ``pair_id``, ``left_clip``,
        ``right_clip``, ``fragments``, ``fragment_index``, ``copies``); pairs the store has
        already are left as they are (a restarted training process submits them again).
        """
        now = time.time()
        with self._lock, self.engine.begin() as conn:
            known = {
                r.pair_id
                for r in conn.execute(
                    sa.select(queries.c.pair_id).where(queries.c.session == session)
                )
            }
            new = [
                {**row, "session": session, "created": now, "expires": expires, "status": "pending"}
                for row in rows
                if int(row["pair_id"]) not in known
            ]
            if new:
                conn.execute(queries.insert(), new)

    def next_query(self, labeller_id: int) -> dict[str, Any] | None:
        """The query to show a labeller: one assigned to them and not yet answered by them
        first (so a reloaded page or restarted server shows it again), else a new one.
        """
        now = time.time()
        mine = sa.select(answers.c.query_id).where(answers.c.labeller_id == labeller_id)
        live = sa.and_(queries.c.status != "expired", queries.c.expires > now)
        with self._lock, self.engine.begin() as conn:
            row = conn.execute(
                sa.select(queries)
                .join(assignments, assignments.c.query_id == queries.c.id)
                .where(assignments.c.labeller_id == labeller_id, live, queries.c.id.not_in(mine))
                .order_by(queries.c.id)
                .limit(1)
            ).first()
            if row is None:
                taken = (
                    sa.select(sa.func.count())
                    .select_from(assignments)
                    .where(assignments.c.query_id == queries.c.id)
                    .scalar_subquery()
                )
                given = sa.select(assignments.c.query_id).where(
                    assignments.c.labeller_id == labeller_id
                )
                row = conn.execute(
                    sa.select(queries)
                    .where(live, taken < queries.c.copies, queries.c.id.not_in(given))
                    .order_by(queries.c.id)
                    .limit(1)
                ).first()
                if row is None:
                    return None
                conn.execute(
                    assignments.insert().values(
                        query_id=row.id, labeller_id=labeller_id, assigned=now
                    )
                )
        return {"query_id": row.id, "left_clip": row.left_clip, "right_clip": row.right_clip}

    def answer(
        self, labeller_id: int, query_id: int, choice: str, note: str = ""
    ) -> dict[str, Any]:
        """Record a labeller's answer; raises :class:`AnswerRejected` (store unchanged) for an
        unknown, expired or unassigned query, a second answer, or an unknown choice.
        """
        if choice not in CHOICES:
            raise AnswerRejected(422, f"unknown choice {choice!r}; use one of {sorted(CHOICES)}")
        if len(note) > MAX_NOTE_CHARS:
            raise AnswerRejected(422, f"a note has at most {MAX_NOTE_CHARS} characters")
        now = time.time()
        with self._lock, self.engine.begin() as conn:
            query = conn.execute(sa.select(queries).where(queries.c.id == query_id)).first()
            if query is None:
                raise AnswerRejected(404, f"unknown query {query_id}")
            if query.status == "expired" or query.expires <= now:
                raise AnswerRejected(410, f"query {query_id} has expired")
            assigned = conn.execute(
                sa.select(assignments.c.query_id).where(
                    assignments.c.query_id == query_id, assignments.c.labeller_id == labeller_id
                )
            ).first()
            if assigned is None:
                raise AnswerRejected(403, f"query {query_id} was not given to you")
            previous = conn.execute(
                sa.select(answers.c.choice).where(
                    answers.c.query_id == query_id, answers.c.labeller_id == labeller_id
                )
            ).first()
            if previous is not None:
                raise AnswerRejected(
                    409, f"you answered query {query_id} already ({previous.choice}); undo first"
                )
            result = conn.execute(
                answers.insert().values(
                    query_id=query_id,
                    labeller_id=labeller_id,
                    choice=choice,
                    label=CHOICES[choice],
                    note=note,
                    created=now,
                    claimed=False,
                )
            )
            conn.execute(queries.update().where(queries.c.id == query_id).values(status="answered"))
        return {"answer_id": result.inserted_primary_key[0], "query_id": query_id, "choice": choice}

    def undo(self, labeller_id: int) -> dict[str, Any]:
        """Withdraw the labeller's last answer if training has not claimed it yet."""
        with self._lock, self.engine.begin() as conn:
            last = conn.execute(
                sa.select(answers)
                .where(answers.c.labeller_id == labeller_id)
                .order_by(answers.c.id.desc())
                .limit(1)
            ).first()
            if last is None:
                raise AnswerRejected(409, "nothing to undo: you have not answered yet")
            if last.claimed:
                raise AnswerRejected(409, "your last answer is already used for training")
            conn.execute(answers.delete().where(answers.c.id == last.id))
            left = conn.execute(
                sa.select(sa.func.count())
                .select_from(answers)
                .where(answers.c.query_id == last.query_id)
            ).scalar()
            if not left:
                conn.execute(
                    queries.update()
                    .where(queries.c.id == last.query_id, queries.c.status == "answered")
                    .values(status="pending")
                )
        return {"query_id": last.query_id, "choice": last.choice}

    # ------------------------------------------------------------ training side
    def claim_answers(self, session: str, after: int) -> list[tuple[int, int, float | None]]:
        """``(answer id, pair id, label)`` of the first answer to each query of ``session``
        with an answer id above ``after``, in answer order; claimed answers cannot be undone.

        Claiming marks rows first and reads them second, so an answer undone in between is
        either claimed (and kept) or gone, never both.
        """
        in_session = sa.select(queries.c.id).where(queries.c.session == session)
        with self.engine.begin() as conn:
            conn.execute(
                answers.update()
                .where(answers.c.id > after, answers.c.query_id.in_(in_session))
                .values(claimed=True)
            )
        other = answers.alias("other")
        first = (
            sa.select(sa.func.min(other.c.id))
            .where(other.c.query_id == answers.c.query_id)
            .scalar_subquery()
        )
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(answers.c.id, queries.c.pair_id, answers.c.label)
                .join(queries, queries.c.id == answers.c.query_id)
                .where(
                    queries.c.session == session,
                    answers.c.id > after,
                    answers.c.claimed.is_(True),
                    answers.c.id == first,
                )
                .order_by(answers.c.id)
            ).all()
        return [(r.id, int(r.pair_id), r.label) for r in rows]

    def max_answer_id(self, session: str) -> int:
        """The largest answer id of ``session`` (0 without answers)."""
        with self.engine.connect() as conn:
            value = conn.execute(
                sa.select(sa.func.max(answers.c.id))
                .join(queries, queries.c.id == answers.c.query_id)
                .where(queries.c.session == session)
            ).scalar()
        return int(value or 0)

    def expire(self, session: str, now: float | None = None) -> list[int]:
        """Mark unanswered queries of ``session`` past their deadline expired; returns the
        pair ids of every expired query of the session.
        """
        now = time.time() if now is None else now
        with self._lock, self.engine.begin() as conn:
            conn.execute(
                queries.update()
                .where(
                    queries.c.session == session,
                    queries.c.status == "pending",
                    queries.c.expires <= now,
                )
                .values(status="expired")
            )
            rows = conn.execute(
                sa.select(queries.c.pair_id).where(
                    queries.c.session == session, queries.c.status == "expired"
                )
            ).all()
        return [int(r.pair_id) for r in rows]

    # -------------------------------------------------------------- reporting
    def progress(self, labeller_id: int) -> dict[str, int]:
        """The labeller's answer count and the number of queries still open."""
        now = time.time()
        with self.engine.connect() as conn:
            done = conn.execute(
                sa.select(sa.func.count())
                .select_from(answers)
                .where(answers.c.labeller_id == labeller_id)
            ).scalar()
            open_ = conn.execute(
                sa.select(sa.func.count())
                .select_from(queries)
                .where(queries.c.status == "pending", queries.c.expires > now)
            ).scalar()
        return {"answered": int(done), "open": int(open_)}

    def status(self) -> dict[str, Any]:
        """Per-labeller answer counts and the agreement on pairs two labellers answered
        (both with a preference or a tie: the share of such pairs with the same answer).
        """
        with self.engine.connect() as conn:
            counts = conn.execute(
                sa.select(labellers.c.name, sa.func.count(answers.c.id))
                .select_from(labellers.outerjoin(answers, answers.c.labeller_id == labellers.c.id))
                .group_by(labellers.c.id, labellers.c.name)
                .order_by(labellers.c.name)
            ).all()
            rows = conn.execute(
                sa.select(answers.c.query_id, answers.c.choice, labellers.c.name)
                .join(labellers, labellers.c.id == answers.c.labeller_id)
                .where(answers.c.label.is_not(None))
            ).all()
            totals = conn.execute(
                sa.select(queries.c.status, sa.func.count()).group_by(queries.c.status)
            ).all()
        by_query: dict[int, list[tuple[str, str]]] = {}
        for row in rows:
            by_query.setdefault(row.query_id, []).append((row.name, row.choice))
        doubles = [c[:2] for c in by_query.values() if len(c) >= 2]
        agreed = sum(a[1] == b[1] for a, b in doubles)
        # Each labeller's agreement with the other labeller of their doubled pairs.
        shared: dict[str, list[bool]] = {}
        for a, b in doubles:
            for name in (a[0], b[0]):
                shared.setdefault(name, []).append(a[1] == b[1])
        return {
            "labellers": {name: int(n) for name, n in counts},
            "queries": {status: int(n) for status, n in totals},
            "double_answered": len(doubles),
            "agreement": agreed / len(doubles) if doubles else None,
            "agreement_by_labeller": {n: sum(v) / len(v) for n, v in sorted(shared.items())},
        }

    def query_rows(self, session: str | None = None) -> list[dict[str, Any]]:
        """Every query (of ``session``), oldest first."""
        stmt = sa.select(queries).order_by(queries.c.id)
        if session is not None:
            stmt = stmt.where(queries.c.session == session)
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(stmt)]

    def export_rows(self, session: str | None = None) -> list[dict[str, Any]]:
        """Every answer (of ``session``, or of all sessions), oldest first."""
        stmt = (
            sa.select(
                answers.c.id.label("answer_id"),
                queries.c.session,
                queries.c.pair_id,
                queries.c.fragments,
                queries.c.fragment_index,
                labellers.c.name.label("labeller"),
                answers.c.choice,
                answers.c.label,
                answers.c.note,
                answers.c.created,
            )
            .join(queries, queries.c.id == answers.c.query_id)
            .join(labellers, labellers.c.id == answers.c.labeller_id)
            .order_by(answers.c.id)
        )
        if session is not None:
            stmt = stmt.where(queries.c.session == session)
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(stmt)]


__all__ = ["CHOICES", "AnswerRejected", "LabelStore", "Labeller", "hash_token"]
