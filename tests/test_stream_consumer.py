"""The consumer: partitions sealed from a stream equal ``liber ingest`` of the same events, on NATS
and Redis Streams, into SQLite and PostgreSQL; redeliveries are duplicates; poison is quarantined
and the stream goes on; the quiet-user sweep; the online flusher's timestamps."""

from __future__ import annotations

import dataclasses
import json

import pandas as pd
import pytest
from sqlalchemy import select
from streamkit import broker_url, consume, ledger_rows, movielens_slice, publish

from liber_features.errors import FeatureStoreError
from liber_features.ingest.job import ingest
from liber_features.ingest.partition import CachedEvent, PartitionRule, UserState
from liber_features.ledger.store import Ledger, quarantine, stream_positions
from liber_features.stream.connect import open_publisher
from liber_features.stream.flusher import Flusher

pytestmark = [pytest.mark.redis, pytest.mark.nats, pytest.mark.usefixtures("drop_streams")]


@pytest.mark.parametrize("broker", ["nats", "redis"])
def test_stream_equals_file_ingest_and_a_replay_adds_nothing(broker, ledger, replayed):
    url = broker_url(broker, "eq")
    assert publish(url, movielens_slice()) == 2_279
    s = consume(url, ledger)
    assert (s.fetched, s.accepted, s.duplicates, s.quarantined, s.late, s.partitions_sealed) == (
        2_279, 2_279, 0, 0, 0, 108)
    assert ledger_rows(ledger) == replayed
    # The producer re-sends everything (new broker positions, the same event ids): all duplicates.
    # (NATS drops re-published ids itself within its window; Redis stores them again.)
    publish(url, movielens_slice())
    again = consume(url, ledger, idle_s=0.4)
    assert (again.accepted, again.partitions_sealed) == (0, 0)
    assert again.duplicates == (0 if broker == "nats" else 2_279)
    assert ledger_rows(ledger) == replayed
    with ledger.engine.connect() as conn:
        pos = conn.execute(select(stream_positions)).one()
    assert (pos.events_total, pos.quarantined_total) == (2_279, 0)
    assert pos.stream_time_us == int(movielens_slice().events["ts"].max().timestamp() * 1e6)
    assert pos.position.startswith("nats:S_eq_" if broker == "nats" else "redis:s_eq_")
    # liber status names the stream, where it is committed up to, and what it committed
    from click.testing import CliRunner

    from liber_features.cli.main import cli

    args = ["status", "--json", "--ledger", ledger.url] + (["--ledger-schema", ledger.schema] if ledger.schema else [])
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 0, r.stderr
    (shown,) = json.loads(r.stdout.strip().splitlines()[-1])["streams"]
    assert (shown["source"], shown["position"], shown["events"], shown["quarantined"], shown["partitions"]) == (
        pos.source, pos.position, 2_279, 0, {})
    assert shown["newest_event_at"] == "2018-05-13T10:45:32+00:00"  # the slice's newest event


@pytest.mark.parametrize("broker", ["nats", "redis"])
def test_poison_messages_are_quarantined_with_position_and_the_stream_goes_on(broker, tmp_path):
    ledger = Ledger(f"sqlite:///{tmp_path / 'l.db'}")
    url = broker_url(broker, "poison")
    head = dataclasses.replace(movielens_slice(), events=movielens_slice().events.iloc[:40])
    publish(url, head)
    pub = open_publisher(url)
    pub.publish([("", "bad1", b"{oops"), ("", "bad2", json.dumps({"user_id": "1", "item_id": "x"}).encode())])
    pub.close()
    tail = dataclasses.replace(movielens_slice(), events=movielens_slice().events.iloc[40:100])
    publish(url, tail)
    s = consume(url, ledger, batch=25)
    assert (s.fetched, s.accepted, s.quarantined) == (102, 100, 2)
    with ledger.engine.connect() as conn:
        rows = conn.execute(select(quarantine.c.source, quarantine.c.row, quarantine.c.field,
                                   quarantine.c.reason, quarantine.c.raw).order_by(quarantine.c.row)).all()
    assert [(r.field, r.reason, r.raw) for r in rows] == [
        ("row", "message is not JSON: Expecting property name enclosed in double quotes: line 1 column 2 "
                "(char 1)", "{oops"),
        ("ts", "timestamp is missing", '{"user_id": "1", "item_id": "x"}')]
    if broker == "nats":  # the stream's sequences 41 and 42: the position names the message
        assert [(r.source.rsplit(":", 1)[1], r.row) for r in rows] == [("41", 41), ("42", 42)]
    else:
        assert all(r.source.startswith("redis:s_poison_") for r in rows)
    again = consume(url, ledger, idle_s=0.3)  # acked: the poison is never delivered again
    assert again.fetched == 0


def test_quiet_users_are_sealed_by_the_sweep_at_the_stream_clock(tmp_path):
    ledger = Ledger(f"sqlite:///{tmp_path / 'l.db'}")
    url = broker_url("redis", "sweep")
    pub = open_publisher(url)
    rows = [("a", 0), ("a", 10), ("b", 20), ("b", 200)]
    pub.publish([("", f"e{i}", json.dumps({"user_id": u, "item_id": "m", "timestamp": 1_000_000 + t,
                                            "event_id": f"e{i}"}).encode()) for i, (u, t) in enumerate(rows)])
    pub.close()
    s = consume(url, ledger, k=10, max_span_s=50, sweep_every_s=0.01)
    assert (s.accepted, s.partitions_sealed, s.swept) == (4, 2, 1)
    parts, caches = ledger_rows(ledger)
    # b's own next event sealed b by the time rule (at that event); a was quiet: the sweep sealed it
    # at the stream clock (b's last event), with the same contents its next event would have sealed.
    assert [(p[0], p[1], p[3], p[4], [e[0] for e in json.loads(p[5])]) for p in parts] == [
        ("a", 0, 1_000_200_000_000, "time", ["e0", "e1"]),
        ("b", 0, 1_000_200_000_000, "time", ["e2"])]
    assert [(c[0], [e[0] for e in json.loads(c[1])]) for c in caches] == [("a", []), ("b", ["e3"])]


def _state(user: str, ts: list[int]) -> UserState:
    return UserState(user, cache=[CachedEvent(t, f"{user}{t}", "m") for t in ts])


def test_flusher_writes_strictly_increasing_timestamps_and_keeps_users_after_a_failed_write():
    frames, fail = [], [True]

    def write(df: pd.DataFrame) -> int:
        if fail[0]:
            fail[0] = False
            raise FeatureStoreError("redis down")
        frames.append(df)
        return len(df)

    said: list[str] = []
    f = Flusher(write, interval_s=0.0, say=said.append)
    f.add([_state("u", [5_000_000]), _state("v", [7_000_000])])
    assert f.flush() == 0 and len(said) == 1 and "2 user(s) kept" in said[0]
    f.add([_state("u", [5_000_000, 5_000_000])])  # the newest time did not move (a tie)
    assert f.flush() == 2
    f.add([_state("u", [4_000_000, 5_000_000])])  # a late event: the newest time still 5 s
    assert f.flush() == 1
    stamps = [(u, int(t.value // 1000)) for fr in frames for u, t in zip(fr["user_id"], fr["event_timestamp"])]
    assert stamps == [("u", 5_000_000), ("v", 7_000_000), ("u", 5_000_001)]
    assert frames[1]["cache_length"].tolist() == [2]


@pytest.mark.postgres  # the Feast registry of the Redis repo lives in PostgreSQL
def test_liber_stream_with_repo_puts_every_users_cache_online(tmp_path, monkeypatch):
    """The real path: `liber stream --repo` → the existing writer → Redis in Feast's layout, read back
    through Feast; online equals the ledger's caches for every user."""
    from click.testing import CliRunner
    from feastrepo import Repo, cleanup, redis_client

    from liber_features.cli.main import cli
    from liber_features.features.caches import current_caches
    from liber_features.features.repo import SHORT_TERM_VIEW

    redis_client()
    repo = Repo(tmp_path, "redis")
    for name, value in repo.env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("LIBER_LEDGER_SCHEMA", raising=False)
    ledger_url = f"sqlite:///{tmp_path / 'ledger.db'}"
    monkeypatch.setenv("LIBER_LEDGER_URL", ledger_url)
    store = repo.apply()
    try:
        url = broker_url("redis", "online")
        publish(url, movielens_slice())
        r = CliRunner().invoke(cli, ["stream", "--from", url, "--ledger", ledger_url, "--repo", str(repo.root),
                                     "--until-idle", "1", "--json"])
        assert r.exit_code == 0, r.stderr
        summary = json.loads(r.stdout.strip().splitlines()[-1])
        assert (summary["accepted"], summary["users_flushed"] >= 12) == (2_279, True)
        users = sorted(movielens_slice().events["user_id"].unique())
        got = store.get_online_features(
            features=[f"{SHORT_TERM_VIEW}:cache_item_ids", f"{SHORT_TERM_VIEW}:cache_length"],
            entity_rows=[{"user_id": u} for u in users], full_feature_names=True).to_dict()
        caches = current_caches(Ledger(ledger_url), users).set_index("user_id")
        assert got[f"{SHORT_TERM_VIEW}__cache_item_ids"] == [list(caches.loc[u, "cache_item_ids"]) for u in users]
        assert got[f"{SHORT_TERM_VIEW}__cache_length"] == [int(caches.loc[u, "cache_length"]) for u in users]
        assert sum(got[f"{SHORT_TERM_VIEW}__cache_length"]) == 119  # the slice's unsealed events
    finally:
        cleanup(repo)


def test_event_types_and_labels_travel_like_file_ingest(tmp_path):
    """Implicit feedback (ingest/feedback.py) through a broker: the same ids, types and labels in the
    events table, and the same partitions, as file ingest of the same log."""
    from liber_features.ingest.events import load_events
    from liber_features.ledger.store import events

    log = tmp_path / "shop.csv"
    log.write_text("user_id,item_id,timestamp,event_type,label\n" + "".join(
        f"u{i % 2},p{i},{1_000_000 + i},{('view', 'cart', 'purchase')[i % 3]},{'' if i % 3 else i % 2}\n"
        for i in range(9)))
    loaded = load_events(log)
    ref = Ledger(f"sqlite:///{tmp_path / 'ref.db'}")
    ingest(loaded, ref, PartitionRule(k=2), progress=False)
    ledger = Ledger(f"sqlite:///{tmp_path / 'l.db'}")
    url = broker_url("redis", "typed")
    publish(url, loaded)
    s = consume(url, ledger, k=2)
    assert (s.accepted, s.quarantined) == (9, 0)

    def rows(led):
        with led.engine.connect() as conn:
            return conn.execute(select(events.c.event_id, events.c.event_type, events.c.label)
                                .order_by(events.c.event_id)).all()

    assert rows(ledger) == rows(ref)
    assert [r.event_type for r in rows(ledger)].count("purchase") == 3
    assert sorted(r.label for r in rows(ledger) if r.label is not None) == [0.0, 0.0, 1.0]
    assert ledger_rows(ledger) == ledger_rows(ref)


def test_the_loop_runs_with_what_was_loaded_frozen_out_of_the_collector(tmp_path):
    """A full collection over everything loaded made the event -> online p99 (docs/streaming.md):
    the consumer freezes the loaded objects before its loop; an object made before the run is
    then in the permanent generation, not in one the collector walks."""
    import gc

    ledger = Ledger(f"sqlite:///{tmp_path / 'l.db'}")
    url = broker_url("redis", "freeze")
    pub = open_publisher(url)
    pub.publish([("", "e0", json.dumps({"user_id": "a", "item_id": "m", "timestamp": 1_000_000,
                                         "event_id": "e0"}).encode())])
    pub.close()
    gc.unfreeze()
    loaded = [object() for _ in range(1000)]  # tracked containers: a list of objects
    assert gc.get_freeze_count() == 0
    try:
        s = consume(url, ledger, k=10)
        frozen = gc.get_freeze_count()
        assert s.accepted == 1
        assert frozen > len(loaded)
        assert not any(o is loaded for gen in range(3) for o in gc.get_objects(gen))
    finally:
        gc.unfreeze()
