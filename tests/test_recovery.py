"""The online store always catches up: Redis down during `liber materialize`, Redis killed in the
middle of a write (materialize, the stream's flusher), Redis wiped, a fleet moving to a new LLM, and
Feast's own materialization never replacing newer rows with older ones.

Redis is the test's own ``redis-server`` on a free port (stopped and restarted here; the shared
server is never touched), the Feast registry the real PostgreSQL, the ledger SQLite.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import redis
from click.testing import CliRunner
from feastrepo import DATA, LONG_PATH, SHORT_PATH, Repo, cleanup, redis_client
from test_concurrency import events

from liber_features.cli.main import cli
from liber_features.features import online as online_writer
from liber_features.features import sync
from liber_features.features.caches import append_cache_history, current_caches
from liber_features.features.memory import encoder_version, refresh_memory_table
from liber_features.features.online import push_short_term_cache, write_online
from liber_features.features.repo import LONG_TERM_VIEW, SHORT_TERM_VIEW, sample_long_term, sample_short_term
from liber_features.ingest.job import ingest
from liber_features.ingest.partition import CachedEvent, PartitionRule, UserState
from liber_features.ledger.store import Ledger
from liber_features.stream.flusher import Flusher
from liber_features.testing import CountingLLM, HashEncoder
from liber_features.uil.interest import EncodeConfig, prompt_version, run_encode

pytestmark = [pytest.mark.redis, pytest.mark.postgres]
USERS = [f"u{i}" for i in range(6)]
LONG_FEATURES = ["summary_vectors", "shift_vectors", "partition_count", "latest_summary", "encoder_version"]


class OwnRedis:
    """A redis-server of this test only; stop() saves to disk, start() loads it back."""

    def __init__(self, root) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.args = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(root),
                     "--dbfilename", "dump.rdb", "--save", "", "--appendonly", "no"]
        self.proc: subprocess.Popen | None = None

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port)

    def start(self) -> None:
        self.proc = subprocess.Popen(self.args, stdout=subprocess.DEVNULL)
        for _ in range(100):
            try:
                self.client().ping()
                return
            except redis.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError(f"redis-server on port {self.port} did not start")

    def stop(self) -> None:
        self.client().shutdown(save=True)
        self.proc.wait(timeout=10)


def kill_mid_write(monkeypatch, own: OwnRedis, before: int) -> list[int]:
    """SIGKILL ``own`` right before this process runs its ``before``-th Redis pipeline from now on,
    after a SAVE: restarted, the server holds exactly what the write had done until then (a server
    with persistence dying mid-write). The writer pipelines ``online._BATCH`` rows per round trip:
    a read of their stored timestamps, then their HSETs. Returns the pipeline count so far."""
    calls = [0]
    execute = redis.client.Pipeline.execute

    def counting(self, *args, **kwargs):
        calls[0] += 1
        if calls[0] == before:
            own.client().save()
            own.proc.kill()
            own.proc.wait(timeout=10)
        return execute(self, *args, **kwargs)

    monkeypatch.setattr(redis.client.Pipeline, "execute", counting)
    return calls


@pytest.fixture
def setup(tmp_path, monkeypatch):
    """Ledger with 6 users × 3 partitions (3 users encoded), tables written, repo applied."""
    redis_client()  # the registry side (PostgreSQL) and the suite's Redis must be up anyway
    own = OwnRedis(tmp_path)
    own.start()
    repo = Repo(tmp_path, "redis")
    ledger_url = f"sqlite:///{tmp_path / 'ledger.db'}"
    env = {**repo.env, "LIBER_REDIS_URL": own.url, "LIBER_MEMORY_SLOTS": "2", "LIBER_VECTOR_DIM": "4",
           "LIBER_LEDGER_URL": ledger_url, "LIBER_DATA_DIR": DATA}  # the folder LONG_PATH and SHORT_PATH name
    for name in ("LIBER_REDIS_CONNECTION", "LIBER_LEDGER_SCHEMA"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    repo.env = env
    ledger = Ledger(ledger_url)
    ingest(events(users=6), ledger, PartitionRule(k=2), progress=False)
    encode(ledger, repo, USERS[:3])
    append_cache_history(current_caches(ledger), tmp_path / SHORT_PATH, ledger)
    store = repo.apply()
    try:
        yield own, repo, ledger, store
    finally:
        if own.proc and own.proc.poll() is None:
            own.proc.kill()
            own.proc.wait()
        repo.store().registry.delete_project(repo.project)


def encode(ledger, repo, users, llm_id="fake:counting@1", limit=None):
    run_encode(ledger, CountingLLM(llm_id), HashEncoder(), EncodeConfig(users=users, limit=limit), progress=False)
    return refresh_memory_table(ledger, repo.root / LONG_PATH, memory_slots=2, vector_dim=4)


def materialize(*args: str) -> tuple[int, dict | str]:
    r = CliRunner().invoke(cli, ["materialize", "--json", *args])
    return r.exit_code, json.loads(r.stdout.strip().splitlines()[-1]) if r.exit_code == 0 else r.stderr


def online(store, users=USERS) -> dict:
    feats = [f"{LONG_TERM_VIEW}:{f}" for f in LONG_FEATURES] + [
        f"{SHORT_TERM_VIEW}:cache_item_ids", f"{SHORT_TERM_VIEW}:cache_length"]
    return store.get_online_features(features=feats, entity_rows=[{"user_id": u} for u in users],
                                     full_feature_names=True).to_dict()


def assert_online_equals_offline(store, ledger, users=USERS) -> None:
    """Online == the offline point-in-time row now (long-term), == the ledger's caches (short-term)."""
    now = datetime.now(UTC) + timedelta(seconds=1)
    hist = store.get_historical_features(
        entity_df=pd.DataFrame({"user_id": users, "event_timestamp": [now] * len(users)}),
        features=[f"{LONG_TERM_VIEW}:{f}" for f in LONG_FEATURES], full_feature_names=True,
    ).to_df().set_index("user_id")
    got = online(store, users)
    caches = current_caches(ledger, users).set_index("user_id")
    for i, u in enumerate(users):
        for f in LONG_FEATURES:
            a, e = got[f"{LONG_TERM_VIEW}__{f}"][i], hist.loc[u, f"{LONG_TERM_VIEW}__{f}"]
            if f.endswith("vectors"):
                assert np.array_equal(np.asarray(a, np.float32).view(np.uint32),
                                      np.asarray(e, np.float32).view(np.uint32)), (u, f)
            else:
                assert a == e, (u, f, a, e)
        assert got[f"{SHORT_TERM_VIEW}__cache_item_ids"][i] == list(caches.loc[u, "cache_item_ids"])
        assert got[f"{SHORT_TERM_VIEW}__cache_length"][i] == caches.loc[u, "cache_length"]


def test_redis_down_then_back_next_plain_materialize_writes_every_pending_user(setup, monkeypatch):
    own, repo, ledger, store = setup
    monkeypatch.setattr(sync, "SYNC_OVERLAP", timedelta(0))  # count exactly what was pending
    code, first = materialize()
    assert code == 0, first
    assert first["users_written"] == {LONG_TERM_VIEW: 3, SHORT_TERM_VIEW: 6}
    encode(ledger, repo, USERS[3:])  # three more users, encoded after the first sync
    mark = sync.synced_mark(ledger, repo.project, LONG_TERM_VIEW)

    own.stop()
    for _ in range(2):  # the scheduled run fails twice while Redis is down
        code, err = materialize()
        assert code == 2 and err.startswith("error: ") and "ConnectionError" in err
    assert sync.synced_mark(ledger, repo.project, LONG_TERM_VIEW) == mark  # not advanced
    time.sleep(1)  # the next scheduled run comes later: no window can cover what is pending
    own.start()

    code, summary = materialize()
    assert code == 0, summary
    assert summary["users_written"] == {LONG_TERM_VIEW: 3, SHORT_TERM_VIEW: 0}
    assert_online_equals_offline(store, ledger)
    code, again = materialize()
    assert again["users_written"] == {LONG_TERM_VIEW: 0, SHORT_TERM_VIEW: 0}


def test_redis_killed_in_the_middle_of_a_materialize_then_the_next_one_writes_every_pending_user(setup,
                                                                                                 monkeypatch):
    own, repo, ledger, store = setup
    monkeypatch.setattr(sync, "SYNC_OVERLAP", timedelta(0))  # count exactly what was pending
    monkeypatch.setattr(online_writer, "_BATCH", 1)  # one user per pipeline: a write of 3 takes 6
    assert materialize()[0] == 0
    encode(ledger, repo, USERS[3:])  # three more users, pending
    mark = sync.synced_mark(ledger, repo.project, LONG_TERM_VIEW)

    calls = kill_mid_write(monkeypatch, own, before=4)  # u3 read + written, u4 read, then the kill
    code, err = materialize()
    assert code == 2 and err.startswith("error: writing user_long_term_memory failed: ConnectionError")
    assert calls[0] >= 4 and sync.synced_mark(ledger, repo.project, LONG_TERM_VIEW) == mark  # not advanced
    own.start()  # back with what the write had done: u3 new, u4 and u5 not there
    assert online(store)[f"{LONG_TERM_VIEW}__partition_count"] == [3, 3, 3, 3, None, None]

    code, summary = materialize()
    assert code == 0, summary
    assert summary["users_written"] == {LONG_TERM_VIEW: 3, SHORT_TERM_VIEW: 0}  # u3 again, u4, u5
    assert sync.synced_mark(ledger, repo.project, LONG_TERM_VIEW) > mark
    assert_online_equals_offline(store, ledger)


def test_redis_killed_in_the_middle_of_a_flush_keeps_every_user_pending_for_the_next(setup, monkeypatch):
    own, repo, ledger, store = setup
    monkeypatch.setattr(online_writer, "_BATCH", 1)
    said: list[str] = []
    f = Flusher(lambda df: push_short_term_cache(store, df), interval_s=0.0, say=said.append)
    states = {u: UserState(u, cache=[CachedEvent(9_000_000 + i * 10 + j, f"{u}n{j}", f"m{i}{j}") for j in range(i + 1)])
              for i, u in enumerate(USERS[:3])}
    f.add(list(states.values()))

    kill_mid_write(monkeypatch, own, before=4)  # u0 read + written, u1 read, then the kill
    assert f.flush() == 0 and f.failures == 1 and sorted(f.pending) == USERS[:3]
    assert len(said) == 1 and said[0].startswith("warning: online write failed, 3 user(s) kept for the next flush")
    own.start()
    assert cached_items(store) == [["m00"], None, None]

    assert f.flush() == 3 and f.pending == {} and f.users_written == 3
    assert cached_items(store) == [["m00"], ["m10", "m11"], ["m20", "m21", "m22"]]


def cached_items(store) -> list:
    return store.get_online_features(features=[f"{SHORT_TERM_VIEW}:cache_item_ids"],
                                     entity_rows=[{"user_id": u} for u in USERS[:3]]).to_dict()["cache_item_ids"]


def test_rebuild_restores_every_user_after_redis_is_wiped(setup, monkeypatch):
    own, repo, ledger, store = setup
    monkeypatch.setattr(sync, "SYNC_OVERLAP", timedelta(0))  # rows older than the recheck window
    encode(ledger, repo, USERS[3:])
    assert materialize()[0] == 0
    before = online(store)
    assert before[f"{LONG_TERM_VIEW}__partition_count"] == [3] * 6

    own.client().flushall()  # Redis lost its data; the ledger still says it is all online
    assert online(store)[f"{LONG_TERM_VIEW}__partition_count"] == [None] * 6
    # A plain run cannot know: nothing was created since the last successful write.
    assert materialize()[1]["users_written"] == {LONG_TERM_VIEW: 0, SHORT_TERM_VIEW: 0}

    code, summary = materialize("--rebuild")
    assert code == 0, summary
    assert summary["users_written"] == {LONG_TERM_VIEW: 6, SHORT_TERM_VIEW: 6} and summary["rebuild"]
    after = online(store)
    for name, values in before.items():
        if name.endswith("vectors"):
            assert [np.asarray(v, np.float32).tobytes() for v in values] == [
                np.asarray(v, np.float32).tobytes() for v in after[name]]
        else:
            assert after[name] == values, name
    assert_online_equals_offline(store, ledger)


def test_half_the_users_reencoded_under_a_new_llm_keep_every_user_offline_and_online(setup):
    own, repo, ledger, store = setup
    encode(ledger, repo, USERS[3:])
    assert materialize()[0] == 0
    pv = prompt_version(EncodeConfig().prompts)
    old, new = (encoder_version(pv, llm, HashEncoder().encoder_id) for llm in ("fake:counting@1", "fake:other@2"))

    # Mid-migration: u0 has only its first partition under the new LLM: it keeps the old version.
    encode(ledger, repo, ["u0"], llm_id="fake:other@2", limit=1)
    table = encode(ledger, repo, USERS[:3], llm_id="fake:other@2")  # u0..u2 complete, u3..u5 not yet
    df = table.to_pandas()
    assert len(df) == 18 and sorted(df.user_id.unique()) == USERS  # every user, every partition once
    assert dict(df.groupby("user_id").encoder_version.unique().map(list)) == {
        u: [new if u in USERS[:3] else old] for u in USERS}

    code, summary = materialize()
    assert code == 0 and summary["users_written"][LONG_TERM_VIEW] >= 3
    got = online(store)
    assert got[f"{LONG_TERM_VIEW}__encoder_version"] == [new] * 3 + [old] * 3
    assert got[f"{LONG_TERM_VIEW}__partition_count"] == [3] * 6
    assert_online_equals_offline(store, ledger)
    on_disk = pq.read_table(repo.root / LONG_PATH)
    assert on_disk.num_rows == 18


def test_feast_materialize_never_replaces_a_newer_row(tmp_path, monkeypatch):
    """The production yaml: Feast's own materialize-incremental after liber wrote newer rows."""
    repo = Repo(tmp_path, "redis")
    redis_client()
    for name in ("LIBER_DATA_DIR", "LIBER_MEMORY_SLOTS", "LIBER_VECTOR_DIM", "LIBER_REDIS_CONNECTION"):
        monkeypatch.delenv(name, raising=False)
    now = datetime.now(UTC).replace(microsecond=0)
    users = ["a", "b"]
    repo.write(sample_long_term(users, now - timedelta(days=30)), sample_short_term(users, now - timedelta(days=2)))
    try:
        store = repo.apply()
        newer = sample_long_term(users, now - timedelta(days=1), partition_count=4, encoder_version="v2", seed=5)
        assert write_online(store, LONG_TERM_VIEW, newer) == 2
        assert push_short_term_cache(store, sample_short_term(users, now - timedelta(hours=1), items=7)) == 2
        store.materialize_incremental(end_date=now)  # offline holds only the older rows
        got = store.get_online_features(
            features=[f"{LONG_TERM_VIEW}:encoder_version", f"{LONG_TERM_VIEW}:summary_vectors",
                      f"{SHORT_TERM_VIEW}:cache_length"], entity_rows=[{"user_id": u} for u in users]).to_dict()
        assert got["encoder_version"] == ["v2", "v2"] and got["cache_length"] == [7, 7]
        for i in range(2):
            assert np.array_equal(np.asarray(got["summary_vectors"][i], np.float32), newer.summary_vectors[i])
    finally:
        cleanup(repo)
