"""ledger/bulk.py: COPY of new rows and the array key look-up, on SQLite and the real PostgreSQL."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from liber_features.errors import LedgerError
from liber_features.ingest.job import write_events
from liber_features.ingest.partition import CachedEvent, PartitionRule
from liber_features.ledger.bulk import copy_new, known_keys
from liber_features.ledger.store import events, partitions, user_cache


def _event(i: int, user: str = "u1", **extra) -> dict:
    return {"event_id": f"e{i}", "user_id": user, "item_id": f"i{i}", "ts_us": 1_000_000 * i,
            "rating": 3.5 if i % 2 else None, "run_id": 7, "event_type": "view" if i % 3 == 0 else None,
            "label": None, **extra}


def test_copied_rows_read_back_exactly_and_known_keys_names_only_those(ledger):
    rows = [_event(i) for i in range(6_000)]  # past SQLite's IN batch of 5,000
    with ledger.begin() as conn:
        copy_new(conn, events, rows)
        copy_new(conn, events, [])  # nothing to write is nothing written
    with ledger.engine.connect() as conn:
        back = [dict(r._mapping) for r in conn.execute(select(events).order_by(events.c.ts_us))]
        asked = [f"e{i}" for i in range(5_990, 6_010)] + ["e0", "x"]
        found = known_keys(conn, events.c.event_id, asked)
    assert back == rows  # NULLs, floats and text through COPY as they went in
    assert found == {f"e{i}" for i in range(5_990, 6_000)} | {"e0"}


@pytest.mark.parametrize("ledger", ["postgres"], indirect=True)  # SQLite's write lock serialises writers
def test_a_key_another_writer_committed_meanwhile_fails_the_whole_transaction(ledger):
    """The race ``copy_new`` turns from a silent double count into a rollback: the look-up found
    e2 new, another writer commits e2, then the COPY meets it."""
    with pytest.raises(LedgerError, match="another writer inserted some of these events rows"):
        with ledger.begin() as conn:
            copy_new(conn, events, [_event(1)])
            assert known_keys(conn, events.c.event_id, ["e2", "e3"]) == set()
            with ledger.begin() as other:
                copy_new(other, events, [_event(2, user="u2")])
            copy_new(conn, events, [_event(2), _event(3)])
    with ledger.engine.connect() as conn:
        stored = conn.execute(select(events.c.event_id, events.c.user_id).order_by(events.c.event_id)).all()
    assert [tuple(r) for r in stored] == [("e2", "u2")]  # e1 and e3 rolled back with the batch


def test_write_events_counts_one_id_sent_for_two_users_once(ledger):
    """Event ids are global: the second user's copy in the same batch is a duplicate, and only
    the first user's cache holds it."""
    batch = {"a": [CachedEvent(ts_us=1, event_id="x", item_id="i1", rating=4.0)],
             "b": [CachedEvent(ts_us=2, event_id="x", item_id="i2", rating=2.0),
                   CachedEvent(ts_us=3, event_id="y", item_id="i3", rating=None)]}
    with ledger.begin() as conn:
        w = write_events(ledger, conn, batch, PartitionRule(k=2), 1)
    assert (w.accepted, w.duplicates, w.partitions_sealed) == (2, 1, 0)
    with ledger.engine.connect() as conn:
        assert [tuple(r) for r in conn.execute(select(events.c.event_id, events.c.user_id)
                                               .order_by(events.c.event_id))] == [("x", "a"), ("y", "b")]
        assert dict(conn.execute(select(user_cache.c.user_id, user_cache.c.n_cached)).all()) == {"a": 1, "b": 1}
        assert conn.execute(select(func.count()).select_from(partitions)).scalar() == 0


@pytest.mark.parametrize("ledger", ["postgres"], indirect=True)  # no prepared statements on SQLite
def test_the_key_look_up_is_planned_each_time_never_a_prepared_generic_plan(ledger):
    """psycopg prepares a statement on its 5th run; PostgreSQL then may keep a generic plan made
    while the table was nearly empty (a sequential scan), and a stream into a new ledger fell
    seconds behind at 5,000 ev/s (bench_stream, 2026-12-05). The look-up must never be prepared."""
    from sqlalchemy import text

    with ledger.begin() as conn:
        for i in range(8):
            copy_new(conn, events, [_event(i)])
            assert known_keys(conn, events.c.event_id, [f"e{i}", "x"]) == {f"e{i}"}
        prepared = conn.execute(text("SELECT statement FROM pg_prepared_statements")).scalars().all()
    assert [s for s in prepared if "ANY" in s.upper()] == []
