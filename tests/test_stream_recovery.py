"""Crashes and restarts: a consumer SIGKILLed at random moments and restarted, a broker that
restarts under a running consumer, two consumers sharing a durable / group or split by user shard.
Every case ends with events lost 0 and counted twice 0; where each user's events reach the ledger
in order (one consumer per durable, or one per shard) the partitions equal file ingest's exactly."""

from __future__ import annotations

import random
import signal
import time

import pytest
from streamkit import (
    TOTAL,
    OwnNats,
    assert_each_event_once,
    broker_url,
    finish,
    ledger_rows,
    movielens_slice,
    publish,
    start,
)

from liber_features.ledger.store import Ledger

pytestmark = [pytest.mark.redis, pytest.mark.nats, pytest.mark.slow, pytest.mark.usefixtures("drop_streams")]


def _wait_for_commit(ledger: Ledger, before: int, proc, timeout: float = 60) -> None:
    """Until the running consumer has committed past ``before`` events: the kill must land
    mid-stream however slowly the process starts (a fixed sleep raced start-up on a loaded CI box)."""
    deadline = time.monotonic() + timeout
    while ledger.counts()["ledger_events"] <= before:
        assert proc.poll() is None, proc.communicate()[1]
        assert time.monotonic() < deadline, f"no commit within {timeout} s"
        time.sleep(0.02)


@pytest.mark.parametrize(("broker", "backend"), [("nats", "sqlite"), ("redis", "postgres")])
def test_consumer_sigkilled_at_random_moments_then_restarted_equals_file_ingest(
        broker, backend, replayed, tmp_path, pg_url, unique_name):
    ledger = (Ledger(f"sqlite:///{tmp_path / 'l.db'}") if backend == "sqlite"
              else Ledger(pg_url, schema=unique_name))
    try:
        url = broker_url(broker, "kill")
        publish(url, movielens_slice())
        rng = random.Random(18)
        committed = [0]
        for _ in range(3):  # each run gets killed at a random moment after its first commit
            proc = start(url, ledger, "--batch", "5", "--until-idle", "30")
            _wait_for_commit(ledger, committed[-1], proc)
            time.sleep(rng.uniform(0.0, 0.4))
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
            committed.append(ledger.counts()["ledger_events"])
        # the kills landed mid-stream: each run had committed some batches, none had finished
        assert committed == sorted(set(committed)) and committed[-1] < TOTAL, committed
        finish(start(url, ledger, "--batch", "20", "--until-idle", "3.5"))
        assert_each_event_once(ledger)
        assert ledger_rows(ledger) == replayed
    finally:
        ledger.drop_schema()


def test_a_broker_restart_mid_run_is_retried_and_reported_not_a_traceback(replayed, tmp_path):
    own = OwnNats(tmp_path / "nats")
    own.start()
    try:
        ledger = Ledger(f"sqlite:///{tmp_path / 'l.db'}")
        url = broker_url("nats", "restart", base=own.url)
        half = TOTAL // 2
        publish(url, movielens_slice(), limit=half)
        proc = start(url, ledger, "--batch", "50", "--until-idle", "6")
        time.sleep(2.5)
        own.stop()  # the server goes away under the running consumer (its store stays on disk)
        time.sleep(1.5)
        own.start()
        publish(url, movielens_slice(), skip=half)
        summary, err = finish(proc)
        assert summary["broker_retries"] >= 1 and "warning: broker nats://127.0.0.1:" in err
        assert_each_event_once(ledger)
        assert ledger_rows(ledger) == replayed
    finally:
        own.stop()


def test_two_consumers_on_one_durable_share_the_work_without_counting_twice(unique_name, pg_url):
    ledger = Ledger(pg_url, schema=unique_name)  # PostgreSQL: the position row lock serialises commits
    try:
        url = broker_url("nats", "shared", ordered="0")  # sharing a durable gives up per-user order
        publish(url, movielens_slice())
        procs = [start(url, ledger, "--batch", "25", "--until-idle", "2.5") for _ in range(2)]
        summaries = [finish(p)[0] for p in procs]
        assert all(s["fetched"] > 0 for s in summaries)  # both did part of the work
        assert sum(s["accepted"] for s in summaries) == TOTAL
        assert_each_event_once(ledger)
    finally:
        ledger.drop_schema()


def test_one_consumer_per_user_shard_keeps_per_user_order_and_equals_file_ingest(replayed, tmp_path):
    ledger = Ledger(f"sqlite:///{tmp_path / 'l.db'}")
    url = broker_url("redis", "shard")
    publish(url, movielens_slice(), shards=2)
    stream_key = url.split("stream=")[1].split("&")[0]
    shard_urls = [url.replace(f"stream={stream_key}", f"stream={stream_key}.{n}") for n in range(2)]
    procs = [start(u, ledger, "--batch", "25", "--until-idle", "2.5") for u in shard_urls]
    summaries = [finish(p)[0] for p in procs]
    assert all(s["accepted"] > 0 for s in summaries) and sum(s["accepted"] for s in summaries) == TOTAL
    assert_each_event_once(ledger)
    assert ledger_rows(ledger) == replayed
