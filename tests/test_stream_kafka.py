"""Kafka against librdkafka's in-process mock cluster (``test.mock.num.brokers``, no broker needed):
the stream equals file ingest on SQLite and PostgreSQL, and the ledger — not Kafka's committed
offsets — is where a consumer resumes (positions per partition, sought on assignment)."""

from __future__ import annotations

import pytest
from confluent_kafka import Producer
from sqlalchemy import select
from streamkit import K, assert_each_event_once, consume, finish, ledger_rows, movielens_slice, publish, start

from liber_features.ingest.job import ingest
from liber_features.ingest.partition import PartitionRule
from liber_features.ledger.store import Ledger, stream_positions
from liber_features.stream.kafka_source import KafkaSource


@pytest.fixture(scope="module")
def mock_cluster():
    """A one-broker mock cluster inside this process; its bootstrap address (topics auto-create
    with 4 partitions)."""
    owner = Producer({"test.mock.num.brokers": 1, "log_level": 0})
    brokers = owner.list_topics(timeout=5).brokers.values()
    yield ",".join(f"{b.host}:{b.port}" for b in brokers)
    owner.flush(1)


@pytest.fixture(scope="module")
def replayed(tmp_path_factory):
    ref = Ledger(f"sqlite:///{tmp_path_factory.mktemp('ref') / 'ref.db'}")
    ingest(movielens_slice(), ref, PartitionRule(k=K), progress=False)
    return ledger_rows(ref)


def test_kafka_stream_equals_file_ingest_with_positions_per_partition(mock_cluster, ledger, replayed, unique_name):
    url = f"kafka://{mock_cluster}/t_{unique_name}?group=g_{unique_name}"
    assert publish(url, movielens_slice()) == 2_279
    s = consume(url, ledger, idle_s=4)
    assert (s.fetched, s.accepted, s.duplicates, s.late, s.partitions_sealed) == (2_279, 2_279, 0, 0, 108)
    assert ledger_rows(ledger) == replayed
    with ledger.engine.connect() as conn:
        rows = conn.execute(select(stream_positions.c.shard, stream_positions.c.position,
                                   stream_positions.c.position_offset).order_by(stream_positions.c.shard)).all()
    shards = {r.shard: (r.position, r.position_offset) for r in rows if r.shard}
    # keyed by user: 4 partitions, each resumed at its own offset; together every record once
    assert sorted(shards) == ["0", "1", "2", "3"]
    assert sum(offset + 1 for _, offset in shards.values()) == 2_279
    assert all(pos == f"kafka:t_{unique_name}:{shard}:{offset}" for shard, (pos, offset) in shards.items())


@pytest.mark.slow
def test_a_consumer_resumes_where_the_ledger_says_not_where_kafka_says(mock_cluster, tmp_path, monkeypatch,
                                                                      unique_name):
    ledger = Ledger(f"sqlite:///{tmp_path / 'l.db'}")
    # The mock cluster ignores a member's leaving: the next one waits out the session timeout.
    url = f"kafka://{mock_cluster}/t_{unique_name}?group=g_{unique_name}&session_timeout=3"
    publish(url, movielens_slice())
    sought: list[dict[int, int]] = []
    on_assign = KafkaSource._on_assign

    def record(self, consumer, partitions):
        on_assign(self, consumer, partitions)
        sought.append({tp.partition: tp.offset for tp in partitions})

    monkeypatch.setattr(KafkaSource, "_on_assign", record)
    # Kafka never hears of the commits: its committed offsets stay empty, so without the ledger's
    # positions a restarted consumer would read every record again from the beginning.
    monkeypatch.setattr(KafkaSource, "ack", lambda self, deliveries: None)
    first = consume(url, ledger, idle_s=4)
    assert first.accepted == 2_279
    again = consume(url, ledger, idle_s=7)
    assert (again.fetched, again.duplicates) == (0, 0)
    with ledger.engine.connect() as conn:
        done = dict(conn.execute(select(stream_positions.c.shard, stream_positions.c.position_offset)
                                 .where(stream_positions.c.shard != "")).all())
    # the first run started every partition at the beginning (-2), the second after the ledger's offsets
    assert sought == [dict.fromkeys(range(4), -2), {int(p): o + 1 for p, o in done.items()}]


@pytest.mark.slow
def test_kafka_consumer_sigkilled_mid_stream_then_restarted_equals_file_ingest(mock_cluster, tmp_path, replayed,
                                                                             unique_name):
    import random
    import signal
    import time

    ledger = Ledger(f"sqlite:///{tmp_path / 'l.db'}")
    url = f"kafka://{mock_cluster}/t_{unique_name}?group=g_{unique_name}&session_timeout=3"
    publish(url, movielens_slice())
    rng, committed = random.Random(18), []
    for _ in range(2):  # killed once it has committed some batches (joining the group takes ~3-6 s)
        proc = start(url, ledger, "--batch", "5", "--until-idle", "30")
        deadline = time.monotonic() + 20
        before = ledger.counts()["ledger_events"] if committed else 0
        while ledger.counts()["ledger_events"] <= before and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(rng.uniform(0.2, 1.0))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        committed.append(ledger.counts()["ledger_events"])
    assert 0 < committed[0] < committed[1] < 2_279, committed
    finish(start(url, ledger, "--batch", "50", "--until-idle", "8"))
    assert_each_event_once(ledger)
    assert ledger_rows(ledger) == replayed


def test_lag_is_the_watermarks_beyond_the_ledgers_offsets(mock_cluster, ledger, unique_name):
    """`liber status --lag`: what the partitions hold past the ledger's committed offsets, and when the
    oldest of it was produced (stream/lag.py); read-only, so asking twice gives the same count."""
    import dataclasses
    import time

    from liber_features.stream.lag import broker_lag

    s = movielens_slice()
    url = f"kafka://{mock_cluster}/lag_{unique_name}?group=g_{unique_name}"
    assert publish(url, dataclasses.replace(s, events=s.events.iloc[:300], read=300)) == 300
    consume(url, ledger, idle_s=4)
    assert (broker_lag(url, ledger).messages, broker_lag(url, ledger).oldest_us) == (0, None)
    t0 = int(time.time() * 1000) * 1000
    assert publish(url, dataclasses.replace(s, events=s.events.iloc[300:425].reset_index(drop=True), read=125)) == 125
    t1 = int(time.time() * 1000) * 1000 + 1000
    first, again = broker_lag(url, ledger), broker_lag(url, ledger)
    assert (first.messages, again.messages) == (125, 125)
    assert t0 <= first.oldest_us <= t1  # a producer timestamp (ms) of this second publish
