"""The oldest unflushed change (stream/online_mark.py): kept in the ledger per consumer run, cleared by
a complete online write, left to age while the online store is down, shown by `liber status`, and
taken over — its users written — by the next consumer of the source.

The online store is the test's own ``redis-server`` (stopped and restarted here), in Feast's layout
through the existing writer; the broker is Redis Streams on the shared server.
"""

from __future__ import annotations

import dataclasses
import json

import pytest
from click.testing import CliRunner
from feastrepo import Repo, redis_client
from sqlalchemy import select
from streamkit import broker_url, movielens_slice, publish
from test_recovery import OwnRedis

from liber_features.cli.main import cli
from liber_features.features.caches import current_caches
from liber_features.features.online import push_short_term_cache
from liber_features.features.repo import SHORT_TERM_VIEW
from liber_features.ingest.partition import PartitionRule
from liber_features.ledger import runs as runs_module
from liber_features.ledger.store import now_us, stream_online
from liber_features.stream.connect import open_source
from liber_features.stream.consumer import Consumer, StreamConfig
from liber_features.stream.flusher import Flusher

pytestmark = [pytest.mark.redis, pytest.mark.postgres, pytest.mark.usefixtures("drop_streams")]
SPLIT = 1_000  # the slice's first 1,000 events in the first run, the other 1,279 in the second


@pytest.fixture
def online(tmp_path, monkeypatch):
    """A Feast repo whose online store is this test's own redis-server."""
    redis_client()
    own = OwnRedis(tmp_path)
    own.start()
    repo = Repo(tmp_path, "redis")
    repo.env = {**repo.env, "LIBER_REDIS_URL": own.url}  # what repo.apply() opens the store with
    for name, value in repo.env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("LIBER_REDIS_CONNECTION", raising=False)
    store = repo.apply()
    try:
        yield own, store
    finally:
        if own.proc and own.proc.poll() is None:
            own.proc.kill()
            own.proc.wait()
        repo.store().registry.delete_project(repo.project)


def run(url, ledger, store, interval_s, on_commit=None):
    said: list[str] = []
    flusher = Flusher(lambda df: push_short_term_cache(store, df), interval_s, say=said.append)
    source = open_source(url, 250)
    try:
        s = Consumer(source, ledger, PartitionRule(k=20), StreamConfig(batch=250, until_idle_s=0.6),
                     flusher=flusher, on_commit=on_commit, say=said.append).run()
    finally:
        source.close()
    return s, said


def marks(ledger) -> dict[int, tuple]:
    with ledger.engine.connect() as conn:
        return {r.run_id: (r.pending_since_us, r.pending_users, r.written_us, r.users_written)
                for r in conn.execute(select(stream_online))}


def status(ledger, *extra):
    args = ["status", "--ledger", ledger.url, *extra] + (["--ledger-schema", ledger.schema] if ledger.schema else [])
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 0, r.stderr
    return r


def test_pending_until_written_aging_while_redis_is_down_and_taken_over_by_the_next_consumer(
        ledger, online, monkeypatch):
    own, store = online
    events = movielens_slice().events.sort_values(["ts", "user_id", "event_id"], kind="stable")
    url = broker_url("redis", "mark")
    publish(url, dataclasses.replace(movielens_slice(), events=events.iloc[:SPLIT]))

    # 1. Nothing is written before the end (a flush interval of an hour): after each commit the
    #    mark holds the first commit's time and every user committed so far.
    seen: set[str] = set()
    rows: list[tuple] = []  # after each commit: the mark's row, the commit time, users committed so far

    def on_commit(ev, commit_us):
        seen.update(ev["user_id"])
        (row,) = marks(ledger).values()
        rows.append((row, commit_us, len(seen)))

    t0 = now_us()
    s1, _ = run(url, ledger, store, 3600.0, on_commit)
    assert (s1.accepted, s1.batches) == (SPLIT, 4)
    since1 = rows[0][0][0]
    assert t0 <= since1 <= rows[0][1]  # stamped inside the first batch's transaction
    assert [r[0] for r in rows] == [(since1, n, None, 0) for _, _, n in rows]  # users waiting = committed
    users_a = len(seen)
    assert marks(ledger)[s1.run_id][:2] == (None, 0)  # the final flush wrote them all
    assert marks(ledger)[s1.run_id][3] == users_a == s1.users_flushed
    assert json.loads(status(ledger, "--json").stdout.splitlines()[-1])["streams"][0]["online"] == []

    # 2. The online store is down: every write fails, the mark stays at the first failed commit.
    own.stop()
    publish(url, dataclasses.replace(movielens_slice(), events=events.iloc[SPLIT:]))
    s2, said = run(url, ledger, store, 3600.0)  # one write, at the end: it fails (redis-py retries ~8 s per call)
    assert s2.accepted == len(events) - SPLIT and s2.users_flushed == 0
    assert said and all(line.startswith("warning: online write failed") for line in said)
    users_b = int(events.iloc[SPLIT:]["user_id"].nunique())
    since2, waiting, written, users_written = marks(ledger)[s2.run_id]
    assert (waiting, written, users_written) == (users_b, None, 0)
    with monkeypatch.context() as m:  # `liber status` 2.5 s after that commit
        m.setattr(runs_module, "now_us", lambda: since2 + 2_500_000)
        (line,) = [x for x in status(ledger).stdout.splitlines() if "online, run" in x]
        shown = json.loads(status(ledger, "--json").stdout.splitlines()[-1])["streams"][0]["online"]
    assert line == (f"    online, run {s2.run_id} (gone): oldest unflushed change committed 2.5 s ago "
                    f"({users_b} users waiting); last complete write never")
    assert shown == [{"run_id": s2.run_id, "state": "gone", "oldest_unflushed_age_s": 2.5,
                      "pending_users": users_b, "last_write_age_s": None}]

    # 3. Redis is back; the next consumer (no new events) takes the dead run's mark over, writes its
    #    users and clears both rows: online equals the ledger's caches for every user again.
    own.start()
    s3, _ = run(url, ledger, store, 0.0)
    assert (s3.accepted, s3.users_flushed) == (0, users_b)
    assert marks(ledger)[s2.run_id][:2] == (None, 0)
    assert marks(ledger)[s3.run_id][:2] == (None, 0) and marks(ledger)[s3.run_id][3] == users_b
    users = sorted(events["user_id"].unique())
    got = store.get_online_features(features=[f"{SHORT_TERM_VIEW}:cache_item_ids"],
                                    entity_rows=[{"user_id": u} for u in users]).to_dict()
    caches = current_caches(ledger, users).set_index("user_id")
    assert got["cache_item_ids"] == [list(caches.loc[u, "cache_item_ids"]) for u in users]
