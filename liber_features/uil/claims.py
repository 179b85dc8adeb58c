"""Claimed encoder work: leases on partitions, a run heartbeat, commits only by the lease holder.

Several ``liber encode`` workers share one ledger. Before generating, a worker claims a batch of
ready partitions for (prompt version, LLM id) with a lease; a heartbeat thread renews its leases
and stamps its run. A crashed worker stops renewing: once its lease expires, the next worker takes
those partitions over. A commit first turns the worker's ``held`` claims into ``done`` — only the
claims it still holds, so a worker whose lease was taken over is rejected (and counted) instead of
writing a second copy; a ``done`` claim is never claimed again.

A lease that expired but was *not* taken over is still its holder's: the claim row says nobody
else has started that work, so accepting the commit keeps it exactly once and saves the calls.

PostgreSQL: new claims are ``INSERT … ON CONFLICT DO NOTHING``, expired ones are taken with
``SELECT … FOR UPDATE SKIP LOCKED``. SQLite: each claim/commit transaction starts with a write, so
SQLite's single-writer lock serializes them (busy_timeout waits) — safe, not fast.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterable, Iterator

from sqlalchemy import and_, delete, exists, func, select, update
from sqlalchemy.engine import Connection

from liber_features.errors import LiberError
from liber_features.ledger.stopping import critical
from liber_features.ledger.store import Ledger, claims, now_us
from liber_features.ledger.store import partitions as parts_t
from liber_features.ledger.store import runs as runs_t

__all__ = ["Lease", "poll_interval"]


class Lease:
    """One encode run's claims on (prompt version, LLM id) work, and its heartbeat."""

    def __init__(self, ledger: Ledger, run_id: int, prompt_version: str, llm_id: str,
                 lease_s: float) -> None:
        self.ledger, self.run_id = ledger, run_id
        self.pv, self.llm_id = prompt_version, llm_id
        self.lease_us = int(lease_s * 1e6)
        # The heartbeat thread and the main thread update the same claim rows: one ledger write
        # at a time from this worker, so they never deadlock each other on PostgreSQL row locks.
        self._write = threading.Lock()
        self._stop = threading.Event()
        self.heartbeat_errors = 0

    def _key(self, ids: Iterable[int]):
        return and_(claims.c.partition_id.in_(sorted(ids)), claims.c.prompt_version == self.pv,
                    claims.c.llm_id == self.llm_id)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Connection]:
        """A ledger transaction holding this worker's write lock (the heartbeat waits for it).

        Every write that touches this run's claims goes through here, commits included.
        """
        # critical() first: a SIGTERM arriving while the lock is taken waits for the commit.
        with critical(), self._write, self.ledger.begin() as conn:
            yield conn

    def claim(self, ids: list[int]) -> set[int]:
        """Take what is free (new, or expired and not done) among ``ids``; return what is ours."""
        if not ids:
            return set()
        stamp = now_us()
        until = stamp + self.lease_us
        with self.transaction() as conn:
            self.ledger.insert_ignore(conn, claims, [{
                "partition_id": i, "prompt_version": self.pv, "llm_id": self.llm_id,
                "run_id": self.run_id, "status": "held", "lease_until_us": until, "takeovers": 0}
                for i in sorted(ids)], ["partition_id", "prompt_version", "llm_id"])
            expired = and_(self._key(ids), claims.c.status == "held",
                           claims.c.lease_until_us < stamp, claims.c.run_id != self.run_id)
            q = select(claims.c.partition_id).where(expired)
            if self.ledger.dialect == "postgresql":
                q = q.with_for_update(skip_locked=True)
            stale = conn.execute(q).scalars().all()
            if stale:
                # The same conditions again: a row another worker committed meanwhile stays theirs.
                conn.execute(update(claims).where(expired, claims.c.partition_id.in_(stale))
                             .values(run_id=self.run_id, lease_until_us=until,
                                     takeovers=claims.c.takeovers + 1))
            return set(conn.execute(select(claims.c.partition_id).where(
                self._key(ids), claims.c.run_id == self.run_id,
                claims.c.status == "held")).scalars())

    def accept(self, conn: Connection, ids: list[int]) -> set[int]:
        """Inside the commit transaction: mark done the claims still ours; return those ids.

        The caller writes outputs for exactly these; the rest were taken over (out of lease).
        """
        conn.execute(update(claims).where(self._key(ids), claims.c.run_id == self.run_id,
                                          claims.c.status == "held").values(status="done"))
        return set(conn.execute(select(claims.c.partition_id).where(
            self._key(ids), claims.c.run_id == self.run_id, claims.c.status == "done")).scalars())

    def release(self, conn: Connection, ids: Iterable[int] | None = None) -> set[int]:
        """Give up held claims (a failed batch, a stopping run): the next worker may take them."""
        where = and_(claims.c.prompt_version == self.pv, claims.c.llm_id == self.llm_id,
                     claims.c.run_id == self.run_id, claims.c.status == "held")
        if ids is not None:
            where = and_(where, claims.c.partition_id.in_(sorted(ids)))
        # A write first: on SQLite it takes the write lock, so the read below cannot go stale.
        conn.execute(update(claims).where(where).values(lease_until_us=0))
        mine = set(conn.execute(select(claims.c.partition_id).where(where)).scalars())
        conn.execute(delete(claims).where(where))
        return mine

    def release_all(self, ids: Iterable[int] | None = None) -> None:
        """``release`` in a transaction of its own: all held claims, or only ``ids``."""
        with self.transaction() as conn:
            self.release(conn, ids)

    def count(self, conn: Connection, **increments: int) -> None:
        """Add to this run's counters (llm_calls, llm_calls_committed, partitions_done, ...)."""
        conn.execute(update(runs_t).where(runs_t.c.id == self.run_id).values(
            heartbeat_us=now_us(), **{k: getattr(runs_t.c, k) + v for k, v in increments.items()}))

    def count_calls(self, n: int) -> None:
        """Record LLM calls *before* making them: a crash then shows them as never committed."""
        with self.transaction() as conn:
            self.count(conn, llm_calls=n)

    def others_holding(self, users: list[str] | None) -> bool:
        """Does another live run hold unfinished work in this scope (so waiting may unblock ours)?

        Expired claims do not count: those ready for us are taken over by our next claim, and
        one we gave up on (failed here) must not keep us waiting for a dead worker.
        """
        q = select(claims.c.partition_id).where(
            claims.c.prompt_version == self.pv, claims.c.llm_id == self.llm_id,
            claims.c.status == "held", claims.c.run_id != self.run_id,
            claims.c.lease_until_us >= now_us())
        if users:
            q = q.where(exists().where(parts_t.c.id == claims.c.partition_id,
                                       parts_t.c.user_id.in_(users)))
        with self.ledger.engine.connect() as conn:
            return conn.execute(select(func.count()).select_from(q.limit(1).subquery())).scalar() > 0

    def beat(self) -> None:
        """Stamp the run and renew every lease it holds."""
        stamp = now_us()
        with self.transaction() as conn:
            conn.execute(update(runs_t).where(runs_t.c.id == self.run_id).values(heartbeat_us=stamp))
            conn.execute(update(claims).where(claims.c.run_id == self.run_id,
                                              claims.c.status == "held")
                         .values(lease_until_us=stamp + self.lease_us))

    @contextlib.contextmanager
    def heartbeat(self) -> Iterator[None]:
        """Beat every lease/3 in a daemon thread for the duration of the block."""
        def loop() -> None:
            while not self._stop.wait(self.lease_us / 3e6):
                try:
                    self.beat()
                except LiberError:  # a busy/unreachable ledger: the next beat may succeed
                    self.heartbeat_errors += 1

        thread = threading.Thread(target=loop, name=f"liber-heartbeat-{self.run_id}", daemon=True)
        thread.start()
        try:
            yield
        finally:
            self._stop.set()
            thread.join(timeout=5)


def poll_interval(lease_s: float) -> float:
    """How long to wait for other workers' claims: short, and well inside a lease."""
    return max(0.05, min(0.5, lease_s / 8))
