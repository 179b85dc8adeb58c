"""The SQL ledger: one source of truth for events seen, partitions, caches, quarantine, runs,
and the encoder's interests and vectors.

SQLAlchemy Core over SQLite (a local file, the default) or PostgreSQL (production: several
encoder workers share it). Every write that belongs together happens in one transaction, so a
crashed job leaves either all or nothing of a chunk and a rerun continues from there.

Times are stored as integer microseconds since the epoch (UTC): exact, and identical on both
backends. A ``schema`` maps every table into a PostgreSQL schema (tests use one per run).
Opening a ledger creates or upgrades its schema (``migrate``: Alembic, under a lock).
"""

from __future__ import annotations

import json
import os
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Table, create_engine, event, func, select, text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError
from tenacity import retry, retry_if_exception, stop_after_delay, wait_random

from liber_features.errors import ConfigError, LedgerError
from liber_features.ledger import migrate
from liber_features.ledger.stopping import critical

# The tables live in ``tables.py``; they are re-exported here because every reader and writer
# of the ledger names them next to ``Ledger`` (``from liber_features.ledger.store import Ledger, partitions``).
from liber_features.ledger.tables import (
    claims,
    events,
    interests,
    items,
    locks,
    metadata,
    online_sync,
    partitions,
    projections,
    prompt_audit,
    quarantine,
    runs,
    settings,
    stream_online,
    stream_positions,
    user_cache,
    vectors,
)
from liber_features.redact import redact_obj, redact_url

__all__ = [
    "Ledger", "claims", "default_ledger_url", "encode_progress", "events", "interests", "items",
    "locks", "metadata", "now_us", "online_sync", "partitions", "projections", "prompt_audit", "quarantine",
    "runs", "settings", "stream_online", "stream_positions", "user_cache", "vectors",
]


def now_us() -> int:
    import time

    return time.time_ns() // 1000


def default_ledger_url() -> str:
    """``$LIBER_LEDGER_URL``, else a SQLite file under ``./.liber/``."""
    from liber_features.settings import get_settings

    url = get_settings().ledger_url
    if url is not None:
        return url.get_secret_value()
    return f"sqlite:///{Path('.liber/ledger.db').resolve()}"


@retry(retry=retry_if_exception(lambda e: "locked" in str(e)), wait=wait_random(0.005, 0.05),
       stop=stop_after_delay(30), reraise=True)
def _switch_to_wal(cur) -> None:  # noqa: ANN001 - a DBAPI cursor
    """``PRAGMA journal_mode=WAL``, retried while another opener holds the file's lock.

    Switching a new file to WAL needs an exclusive lock, and SQLite answers SQLITE_BUSY at once,
    without its busy handler, where waiting could deadlock — so four workers opening one new
    ledger together failed about one time in six (CI, 2026-12-05). A short random wait ends it:
    the winner's switch is done in milliseconds and the others then find the file in WAL already.
    """
    cur.execute("PRAGMA journal_mode=WAL")


class Ledger:
    """Connection to the ledger; creates the tables on first use, upgrades an older ledger's."""

    def __init__(self, url: str | None = None, *, schema: str | None = None) -> None:
        self.url = url or default_ledger_url()
        self.schema = schema
        self._ledger_id: str | None = None
        try:
            from sqlalchemy.engine import make_url

            _ = make_url(self.url).port  # a malformed URL (bad port, no scheme) is a setting, not a crash
        except (ValueError, TypeError, SQLAlchemyError) as exc:
            raise ConfigError(f"malformed ledger URL {self.safe_url()}: "
                              f"{redact_url(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)}"
                              ) from None
        try:
            self.engine = self._make_engine(self.url, schema)
            # A Ledger dropped without dispose() would keep its pooled connections open until the
            # cyclic GC reaches its engine: a process that opens many ledgers (a test session, a
            # long-lived service re-opening per job) then runs PostgreSQL out of connections. The
            # engine stays usable after dispose() (it makes a new pool), so callers that kept it
            # (`Ledger(url).engine`) are unaffected.
            weakref.finalize(self, self.engine.dispose)
            migrate.upgrade(self.engine, schema, self.url)
        except SQLAlchemyError as exc:
            raise LedgerError(f"cannot open ledger {self.safe_url()}: {exc.__class__.__name__}: "
                              f"{redact_url(str(exc).splitlines()[0])}") from exc
        self.dialect = self.engine.dialect.name

    @staticmethod
    def _make_engine(url: str, schema: str | None) -> Engine:
        if url.startswith("sqlite:///"):
            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, future=True, pool_pre_ping=True)
        if engine.dialect.name == "sqlite":
            @event.listens_for(engine, "connect")
            def _pragmas(dbapi_conn, _record):  # noqa: ANN001 - DBAPI hook
                # WAL lets a reader (the encoder) run while ingest writes; NORMAL is durable in WAL.
                cur = dbapi_conn.cursor()
                cur.execute("PRAGMA busy_timeout=30000")
                _switch_to_wal(cur)
                cur.execute("PRAGMA synchronous=NORMAL")
                cur.close()
        if schema:
            engine = engine.execution_options(schema_translate_map={None: schema})
        return engine

    @property
    def ledger_id(self) -> str:
        """This ledger's identity (UUID4 hex, ``settings.ledger_id``, written once by migration 0003).

        Read once and kept: it never changes for the life of a ledger, and the file checks
        (``features/ownership.py``) ask for it on every write.
        """
        if self._ledger_id is None:
            with self.engine.connect() as conn:
                value = conn.execute(select(settings.c.value).where(settings.c.key == "ledger_id")).scalar()
            if not value:
                raise LedgerError(f"ledger {self.safe_url()} has no ledger_id setting: its schema "
                                  "revision 0003 did not run")
            self._ledger_id = str(value)
        return self._ledger_id

    def describe(self) -> str:
        """``ledger 3f9a1c2b (sqlite:///.liber/ledger.db)``: how messages name this ledger."""
        return f"ledger {self.ledger_id[:8]} ({self.safe_url()})"

    def safe_url(self) -> str:
        """The URL with its password masked (``redact.redact_url``, malformed URLs included)."""
        return redact_url(self.url)

    @contextmanager
    def begin(self) -> Iterator[Connection]:
        """One transaction: everything inside commits together or not at all.

        A SIGTERM arriving meanwhile waits for the commit (stopping.py): cut inside this
        generator's ``__enter__``, it would leave the transaction open and the write lock held.
        """
        try:
            with critical(), self.engine.begin() as conn:
                yield conn
        except SQLAlchemyError as exc:
            raise LedgerError(f"ledger write failed on {self.safe_url()}: "
                              f"{redact_url(str(exc).splitlines()[0])}") from exc

    def _insert(self, table: Table):
        """The dialect's INSERT, which knows ON CONFLICT (SQLite and PostgreSQL both do)."""
        if self.dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        else:
            from sqlalchemy.dialects.sqlite import insert
        return insert(table)

    def insert_ignore(self, conn: Connection, table: Table, rows: Sequence[dict],
                      keys: Sequence[str]) -> None:
        """INSERT … ON CONFLICT (keys) DO NOTHING, on either backend."""
        if rows:
            stmt = self._insert(table).on_conflict_do_nothing(index_elements=list(keys))
            conn.execute(stmt, list(rows))

    def upsert(self, conn: Connection, table: Table, rows: Sequence[dict],
               keys: Sequence[str], *, where: Any = None) -> None:
        """INSERT … ON CONFLICT (keys) DO UPDATE every other column, on either backend.

        Never the primary key: an update that renumbered a row (a surrogate ``id`` taken from the
        new row's sequence value) would orphan every row that references it. ``where`` limits
        which existing rows may be updated (e.g. only a ``failed`` interest, never a ``done`` one).
        """
        if not rows:
            return
        stmt = self._insert(table)
        update = {c.name: stmt.excluded[c.name] for c in table.columns
                  if c.name not in keys and not c.primary_key}
        conn.execute(stmt.on_conflict_do_update(index_elements=list(keys), set_=update, where=where),
                     list(rows))

    @contextmanager
    def lock(self, name: str, holder: str) -> Iterator[None]:
        """Hold the named ledger lock for the block (one holder at a time, any host).

        PostgreSQL: the lock row FOR UPDATE. SQLite file: an flock on a file beside it (the
        ledger is local by definition) — holding SQLite's write lock instead would stall every
        worker's commits and heartbeats for as long as the block runs.
        """
        path = self.url.removeprefix("sqlite:///") if self.url.startswith("sqlite:///") else None
        if self.dialect == "sqlite" and path and path != ":memory:":
            import fcntl

            with open(f"{path}.{name}.lock", "a") as handle:
                fcntl.flock(handle, fcntl.LOCK_EX)
                try:
                    yield
                finally:
                    fcntl.flock(handle, fcntl.LOCK_UN)
            return
        with self.begin() as conn:
            self.insert_ignore(conn, locks, [{"name": name, "holder": None, "at_us": 0}], ["name"])
        with self.begin() as conn:
            conn.execute(locks.update().where(locks.c.name == name)
                         .values(holder=holder, at_us=now_us()))
            if self.dialect == "postgresql":
                conn.execute(select(locks.c.name).where(locks.c.name == name).with_for_update())
            yield

    # -- runs ------------------------------------------------------------------------------
    def start_run(self, kind: str, params: dict[str, Any], *, lease_s: float = 300.0) -> int:
        """A ``running`` run with its first heartbeat; stale once the heartbeat is older than lease_s."""
        import socket

        with self.begin() as conn:
            stamp = now_us()
            result = conn.execute(runs.insert().values(
                kind=kind, status="running", started_us=stamp,
                params=json.dumps(redact_obj(params), default=str),
                worker=f"{socket.gethostname()}:{os.getpid()}", lease_us=int(lease_s * 1e6),
                heartbeat_us=stamp, partitions_done=0, llm_calls=0, llm_calls_committed=0,
                rejected_commits=0))
            return int(result.inserted_primary_key[0])

    def finish_run(self, run_id: int, status: str, summary: dict[str, Any]) -> None:
        with self.begin() as conn:
            conn.execute(runs.update().where(runs.c.id == run_id).values(
                status=status, finished_us=now_us(),
                summary=json.dumps(redact_obj(summary), default=str)))

    # -- reads -----------------------------------------------------------------------------
    def counts(self) -> dict[str, int]:
        """Ledger-wide totals, for summaries and the demo."""
        with self.engine.connect() as conn:
            def one(stmt) -> int:
                return int(conn.execute(stmt).scalar() or 0)

            return {
                "ledger_events": one(select(func.count()).select_from(events)),
                "ledger_users": one(select(func.count()).select_from(user_cache)),
                "ledger_partitions": one(select(func.count()).select_from(partitions)),
                "ledger_cached_events": one(select(func.coalesce(func.sum(user_cache.c.n_cached), 0))),
                "ledger_quarantined": one(select(func.count()).select_from(quarantine)),
            }

    def drop_schema(self) -> None:
        """Remove this ledger's PostgreSQL schema (tests) — never used on the default path."""
        if self.schema and self.dialect == "postgresql":
            with self.engine.begin() as conn:
                conn.execute(text(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE'))
        self.engine.dispose()


def encode_progress(ledger: Ledger) -> dict[str, int]:
    """How far the encoder is, across all versions: done / failed outputs and partitions."""
    with ledger.engine.connect() as conn:
        status = dict(conn.execute(select(interests.c.status, func.count())
                                   .group_by(interests.c.status)).all())
        total = conn.execute(select(func.count()).select_from(partitions)).scalar() or 0
    return {"partitions": int(total), "interests_done": int(status.get("done", 0)),
            "interests_failed": int(status.get("failed", 0))}
