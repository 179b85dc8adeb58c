"""Bring a ledger's schema to the newest revision, once, under a lock: what ``Ledger(...)`` runs.

Alembic owns the schema (``ledger/migrations``). Three kinds of database arrive here:

* empty (a new ledger): every revision runs, from ``0001``;
* a ledger made by release 0.1.0, which has the tables but no ``alembic_version``: its tables'
  columns are checked against that release's schema (a database with the same table names but
  other columns is refused, untouched), then revision ``0001`` runs on it — it creates only the
  tables an older ledger lacks, keeps every row, and records the revision — and the later
  revisions upgrade it in place;
* a versioned ledger: the revisions it lacks run; at head nothing happens, without a lock.

Workers that open a new ledger together must not race to create it: the upgrade runs in one
transaction that first takes a lock — a PostgreSQL advisory lock (``pg_advisory_xact_lock``, per
schema), SQLite's write lock (``BEGIN IMMEDIATE``; the others wait in ``busy_timeout``). The
second worker then finds the ledger at head. PostgreSQL and SQLite both roll DDL back with the
transaction, so a failed upgrade leaves the ledger as it was.
"""

from __future__ import annotations

from functools import cache

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from sqlalchemy import MetaData, inspect, text
from sqlalchemy.engine import Connection, Engine

from liber_features.errors import LedgerError
from liber_features.redact import redact_url

__all__ = ["BASELINE", "SCRIPTS", "baseline_metadata", "current_revision", "head_revision", "upgrade"]

SCRIPTS = "liber_features.ledger:migrations"
BASELINE = "0001"  # release 0.1.0's schema, which its ledgers have without a version table


def _config(conn: Connection | None = None, schema: str | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", SCRIPTS)
    cfg.attributes.update(connection=conn, schema=schema)
    return cfg


@cache
def _scripts() -> ScriptDirectory:
    return ScriptDirectory.from_config(_config())


def head_revision() -> str:
    """The newest revision this code knows (the schema of ``tables.metadata``)."""
    return str(_scripts().get_current_head())


def baseline_metadata() -> MetaData:
    """Release 0.1.0's tables (revision ``0001``, frozen), without a schema as 0.1.0 had them."""
    return _scripts().get_revision(BASELINE).module.v1_metadata()


def current_revision(conn: Connection, schema: str | None) -> str | None:
    """The ledger's revision; None for an empty database or a 0.1.0 ledger."""
    return MigrationContext.configure(conn, opts={"version_table_schema": schema}).get_current_revision()


def _lock(conn: Connection, schema: str | None) -> None:
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(hashtext(:key))"),
                     {"key": f"liber-ledger-migrate:{schema or ''}"})
        if schema:
            conn.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
    elif conn.dialect.name == "sqlite":
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def _check_unversioned(conn: Connection, schema: str | None, where: str) -> None:
    """Refuse a database whose tables carry our names but not release 0.1.0's columns."""
    baseline = baseline_metadata()
    insp = inspect(conn)
    present = set(insp.get_table_names(schema=schema))
    for table in baseline.sorted_tables:
        if table.name not in present:
            continue  # an older ledger's missing table: revision 0001 creates it, as 0.1.0 did
        have = {c["name"] for c in insp.get_columns(table.name, schema=schema)}
        missing = sorted(set(table.columns.keys()) - have)
        if missing:
            raise LedgerError(f"{where}: table {table.name!r} lacks columns {missing}: not a ledger "
                              "this release can upgrade (no alembic_version, not release 0.1.0's schema)")


def upgrade(engine: Engine, schema: str | None, url: str) -> None:
    """Upgrade the ledger behind ``engine`` to head (see the module docstring)."""
    where = redact_url(url) + (f" (schema {schema})" if schema else "")
    head = head_revision()
    with engine.connect() as conn:  # the common case: already at head, no lock taken
        if current_revision(conn, schema) == head:
            return
    with engine.begin() as conn:
        _lock(conn, schema)
        rev = current_revision(conn, schema)
        if rev == head:
            return  # another worker upgraded it while this one waited for the lock
        if rev is not None and rev not in {s.revision for s in _scripts().walk_revisions()}:
            raise LedgerError(f"ledger {where} is at schema revision {rev}, which this release does "
                              f"not know (newest: {head}): it was made by a newer liber-features")
        if rev is None:
            _check_unversioned(conn, schema, where)
        try:
            command.upgrade(_config(conn, schema), "head")
        except (CommandError, ValueError) as exc:  # ValueError: a data migration's bad row
            raise LedgerError(f"cannot upgrade ledger {where} (left as it was): "
                              f"{type(exc).__name__}: {exc}") from exc
