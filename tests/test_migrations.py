"""Ledger migrations (Alembic): a ledger made by release 0.1.0 upgrades in place with every row
kept, a new ledger is the migrations' head and equals ``tables.metadata``, workers opening a new
ledger together do not fail, and an upgrade that fails leaves the ledger as it was.

The fixture ``fixtures/ledger/ledger-0.1.0.sqlite`` was written by release 0.1.0's code
(``fixtures/ledger/make_fixture.py``); never regenerate it with today's code.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import threading
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from conftest import PG_URL
from sqlalchemy import Engine, create_engine, event, inspect, select, text

from liber_features.errors import ConfigError, LedgerError
from liber_features.ingest.job import ingest
from liber_features.ingest.partition import PartitionRule
from liber_features.ledger import migrate
from liber_features.ledger.runs import run_report
from liber_features.ledger.store import Ledger, runs, settings
from liber_features.ledger.tables import metadata
from liber_features.testing import event_log

FIXTURE = Path(__file__).parent / "fixtures/ledger/ledger-0.1.0.sqlite"
# What release 0.1.0 wrote into the fixture (make_fixture.py), table by table.
COUNTS = {"events": 70, "partitions": 21, "interests": 8, "vectors": 8, "runs": 5, "settings": 1,
          "quarantine": 2, "items": 30, "user_cache": 7, "claims": 8, "prompt_audit": 12,
          "online_sync": 1, "locks": 1}
HEAD = "0007"  # the newest revision: an upgrade must reach it
HEARTBEAT = ("worker", "lease_us", "heartbeat_us", "partitions_done", "llm_calls",
             "llm_calls_committed", "rejected_commits")


#: Columns added after 0.1.0 whose old rows are NULL (checked by test_event_type_columns_start_null).
ADDED_LATER = {("events", "event_type"), ("events", "label")}


def _old(tmp_path: Path) -> Path:
    path = tmp_path / "old.sqlite"
    shutil.copy(FIXTURE, path)
    return path


def _dump(path: Path) -> dict[str, list[tuple]]:
    """Every row of every table (0.1.0's columns only), ordered: what an upgrade must keep."""
    con = sqlite3.connect(path)
    try:
        tables = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        out = {}
        for t in tables:
            cols = [r[1] for r in con.execute(f"PRAGMA table_info({t})") if (r[1] not in HEARTBEAT
                    or t == "run_heartbeats") and (t, r[1]) not in ADDED_LATER]
            names = ", ".join(f'"{c}"' for c in cols)
            order = ", ".join(str(i + 1) for i in range(len(cols)))
            out[t] = con.execute(f"SELECT {names} FROM {t} ORDER BY {order}").fetchall()
        return out
    finally:
        con.close()


def _open_together(open_ledger, n: int = 4) -> tuple[list[Ledger], list[BaseException]]:
    """``n`` threads open one ledger at the same instant (a barrier): the ledgers opened, the errors."""
    barrier, errors, opened = threading.Barrier(n), [], []

    def worker() -> None:
        barrier.wait()
        try:
            opened.append(open_ledger())
        except Exception as exc:  # noqa: BLE001 - collected and asserted by the caller
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return opened, errors


def _revision(ledger: Ledger) -> str | None:
    with ledger.engine.connect() as conn:
        return migrate.current_revision(conn, ledger.schema)


def test_fixture_is_release_0_1_0s_ledger():
    before = _dump(FIXTURE)
    assert {t: len(rows) for t, rows in before.items()} == {**COUNTS, "run_heartbeats": 5}


def test_old_ledger_upgrades_in_place_with_every_row_kept(tmp_path):
    path = _old(tmp_path)
    before = _dump(path)
    beats = {r[0]: r[1:] for r in before.pop("run_heartbeats")}
    ledger = Ledger(f"sqlite:///{path}")
    assert _revision(ledger) == migrate.head_revision() == HEAD
    after = _dump(path)
    assert after.pop("alembic_version") == [(HEAD,)]
    assert after.pop("stream_positions") == []  # 0004 adds the table, empty
    # 0003 gives the ledger its identity: one settings row more, a UUID4 hex, set once
    (ident,) = [r for r in after["settings"] if r[0] == "ledger_id"]
    after["settings"].remove(ident)
    assert (len(ident[1]), int(ident[1], 16) >> 76 & 0xF, ident[2]) == (32, 4, None)
    assert ident[1] == ledger.ledger_id
    assert after.pop("projections") == []  # 0006 adds the D′ projections' table, empty
    assert after.pop("stream_online") == []  # 0007 adds the consumers' online marks, empty
    assert after == before  # every row of every table, byte for byte
    with ledger.engine.connect() as conn:  # each heartbeat row moved onto its run
        moved = {r.id: tuple(r[1:]) for r in conn.execute(
            select(runs.c.id, *(runs.c[c] for c in HEARTBEAT)))}
    assert moved == beats
    assert moved[2][3:] == (8, 12, 12, 0)  # the encode run: partitions, calls, committed, rejected


def test_upgraded_ledger_works_and_a_second_open_is_a_no_op(tmp_path):
    path = _old(tmp_path)
    ledger = Ledger(f"sqlite:///{path}")
    with pytest.raises(ConfigError, match=r"partitioned with \{'k': 3"):
        ingest(event_log(users=8, per_user=10), ledger, PartitionRule(k=2), progress=False)
    got = ingest(event_log(users=8, per_user=10), ledger, PartitionRule(k=3), progress=False)
    assert (got.accepted, got.duplicates, got.partitions_sealed) == (10, 70, 3)
    assert ledger.counts()["ledger_events"] == 80
    # 0.1.0's runs: 3 finished, 1 failed, 1 encode left running long ago (stale); then this one.
    assert run_report(ledger)["runs"] == {"live": 0, "finished": 4, "failed": 1, "stale": 1}
    ledger.engine.dispose()

    seen: list[str] = []

    def record(_conn, _cursor, statement, *_args) -> None:
        seen.append(statement.split()[0].upper())

    event.listen(Engine, "before_cursor_execute", record)
    try:
        again = Ledger(f"sqlite:///{path}")
    finally:
        event.remove(Engine, "before_cursor_execute", record)
    assert set(seen) == {"SELECT", "PRAGMA"}  # reads only: no lock, no DDL, no writes
    assert _revision(again) == HEAD
    assert again.counts()["ledger_events"] == 80
    assert again.ledger_id == ledger.ledger_id  # the identity is written once, never again


def test_a_new_ledger_has_one_identity_and_describes_itself(tmp_path):
    url = f"sqlite:///{tmp_path / 'l.db'}"
    first, other = Ledger(url), Ledger(f"sqlite:///{tmp_path / 'm.db'}")
    with first.engine.connect() as conn:
        rows = conn.execute(select(settings.c.key, settings.c.value)).all()
    assert [r.key for r in rows] == ["ledger_id"] and rows[0].value == first.ledger_id
    assert Ledger(url).ledger_id == first.ledger_id != other.ledger_id
    assert first.describe() == f"ledger {first.ledger_id[:8]} ({url})"


def test_ledger_older_than_0_1_0_gets_what_its_fallbacks_assumed(tmp_path):
    """No settings row, runs without heartbeats, tables missing: as the runtime fallbacks read it."""
    path = _old(tmp_path)
    con = sqlite3.connect(path)
    with con:
        con.execute("DELETE FROM settings")
        con.execute("DELETE FROM run_heartbeats WHERE run_id IN (2, 5)")
        con.execute("DROP TABLE prompt_audit")
        started = dict(con.execute("SELECT id, started_us FROM runs"))
    con.close()
    ledger = Ledger(f"sqlite:///{path}")
    with ledger.engine.connect() as conn:
        rule = conn.execute(select(settings.c.value, settings.c.run_id)
                            .where(settings.c.key == "partition_rule")).one()
        keys = conn.execute(select(settings.c.key).order_by(settings.c.key)).scalars().all()
        beats = {r.id: tuple(r[1:]) for r in conn.execute(
            select(runs.c.id, *(runs.c[c] for c in HEARTBEAT)).where(runs.c.id.in_([2, 5])))}
        audit = inspect(conn).get_columns("prompt_audit")
    assert (json.loads(rule.value), rule.run_id) == ({"k": 3, "max_span_s": None}, 1)
    assert keys == ["ledger_id", "partition_rule"]
    # heartbeat = start, the default 300 s lease, the summary's counts, nothing uncommitted
    assert beats == {2: (None, 300_000_000, started[2], 8, 12, 12, 0),
                     5: (None, 300_000_000, started[5], 0, 0, 0, 0)}
    assert len(audit) == 9
    with pytest.raises(ConfigError, match=r"'k': 3"):
        ingest(event_log(users=1, per_user=3), ledger, PartitionRule(k=2), progress=False)


def test_a_failed_upgrade_leaves_the_ledger_as_it_was(tmp_path):
    path = _old(tmp_path)
    con = sqlite3.connect(path)
    with con:  # a run without heartbeat whose summary is not JSON: the data migration fails
        con.execute("DELETE FROM run_heartbeats WHERE run_id = 2")
        con.execute("UPDATE runs SET summary = '{broken' WHERE id = 2")
    con.close()
    before = _dump(path)
    with pytest.raises(LedgerError, match="left as it was"):
        Ledger(f"sqlite:///{path}")
    assert _dump(path) == before  # no new column, run_heartbeats still there, no version table
    assert "alembic_version" not in before


def test_a_database_with_other_columns_is_refused_untouched(tmp_path):
    path = tmp_path / "other.sqlite"
    con = sqlite3.connect(path)
    with con:
        con.execute("CREATE TABLE runs (id INTEGER PRIMARY KEY, name TEXT)")
    con.close()
    with pytest.raises(LedgerError, match=r"table 'runs' lacks columns \['finished_us', 'kind'"):
        Ledger(f"sqlite:///{path}")
    assert list(_dump(path)) == ["runs"]


def test_a_ledger_from_a_newer_release_is_refused(tmp_path):
    ledger = Ledger(f"sqlite:///{tmp_path / 'l.db'}")
    with ledger.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '0999'"))
    with pytest.raises(LedgerError, match="revision 0999, which this release does not know"):
        Ledger(ledger.url)


def _no_diffs(ledger: Ledger) -> None:
    with ledger.engine.connect() as conn:
        if ledger.schema:
            conn.execute(text(f'SET search_path TO "{ledger.schema}"'))
        ctx = MigrationContext.configure(conn, opts={"compare_type": True,
                                                     "compare_server_default": True})
        diffs = [d for d in compare_metadata(ctx, metadata)
                 if not (d[0] == "remove_table" and d[1].name == "alembic_version")]
    assert diffs == []


def test_migrations_head_equals_tables_metadata(ledger):
    """``alembic check``: a ledger made by the migrations is exactly ``tables.metadata``."""
    assert _revision(ledger) == migrate.head_revision()
    _no_diffs(ledger)


def test_upgraded_0_1_0_ledger_equals_tables_metadata(tmp_path):
    _no_diffs(Ledger(f"sqlite:///{_old(tmp_path)}"))


@pytest.mark.parametrize("start", ["new", "old"])
def test_workers_opening_one_ledger_together_all_succeed(tmp_path, start):
    path = _old(tmp_path) if start == "old" else tmp_path / "new.sqlite"
    opened, errors = _open_together(lambda: Ledger(f"sqlite:///{path}"))
    assert errors == [] and len(opened) == 4
    assert {_revision(x) for x in opened} == {HEAD}
    with opened[0].engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM alembic_version")).scalar() == 1
        assert conn.execute(text("SELECT count(*) FROM events")).scalar() == (70 if start == "old" else 0)


# -- PostgreSQL --------------------------------------------------------------------------------
def _old_pg_schema(schema: str) -> None:
    """Release 0.1.0's tables in ``schema`` (its create_all, frozen in revision 0001), holding the
    fixture's rows, with the sequences where 0.1.0's own inserts would have left them."""
    v1 = migrate.baseline_metadata()
    engine = create_engine(PG_URL).execution_options(schema_translate_map={None: schema})
    src = sqlite3.connect(FIXTURE)
    src.row_factory = sqlite3.Row
    try:
        with engine.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
            v1.create_all(conn)
            for table in v1.sorted_tables:
                rows = [dict(r) for r in src.execute(f"SELECT * FROM {table.name}")]
                if rows:
                    conn.execute(table.insert(), rows)
                if "id" in table.c and table.c.id.autoincrement is True:
                    conn.execute(text(f"SELECT setval(pg_get_serial_sequence('\"{schema}\".{table.name}', 'id'), "
                                      f'(SELECT max(id) FROM "{schema}".{table.name}))'))
    finally:
        src.close()
        engine.dispose()


@pytest.mark.postgres
def test_old_postgres_ledger_upgrades_in_its_schema_with_every_row_kept(unique_name):
    _old_pg_schema(unique_name)
    ledger = Ledger(PG_URL, schema=unique_name)
    try:
        with ledger.engine.connect() as conn:
            counts = {t: conn.execute(text(f'SELECT count(*) FROM "{unique_name}".{t}')).scalar()
                      for t in COUNTS}
            where = conn.execute(text("SELECT table_schema FROM information_schema.tables "
                                      "WHERE table_name = 'alembic_version'")).scalars().all()
            beat = conn.execute(select(*(runs.c[c] for c in HEARTBEAT[3:])).where(runs.c.id == 2)).one()
        assert counts == {**COUNTS, "settings": 2}  # + the ledger_id of revision 0003
        assert unique_name in where and _revision(ledger) == HEAD
        assert tuple(beat) == (8, 12, 12, 0)
        got = ingest(event_log(users=8, per_user=10), ledger, PartitionRule(k=3), progress=False)
        assert (got.accepted, got.run_id) == (10, 6)
        _no_diffs(ledger)
    finally:
        ledger.drop_schema()


@pytest.mark.postgres
def test_postgres_workers_opening_a_new_schema_together_all_succeed(unique_name):
    opened, errors = _open_together(lambda: Ledger(PG_URL, schema=unique_name))
    try:
        assert errors == [] and len(opened) == 4
        assert {_revision(x) for x in opened} == {HEAD}
    finally:
        for x in opened[1:]:
            x.engine.dispose()
        if opened:
            opened[0].drop_schema()


def test_event_type_columns_start_null(tmp_path):
    """0005 adds events.event_type and events.label: nullable, NULL on every row already there."""
    path = _old(tmp_path)
    n = len(_dump(path)["events"])
    Ledger(f"sqlite:///{path}").engine.dispose()
    con = sqlite3.connect(path)
    try:
        rows = con.execute("SELECT event_type, label FROM events").fetchall()
        info = {r[1]: (r[2], r[3]) for r in con.execute("PRAGMA table_info(events)")}
    finally:
        con.close()
    assert n > 0 and rows == [(None, None)] * n
    assert info["event_type"] == ("VARCHAR(32)", 0) and info["label"] == ("FLOAT", 0)
