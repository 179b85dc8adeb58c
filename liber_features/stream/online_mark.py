"""The oldest change a stream consumer committed and has not yet written online, kept in the ledger.

The flusher's pending users live in the consumer's memory; ``liber status`` and the next consumer of
the source cannot see them there. So each consumer that writes online keeps one ``stream_online``
row (per run): ``pending_since_us``, the commit time of the oldest change not yet online, is set
inside the transaction of the batch that makes the flusher's pending set non-empty, and cleared —
with ``written_us`` — once a write has left nothing pending. A failed write clears nothing, so the
row ages while Redis is away, and so does the row of a consumer that died with changes unwritten.

A consumer that starts on a source takes over the marks of its dead consumers (a run no longer live,
``ledger.runs``): it re-sends every user whose cache a run at or after the oldest such run saved
(``user_cache.updated_run``; more users than were pending, never fewer: a re-sent cache is the same
row again) and carries their oldest commit time as its own until that write succeeds.
"""

from __future__ import annotations

from sqlalchemy import select

from liber_features.ingest.job import states_where
from liber_features.ingest.partition import UserState
from liber_features.ledger.runs import run_is_live
from liber_features.ledger.store import Ledger, now_us
from liber_features.ledger.store import runs as runs_t
from liber_features.ledger.store import stream_online as online_t
from liber_features.ledger.store import user_cache as cache_t

__all__ = ["OnlineMark"]


class OnlineMark:
    """One consumer run's ``stream_online`` row (module docstring)."""

    def __init__(self, ledger: Ledger, source: str, run_id: int) -> None:
        self.ledger, self.source, self.run_id = ledger, source, run_id
        self.since_us: int | None = None  # the commit time of the oldest change not yet online
        self.written_us: int | None = None  # the last write that left nothing pending
        self.users_written = 0

    def _row(self, conn, since_us: int | None, pending_users: int) -> None:
        """The whole row, as this run knows it (one writer per row: its own run)."""
        self.ledger.upsert(conn, online_t, [{
            "run_id": self.run_id, "source": self.source, "pending_since_us": since_us,
            "pending_users": pending_users, "written_us": self.written_us,
            "users_written": self.users_written, "updated_us": now_us()}], ["run_id"])

    def adopt(self) -> list[UserState]:
        """Take over the marks dead consumers of this source left; the users to write again."""
        now = now_us()
        with self.ledger.begin() as conn:
            rows = conn.execute(
                select(online_t.c.run_id, online_t.c.pending_since_us, runs_t.c.status, runs_t.c.heartbeat_us,
                       runs_t.c.lease_us)
                .join(runs_t, runs_t.c.id == online_t.c.run_id, isouter=True)
                .where(online_t.c.source == self.source, online_t.c.pending_since_us.is_not(None),
                       online_t.c.run_id != self.run_id)).all()
            dead = [r for r in rows if r.status is None or not run_is_live(r.status, r.heartbeat_us, r.lease_us, now)]
            if not dead:
                return []
            states = list(states_where(conn, cache_t.c.updated_run >= min(r.run_id for r in dead)).values())
            self.since_us = min(r.pending_since_us for r in dead)
            conn.execute(online_t.update().where(online_t.c.run_id.in_([r.run_id for r in dead]))
                         .values(pending_since_us=None, pending_users=0, updated_us=now))
            self._row(conn, self.since_us, len(states))
        return states

    def committed(self, conn, pending_users: int) -> int | None:
        """Inside a batch's transaction that leaves ``pending_users`` users waiting: record the
        oldest pending change's commit time. Returns it; the caller keeps it after COMMIT
        (``confirm``): a rolled-back batch made no change."""
        since = self.since_us if self.since_us is not None else now_us()
        self._row(conn, since, pending_users)
        return since

    def confirm(self, since_us: int | None) -> None:
        self.since_us = since_us

    def written(self, pending_users: int, users_written: int) -> None:
        """After a flush attempt: when nothing is left pending, the mark is cleared with the write's
        time; while users are still pending (the write failed), the oldest commit time stays."""
        if pending_users or self.since_us is None:
            return
        self.written_us, self.users_written = now_us(), users_written
        with self.ledger.begin() as conn:
            self._row(conn, None, 0)
        self.since_us = None
