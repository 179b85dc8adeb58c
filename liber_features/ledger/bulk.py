"""Bulk writes and look-ups for the hot path (file ingest and the stream consumer's batches).

On PostgreSQL, new rows go in with ``COPY … FROM STDIN`` (psycopg 3's ``cursor.copy``) instead of a
multi-row INSERT: psycopg sends an INSERT's rows as one pipelined statement each, and binding,
sending and parsing them was most of a batch's ledger time (2,000 events: 22 ms by INSERT, 6 ms by
COPY; 2026-12-05, 2-core box). And a key look-up sends its keys as one array parameter
(``= ANY(%s)``) instead of an ``IN`` list of thousands of bound parameters, which SQLAlchemy and
psycopg render and parse anew for every batch (2,000 ids: 11 ms against 3 ms). SQLite keeps the
plain statements: they are in-process calls there, and no faster another way.

COPY has no ``ON CONFLICT``, so ``copy_new`` is for rows the caller has already found new *inside
the same transaction*. A concurrent writer that inserts one of those keys in between (an ingest of
an overlapping file beside the stream) makes the COPY fail, and the whole transaction with it:
``LedgerError``, nothing of the batch committed, and a rerun (or the broker's redelivery) finds the
key taken and counts a duplicate. ``ON CONFLICT DO NOTHING`` would instead skip the row while the
caller had already advanced a user's cache with it — the event counted twice, silently.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import Column, Table, select
from sqlalchemy.engine import Connection

from liber_features.errors import LedgerError
from liber_features.redact import redact_url

__all__ = ["copy_new", "known_keys"]

_IN_BATCH = 5_000  # bound parameters per IN list: SQLite allows 32,766


def _qualified(conn: Connection, table: Table):
    """The table's name as psycopg SQL, in the ledger's schema (``schema_translate_map``) if any."""
    from psycopg import sql

    schema = (conn.get_execution_options().get("schema_translate_map") or {}).get(None)
    return sql.Identifier(schema, table.name) if schema else sql.Identifier(table.name)


def copy_new(conn: Connection, table: Table, rows: Sequence[dict]) -> None:
    """Insert ``rows`` (all with the same keys, none already in ``table``) inside ``conn``'s
    transaction: COPY on PostgreSQL, an executemany INSERT elsewhere (module docstring)."""
    if not rows:
        return
    if conn.dialect.name != "postgresql":
        conn.execute(table.insert(), list(rows))
        return
    import psycopg
    from psycopg import sql

    names = list(rows[0])
    stmt = sql.SQL("COPY {} ({}) FROM STDIN").format(
        _qualified(conn, table), sql.SQL(", ").join(sql.Identifier(n) for n in names))
    raw = conn.connection.driver_connection
    try:
        with raw.cursor() as cur, cur.copy(stmt) as copy:
            for row in rows:
                copy.write_row([row[n] for n in names])
    except psycopg.errors.UniqueViolation as exc:
        raise LedgerError(
            f"another writer inserted some of these {table.name} rows while this transaction ran; "
            f"nothing of it was committed (a rerun or the broker's redelivery counts them as "
            f"duplicates): {redact_url(str(exc).splitlines()[0])}") from exc
    except psycopg.Error as exc:
        raise LedgerError(f"ledger write failed (COPY into {table.name}): "
                          f"{redact_url(str(exc).splitlines()[0])}") from exc


def known_keys(conn: Connection, column: Column, values: list[str]) -> set[str]:
    """The ``values`` that ``column`` (a unique text column) holds already."""
    if not values:
        return set()
    if conn.dialect.name == "postgresql":
        from psycopg import sql

        # prepare=False: psycopg prepares a statement after its 5th run, and PostgreSQL may then keep
        # a generic plan made while the table was nearly empty — a sequential scan. With one text
        # for every batch, that plan stuck: a stream into a new ledger at 5,000 ev/s fell seconds
        # behind within 8 s (bench_stream, 2026-12-05). Planned each time, it is an index look-up.
        stmt = sql.SQL("SELECT {} FROM {} WHERE {} = ANY(%s)").format(
            sql.Identifier(column.name), _qualified(conn, column.table), sql.Identifier(column.name))
        with conn.connection.driver_connection.cursor() as cur:
            cur.execute(stmt, [values], prepare=False)
            return {row[0] for row in cur}
    seen: set[str] = set()
    for start in range(0, len(values), _IN_BATCH):
        seen.update(conn.execute(select(column).where(column.in_(values[start:start + _IN_BATCH]))).scalars())
    return seen
