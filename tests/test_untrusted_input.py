"""Untrusted event logs and catalogs as bytes: one bad row never costs the good ones, and the
ledger ends the same on SQLite and on the real PostgreSQL (issue 10)."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest
from conftest import PG_URL
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from liber_features.ingest.catalog import read_catalog
from liber_features.ingest.events import LoadConfig, load_events
from liber_features.ingest.job import ingest
from liber_features.ingest.partition import PartitionRule
from liber_features.ledger.fieldrules import RAW_CHARS, REASON_CHARS
from liber_features.ledger.store import Ledger, partitions, quarantine, user_cache
from liber_features.ledger.store import events as events_t

NOW = datetime(2025, 1, 1, tzinfo=UTC)
CONFIG = LoadConfig(now=NOW)
HEADER = b"event_id,user_id,item_id,timestamp,rating"

# Bad row kinds → (the cells as bytes given a fresh event id, the field the quarantine must name).
BAD = {
    "utf8": (lambda e: [e, b"u\xff1", b"i1", b"1000000000", b"3"], "user_id"),
    "latin1": (lambda e: [e, b"u1", b"caf\xe9", b"1000000000", b"3"], "item_id"),
    "nul": (lambda e: [e, b"u1", b"i\x001", b"1000000000", b"3"], "item_id"),
    "long_user": (lambda e: [e, b"u" * 129, b"i1", b"1000000000", b"3"], "user_id"),
    "long_event": (lambda e: [b"e" * 65, b"u1", b"i1", b"1000000000", b"3"], "event_id"),
    "huge_rating": (lambda e: [e, b"u1", b"i1", b"1000000000", b"9" * 200_000 + b"x"], "rating"),
    "bidi_user": (lambda e: [e, "u\u202e1".encode(), b"i1", b"1000000000", b"3"], "user_id"),
    "extra_column": (lambda e: [e, b"u1", b"i1", b"1000000000", b"3", b"x"], "row"),
    "missing_column": (lambda e: [e, b"u1", b"i1", b"1000000000"], "row"),
    "open_quote": (lambda e: [e, b'"u1', b"i1", b"1000000000", b"3"], "row"),
    "negative_ts": (lambda e: [e, b"u1", b"i1", b"-5", b"3"], "ts"),
    "future_ts": (lambda e: [e, b"u1", b"i1", b"4102444800", b"3"], "ts"),
    "millis_ts": (lambda e: [e, b"u1", b"i1", b"1700000000000", b"3"], "ts"),
    "empty_user": (lambda e: [e, b"", b"i1", b"1000000000", b"3"], "user_id"),
}

_good = st.fixed_dictionaries({
    "user": st.sampled_from(["1", "2", "3", "user-\u00e9", "x" * 128]),
    "item": st.sampled_from(["10", "11", "12", "13"]),
    "ts": st.integers(0, 1_700_000_000),
    "iso": st.booleans(),
    "rating": st.sampled_from(["", "1", "3.5", "5"]),
})  # fmt: skip
# One row of a log: a new good row, a bad row, or a reuse of an earlier event id (by index into
# the ids seen so far, this run or an earlier one) for the same or another user.
_row = st.one_of(
    st.tuples(st.just("good"), _good),
    st.tuples(st.just("bad"), st.sampled_from(sorted(BAD))),
    st.tuples(st.just("reuse"), st.tuples(st.integers(0, 10**6), _good)),
)
_log = st.fixed_dictionaries({
    "rows": st.lists(_row, max_size=25), "crlf": st.booleans(), "bom": st.booleans(),
    "blank_lines": st.booleans(),
})  # fmt: skip


def _write(path: Path, log: dict, run: int, ids: list[str], model: dict) -> dict:
    """Write one log as bytes; update ``model`` (expected ledger) and return this run's counts."""
    lines, expect = [HEADER], {"read": 0, "accepted": 0, "duplicates": 0, "bad": {}}
    for n, (kind, spec) in enumerate(log["rows"]):
        if kind == "bad":
            cells, field = BAD[spec][0](f"bad-{run}-{n}".encode()), BAD[spec][1]
            expect["bad"][expect["read"]] = field
        else:
            if kind == "reuse" and ids:
                event_id, good = ids[spec[0] % len(ids)], spec[1]
            else:
                event_id, good = f"ev-{run}-{n}", spec if kind == "good" else spec[1]
            ts = (datetime.fromtimestamp(good["ts"], UTC).isoformat() if good["iso"]
                  else str(good["ts"]))  # fmt: skip
            cells = [c.encode() for c in (event_id, good["user"], good["item"], ts, good["rating"])]
            if event_id in model:
                expect["duplicates"] += 1
            else:
                expect["accepted"] += 1
                ids.append(event_id)
                model[event_id] = (good["user"], good["item"], good["ts"] * 1_000_000,
                                   float(good["rating"]) if good["rating"] else None)
        lines.append(b",".join(cells))
        if log["blank_lines"] and n % 3 == 0:
            lines.append(b"")
        expect["read"] += 1
    end = b"\r\n" if log["crlf"] else b"\n"
    path.write_bytes((b"\xef\xbb\xbf" if log["bom"] else b"") + end.join(lines) + end)
    return expect


def _dump(ledger: Ledger) -> dict:
    with ledger.engine.connect() as conn:
        def rows(table, order, skip=("id",)):
            cols = [c for c in table.c if c.name not in skip]
            return [tuple(r) for r in conn.execute(select(*cols).order_by(*order))]

        return {
            "events": rows(events_t, [events_t.c.event_id]),
            "partitions": rows(partitions, [partitions.c.user_id, partitions.c.seq]),
            "caches": rows(user_cache, [user_cache.c.user_id]),
            "quarantine": rows(quarantine, [quarantine.c.run_id, quarantine.c.row]),
        }


def _check_consistent(dump: dict, model: dict) -> None:
    """The events table holds exactly the expected events, and partitions + caches hold each of
    them exactly once, under the events table's user."""
    got = {e[0]: (e[1], e[2], e[3], e[4]) for e in dump["events"]}
    assert got == model
    placed: list[tuple[str, str]] = []
    for p in dump["partitions"]:
        placed += [(p[0], ev[0]) for ev in json.loads(p[6])]
    for c in dump["caches"]:
        placed += [(c[0], ev[0]) for ev in json.loads(c[3])]
    assert sorted(placed) == sorted((user, eid) for eid, (user, *_rest) in model.items())


@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(logs=st.lists(_log, min_size=1, max_size=3))
def test_property_hostile_bytes_two_backends_identical(logs, tmp_path) -> None:
    folder = tmp_path / uuid.uuid4().hex[:8]
    folder.mkdir()
    ledgers = [Ledger(f"sqlite:///{folder / 'ledger.db'}"),
               Ledger(PG_URL, schema=f"t{uuid.uuid4().hex[:12]}")]
    try:
        model: dict = {}
        ids: list[str] = []
        for run, log in enumerate(logs):
            path = folder / f"log{run}.csv"
            expect = _write(path, log, run, ids, model)
            loaded = load_events(path, config=CONFIG)
            for led in ledgers:
                s = ingest(loaded, led, PartitionRule(k=3), progress=False)
                assert s.read == s.accepted + s.duplicates + s.quarantined
                assert (s.read, s.accepted, s.duplicates) == (
                    expect["read"], expect["accepted"], expect["duplicates"])
            q = loaded.quarantine
            assert dict(zip(q["row"], q["field"])) == expect["bad"]
            assert all(q["reason"].str.len().between(1, REASON_CHARS))
            assert all(q["raw"].str.len() <= RAW_CHARS)
        dumps = [_dump(led) for led in ledgers]
        assert dumps[0] == dumps[1]  # SQLite and PostgreSQL end with identical ledgers
        _check_consistent(dumps[0], model)
        assert len(dumps[0]["quarantine"]) == sum(
            1 for log in logs for kind, _ in log["rows"] if kind == "bad")
    finally:
        for led in ledgers:
            led.drop_schema()


def test_one_corrupt_line_keeps_every_other_row(tmp_path) -> None:
    """The issue's report: one 0xff byte used to reject the whole file by byte offset."""
    good = "".join(f"{u},{i},4.0,{1_000_000_000 + i}\n" for u in (1, 2) for i in range(1, 6))
    data = b"userId,movieId,rating,timestamp\n" + good.encode() + b"3,\xff7,4.0,1000000000\n" \
        + b"4,1,4.0,1000000000\n"
    (tmp_path / "ratings.csv").write_bytes(data)
    loaded = load_events(tmp_path, config=CONFIG)
    assert (loaded.read, len(loaded.events), loaded.duplicates) == (12, 11, 0)
    assert loaded.quarantine[["row", "field", "reason"]].values.tolist() == [
        [10, "item_id", "invalid utf-8 byte 0xff"]]
    assert json.loads(loaded.quarantine["raw"][0]) == {"line": "3,\\xff7,4.0,1000000000"}


def test_catalog_latin1_title_nul_title_and_long_id_are_quarantined(tmp_path) -> None:
    (tmp_path / "movies.csv").write_bytes(
        b"movieId,title,genres\n1,Toy Story (1995),Comedy\n2,Am\xe9lie (2001),Romance\n"
        b"3,Bad\x00Title,Drama\n" + b"9" * 129 + b",Long,Drama\n4,Heat (1995),Crime\n")
    catalog, q = read_catalog(tmp_path / "movies.csv")
    assert catalog["item_id"].tolist() == ["1", "4"]
    assert q[["row", "field", "reason"]].values.tolist() == [
        [1, "title", "invalid utf-8 byte 0xe9"],
        [2, "title", "NUL byte in the line"],
        [3, "item_id", "item_id of 129 characters is longer than 128"],
    ]
    # A parquet catalog cannot hold bad bytes, but can hold a NUL: quarantined, never cut.
    pd.DataFrame({"item_id": ["1", "2"], "title": ["Fine", "Cut\x00here"]}).to_parquet(
        tmp_path / "c.parquet")
    catalog, q = read_catalog(tmp_path / "c.parquet")
    assert catalog["title"].tolist() == ["Fine"]
    assert q[["row", "field", "reason"]].values.tolist() == [
        [1, "title", "title 'Cut\\x00here' contains a NUL byte"]]


def test_megabyte_value_is_capped_in_quarantine(tmp_path) -> None:
    path = tmp_path / "log.csv"
    path.write_bytes(b"user_id,item_id,timestamp\n1,2," + b"7" * 1_000_000 + b"x\n")
    q = load_events(path, config=CONFIG).quarantine
    assert len(q) == 1 and q["field"][0] == "ts"
    assert len(q["reason"][0]) <= REASON_CHARS and len(q["raw"][0]) <= RAW_CHARS
    assert q["reason"][0].startswith("timestamp '7777") and "chars]" in q["reason"][0]
    json.loads(q["raw"][0])  # still JSON


def test_timestamp_bounds(tmp_path) -> None:
    path = tmp_path / "log.csv"
    path.write_text("user_id,item_id,timestamp\n1,2,-1\n1,3,0\n1,4,1700000000000\n1,5,500000000\n")
    loaded = load_events(path, config=CONFIG)
    assert loaded.quarantine[["row", "reason"]].values.tolist() == [
        [0, "timestamp '-1' is before the earliest allowed time 1970-01-01T00:00:00+00:00"],
        [2, "timestamp '1700000000000' is in the future (milliseconds? epoch seconds are expected)"],
    ]
    later = LoadConfig(now=NOW, earliest=datetime(1990, 1, 1))  # naive = UTC
    assert load_events(path, config=later).quarantine["row"].tolist() == [0, 1, 2, 3]


def test_event_id_reused_by_another_user_in_a_later_run_is_a_duplicate(ledger, tmp_path) -> None:
    first, second = tmp_path / "a.csv", tmp_path / "b.csv"
    first.write_text("event_id,user_id,item_id,timestamp\ne1,alice,1,1000000000\n")
    second.write_text("event_id,user_id,item_id,timestamp\ne1,bob,2,1000000001\ne2,bob,3,1000000002\n")
    ingest(load_events(first, config=CONFIG), ledger, PartitionRule(k=5), progress=False)
    s = ingest(load_events(second, config=CONFIG), ledger, PartitionRule(k=5), progress=False)
    assert (s.accepted, s.duplicates) == (1, 1)
    dump = _dump(ledger)
    assert [(e[0], e[1]) for e in dump["events"]] == [("e1", "alice"), ("e2", "bob")]
    assert {c[0]: [ev[0] for ev in json.loads(c[3])] for c in dump["caches"]} == {
        "alice": ["e1"], "bob": ["e2"]}


@pytest.mark.parametrize("user", ["u" * 129, "u\x07x"])
def test_long_or_control_user_id_quarantined_on_both_backends(ledger, tmp_path, user) -> None:
    path = tmp_path / "log.csv"
    path.write_text(f"user_id,item_id,timestamp\n{user},1,1000000000\nok,1,1000000000\n")
    s = ingest(load_events(path, config=CONFIG), ledger, PartitionRule(k=5), progress=False)
    assert (s.read, s.accepted, s.quarantined) == (2, 1, 1)
    with ledger.engine.connect() as conn:
        assert conn.execute(select(quarantine.c.row, quarantine.c.field)).all() == [(0, "user_id")]
        assert conn.execute(select(events_t.c.user_id)).scalars().all() == ["ok"]
