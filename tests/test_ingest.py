"""Ingest: exact counts on the real MovieLens, idempotency, time-sliced replay, on both ledgers."""

from __future__ import annotations

import dataclasses
import json

import pandas as pd
import pytest
from click.testing import CliRunner
from conftest import ml_latest_small
from sqlalchemy import select

from liber_features.cli.main import cli
from liber_features.errors import ConfigError
from liber_features.ingest.events import iter_time_slices, load_events
from liber_features.ingest.job import ingest
from liber_features.ingest.partition import PartitionRule
from liber_features.ledger.store import partitions, quarantine, user_cache


@pytest.fixture(scope="module")
def movielens():
    return load_events(ml_latest_small())


def partition_rows(ledger):
    with ledger.engine.connect() as conn:
        rows = conn.execute(select(partitions.c.user_id, partitions.c.seq, partitions.c.content_hash,
                                   partitions.c.sealed_at_us, partitions.c.events_json)
                            .order_by(partitions.c.user_id, partitions.c.seq)).all()
        caches = conn.execute(select(user_cache.c.user_id, user_cache.c.cache_json,
                                     user_cache.c.next_seq).order_by(user_cache.c.user_id)).all()
    return [tuple(r) for r in rows], [tuple(r) for r in caches]


def test_movielens_k20_exact_counts_and_idempotent(ledger, movielens):
    s = ingest(movielens, ledger, PartitionRule(k=20), progress=False)
    assert (s.read, s.accepted, s.duplicates, s.quarantined) == (100_836, 100_836, 0, 0)
    assert (s.users, s.partitions_sealed, s.cached_events, s.late) == (610, 4_769, 5_456, 0)
    again = ingest(movielens, ledger, PartitionRule(k=20), progress=False)
    assert (again.accepted, again.duplicates, again.partitions_sealed) == (0, 100_836, 0)
    assert again.ledger == s.ledger  # the second run added nothing


def test_ten_time_slices_give_the_same_partitions_as_one_pass(ledger, movielens, tmp_path):
    from liber_features.ledger.store import Ledger

    one = Ledger(f"sqlite:///{tmp_path / 'one.db'}")
    ingest(movielens, one, PartitionRule(k=20), progress=False)
    sealed = 0
    for piece in iter_time_slices(movielens.events, 10):
        part = dataclasses.replace(movielens, events=piece, read=len(piece), duplicates=0,
                                   quarantine=movielens.quarantine.iloc[0:0])
        s = ingest(part, ledger, PartitionRule(k=20), progress=False)
        assert s.late == 0
        sealed += s.partitions_sealed
    assert sealed == 4_769 and s.cached_events == 5_456
    assert partition_rows(ledger) == partition_rows(one)


def test_changing_k_on_an_existing_ledger_is_refused(ledger, movielens):
    small = dataclasses.replace(movielens, events=movielens.events.head(500), read=500)
    ingest(small, ledger, PartitionRule(k=20), progress=False)
    with pytest.raises(ConfigError, match="partitioned with"):
        ingest(small, ledger, PartitionRule(k=50), progress=False)


def test_late_events_are_counted_and_cached(ledger):
    def frame(rows):
        df = pd.DataFrame(rows, columns=["event_id", "user_id", "item_id", "ts", "rating"])
        df["ts"] = pd.to_datetime(df["ts"], unit="s", utc=True).astype("datetime64[us, UTC]")
        df["row"] = range(len(df))
        return df

    def loaded(df):
        from liber_features.ingest.events import LoadedEvents

        q = pd.DataFrame(columns=["source", "row", "field", "reason", "raw"])
        return LoadedEvents(source="mem", layout="csv", events=df, catalog=None, quarantine=q,
                            read=len(df), duplicates=0)

    first = frame([(f"e{i}", "u1", f"i{i}", 100 + i, 4.0) for i in range(5)])
    ingest(loaded(first), ledger, PartitionRule(k=3), progress=False)
    s = ingest(loaded(frame([("old", "u1", "i9", 50, 3.0)])), ledger, PartitionRule(k=3),
               progress=False)
    assert s.late == 1 and s.partitions_sealed == 1  # the late event completes the cache
    rows, caches = partition_rows(ledger)
    assert len(rows) == 2 and caches[0][2] == 2
    assert [e[0] for e in json.loads(rows[1][4])] == ["old", "e3", "e4"]
    assert rows[1][3] >= rows[0][3]  # seal times never go backwards


def test_cli_ingest_json_summary_and_quarantine(tmp_path):
    log = tmp_path / "events.csv"
    log.write_text("user_id,item_id,timestamp,rating\n"
                   "1,10,1000000000,4\n1,11,1000000001,9\n,12,1000000002,3\n"
                   "2,10,not-a-time,4\n2,11,1000000003,4\n1,10,1000000000,4\n")
    url = f"sqlite:///{tmp_path / 'l.db'}"
    r = CliRunner().invoke(cli, ["ingest", "--events", str(log), "--ledger", url, "--k", "1",
                                 "--rating-range", "0,5", "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output.strip().splitlines()[-1])
    assert (out["read"], out["accepted"], out["duplicates"], out["quarantined"]) == (6, 2, 1, 3)
    assert out["partitions_sealed"] == 2 and out["cached_events"] == 0
    from liber_features.ledger.store import Ledger

    with Ledger(url).engine.connect() as conn:
        reasons = {(r.row, r.field) for r in conn.execute(select(quarantine))}
    assert reasons == {(1, "rating"), (2, "user_id"), (3, "ts")}


def test_cli_unusable_input_exits_nonzero_naming_it(tmp_path):
    r = CliRunner().invoke(cli, ["ingest", "--events", str(tmp_path / "nope.csv"),
                                 "--ledger", f"sqlite:///{tmp_path / 'l.db'}"])
    assert r.exit_code != 0 and "nope.csv" in r.output
    bad = tmp_path / "bad.csv"
    bad.write_text("user,item_id,timestamp\n1,2,3\n")
    r = CliRunner().invoke(cli, ["ingest", "--events", str(bad),
                                 "--ledger", f"sqlite:///{tmp_path / 'l.db'}"])
    assert r.exit_code != 0 and "user_id" in r.output
