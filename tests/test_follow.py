"""``liber encode --follow``: sealed partitions reach the online store one batch after their seal,
without ``liber materialize``; the worker stops cleanly (after the batch in flight) on a signal.

The worker runs with the fake LLM and text encoder (``liber_features.testing``); the online store is
the test's own ``redis-server``, the Feast registry the real PostgreSQL, the ledger SQLite. What is
read back goes through Feast's ``get_online_features`` and must equal the offline table bit for bit.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from feastrepo import DATA, Repo, redis_client
from sqlalchemy import select
from test_recovery import OwnRedis, kill_mid_write
from tinymodels import tiny_bert_dir  # noqa: F401

from liber_features.features import online as online_writer
from liber_features.features import sync
from liber_features.features.memory import latest_versions, memory_table, to_frame
from liber_features.features.repo import LONG_TERM_VIEW
from liber_features.ingest.events import LoadedEvents
from liber_features.ingest.job import ingest
from liber_features.ingest.partition import PartitionRule
from liber_features.ledger.store import Ledger, runs
from liber_features.testing import CountingLLM, FakeOpenAIServer, HashEncoder, event_log
from liber_features.uil.backlog import encode_backlog
from liber_features.uil.follow import FollowConfig, follow_encode
from liber_features.uil.interest import EncodeConfig, InProcess, prompt_version

pytestmark = [pytest.mark.redis, pytest.mark.postgres]
USERS = ["u0", "u1", "u2"]
D = 32  # the tiny BERT's width: the CLI test encodes with it, the others with HashEncoder(dim=D)
FEATURES = ["summary_vectors", "shift_vectors", "partition_count", "latest_summary", "encoder_version"]


def phase(log: LoadedEvents, lo: int, hi: int) -> LoadedEvents:
    """Each user's events ``lo..hi-1`` (event ids are ``u<u>e<i>``) as a log of their own."""
    i = log.events["event_id"].str.split("e").str[-1].astype(int)
    df = log.events[(i >= lo) & (i < hi)].reset_index(drop=True)
    return LoadedEvents(log.source, log.layout, df, log.catalog, log.quarantine, len(df), 0)


@pytest.fixture
def world(tmp_path, monkeypatch):
    """A private Redis, a Redis-backed repo applied before any table exists, an empty SQLite ledger."""
    redis_client()  # the suite's services (PostgreSQL registry) must be up anyway
    own = OwnRedis(tmp_path)
    own.start()
    repo = Repo(tmp_path, "redis")
    ledger_url = f"sqlite:///{tmp_path / 'ledger.db'}"
    env = {**repo.env, "LIBER_REDIS_URL": own.url, "LIBER_MEMORY_SLOTS": "2", "LIBER_VECTOR_DIM": str(D),
           "LIBER_LEDGER_URL": ledger_url, "LIBER_DATA_DIR": DATA}
    for name in ("LIBER_REDIS_CONNECTION", "LIBER_LEDGER_SCHEMA"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    repo.env = env
    store = repo.apply()
    try:
        yield own, repo, Ledger(ledger_url), store
    finally:
        if own.proc and own.proc.poll() is None:
            own.proc.kill()
            own.proc.wait()
        repo.store().registry.delete_project(repo.project)


def online(store) -> dict:
    return store.get_online_features(features=[f"{LONG_TERM_VIEW}:{f}" for f in FEATURES],
                                     entity_rows=[{"user_id": u} for u in USERS], full_feature_names=True).to_dict()


def assert_online_is_the_table(store, ledger) -> None:
    """Every user's online long-term row is the offline table's newest row for them, bit for bit."""
    table = to_frame(memory_table(ledger, memory_slots=2, vector_dim=D)).groupby("user_id").last()
    got = online(store)
    for i, u in enumerate(USERS):
        for f in FEATURES:
            a, e = got[f"{LONG_TERM_VIEW}__{f}"][i], table.loc[u, f]
            if f.endswith("vectors"):
                assert np.asarray(a, np.float32).tobytes() == np.asarray(e, np.float32).tobytes(), (u, f)
            else:
                assert a == e, (u, f, a, e)


def encode_runs(ledger) -> list[tuple[str, dict]]:
    with ledger.engine.connect() as conn:
        return [(r.status, json.loads(r.params)) for r in conn.execute(
            select(runs.c.status, runs.c.params).where(runs.c.kind == "encode"))]


def test_until_idle_puts_every_sealed_partition_online_without_materialize(world):
    own, repo, ledger, store = world
    ingest(phase(event_log(3, 8), 0, 4), ledger, PartitionRule(k=2), progress=False)  # 2 partitions each
    llm, enc, cfg = CountingLLM(), HashEncoder(dim=D), EncodeConfig(batch_size=2)
    committed: list[int] = []
    published: list[dict] = []

    def publish(users: list[str]) -> int:  # what is online right after each batch, before any sync
        n = sync.write_users_online(store, ledger, users)
        published.append(dict(zip(USERS, online(store)[f"{LONG_TERM_VIEW}__partition_count"])))
        return n

    s, rep = follow_encode(ledger, InProcess(llm, enc, cfg), llm, enc, cfg, FollowConfig(until_idle=True),
                           publish=publish, sync=lambda: sync.sync_long_term(store, ledger),
                           on_commit=lambda parts: committed.append(len(parts)))
    assert (s.partitions_done, s.llm_calls, s.failed) == (6, 9, 0)  # 3 × (1 summary + 1 summary and 1 shift)
    assert llm.calls == 9 and committed == [2, 2, 2]  # u0/u1 0, then u2 0 + u0 1 (its wave is ready), then u1/u2 1
    assert published == [{"u0": 1, "u1": 1, "u2": None}, {"u0": 2, "u1": 1, "u2": 1}, {"u0": 2, "u1": 2, "u2": 2}]
    # Each batch's users written at once; the table and the sync state once, when idle.
    assert (rep.passes, rep.users_published, rep.syncs, rep.write_failures, rep.ended) == (1, 6, 1, 0, "idle")
    assert online(store)[f"{LONG_TERM_VIEW}__partition_count"] == [2, 2, 2]
    assert_online_is_the_table(store, ledger)
    [(status, params)] = encode_runs(ledger)
    assert status == "ok" and params["follow"] == {"poll_s": 1.0, "until_idle": True, "max_seconds": None,
                                                   "sync_every_s": 60.0}
    assert sync.synced_mark(ledger, repo.project, LONG_TERM_VIEW) == max(
        memory_table(ledger, memory_slots=2, vector_dim=D)["created_at"].cast("int64").to_pylist())
    assert encode_backlog(ledger).partitions == 0


def test_partitions_sealed_while_following_are_online_one_batch_later(world):
    own, repo, ledger, store = world
    log = event_log(3, 8)
    ingest(phase(log, 0, 4), ledger, PartitionRule(k=2), progress=False)
    llm, stop, out = CountingLLM(), threading.Event(), {}
    cfg = EncodeConfig(batch_size=8)

    def worker() -> None:
        out["result"] = follow_encode(ledger, InProcess(llm, HashEncoder(dim=D), cfg), llm, HashEncoder(dim=D), cfg,
                                      FollowConfig(poll_s=0.05, max_seconds=120), stop=stop.is_set,
                                      publish=lambda users: sync.write_users_online(store, ledger, users),
                                      sync=lambda: sync.sync_long_term(store, ledger))

    thread = threading.Thread(target=worker)
    thread.start()
    try:
        wait_for(lambda: online(store)[f"{LONG_TERM_VIEW}__partition_count"] == [2, 2, 2])
        # A worker that is still running is what the ledger encodes now (training, the report).
        assert latest_versions(ledger) == (prompt_version(cfg.prompts), llm.llm_id, HashEncoder(dim=D).encoder_id)
        ingest(phase(log, 4, 8), Ledger(ledger.url), PartitionRule(k=2), progress=False)  # 2 more each
        wait_for(lambda: online(store)[f"{LONG_TERM_VIEW}__partition_count"] == [4, 4, 4])
    finally:
        stop.set()
        thread.join(timeout=60)
    s, rep = out["result"]
    # Partitions 0 and 1, then 2 and 3 of each user: 1 + 2 + 2 + 2 calls each, none twice.
    assert (s.partitions_done, s.llm_calls, llm.calls) == (12, 21, 21)
    # 4 waves (partitions 0, 1, 2, 3) of 3 users, each written online right after its batch.
    assert (rep.passes, rep.users_published, rep.write_failures, rep.ended) == (2, 12, 0, "stopped")
    assert_online_is_the_table(store, ledger)
    assert [status for status, _ in encode_runs(ledger)] == ["ok"]  # one run for the worker's whole life


def test_redis_killed_in_the_middle_of_a_sync_the_worker_goes_on_and_a_later_sync_writes_every_user(
        world, monkeypatch):
    own, repo, ledger, store = world
    ingest(phase(event_log(3, 8), 0, 4), ledger, PartitionRule(k=2), progress=False)
    monkeypatch.setattr(online_writer, "_BATCH", 1)  # one user per pipeline: a sync of 3 runs 6
    kill_mid_write(monkeypatch, own, before=4)  # batch 1's write: u0 read + written, u1 read, then the kill
    llm, stop, out, warned = CountingLLM(), threading.Event(), {}, []
    cfg = EncodeConfig(batch_size=8)

    def warn(line: str) -> None:  # what the sync state said while the store was down
        warned.append((line, sync.synced_mark(ledger, repo.project, LONG_TERM_VIEW)))

    def worker() -> None:
        out["result"] = follow_encode(ledger, InProcess(llm, HashEncoder(dim=D), cfg), llm, HashEncoder(dim=D), cfg,
                                      FollowConfig(poll_s=0.05, max_seconds=120), stop=stop.is_set,
                                      publish=lambda users: sync.write_users_online(store, ledger, users),
                                      sync=lambda: sync.sync_long_term(store, ledger), say=warn)

    thread = threading.Thread(target=worker)
    thread.start()
    try:
        wait_for(lambda: len(warned) >= 2)  # after batch 1 (the kill), then after batch 2 or at a poll
        own.start()  # back with what the write had done: u0 after batch 1
        wait_for(lambda: online(store)[f"{LONG_TERM_VIEW}__partition_count"] == [2, 2, 2])
    finally:
        stop.set()
        thread.join(timeout=60)
    s, rep = out["result"]
    assert (s.partitions_done, s.llm_calls, rep.ended) == (6, 9, "stopped")  # the worker never stopped
    assert warned[0][0].startswith("warning: online write failed, retried at the next poll: "
                                   "writing user_long_term_memory failed: ConnectionError")
    assert {mark for _, mark in warned} == {None}  # nothing was ever recorded as online while it failed
    assert rep.write_failures == len(warned) and rep.syncs >= 1
    assert_online_is_the_table(store, ledger)
    table = memory_table(ledger, memory_slots=2, vector_dim=D)
    assert sync.synced_mark(ledger, repo.project, LONG_TERM_VIEW) == max(table["created_at"].cast("int64").to_pylist())


def wait_for(condition, timeout_s: float = 60) -> None:
    until = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < until, "timed out"
        time.sleep(0.05)


def test_cli_follow_stops_after_the_batch_in_flight_on_sigterm(world, tmp_path, tiny_bert_dir):  # noqa: F811
    own, repo, ledger, store = world
    log = event_log(3, 8)
    ingest(phase(log, 0, 8), ledger, PartitionRule(k=2), progress=False)  # 4 partitions each: 12
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root)}
    # A batch of 3 summaries takes ~0.3 s (4 in flight). A short answer: the default echo of the
    # whole prompt can outgrow the tiny BERT's 128 positions (seen once in 8 runs: a failed batch).
    with FakeOpenAIServer(delay_s=0.3, reply=lambda user: ("Likes drama.", 9)) as server:
        proc = subprocess.Popen(
            [sys.executable, "-c", "from liber_features.cli.main import main; main()", "encode", "--follow",
             "--llm", f"openai:{server.url}#tiny", "--text-encoder", str(tiny_bert_dir), "--repo", str(repo.root),
             "--batch-size", "3", "--poll", "0.1", "--json"],
            env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wait_for(lambda: server.seen >= 1)  # the first batch is being generated
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr + stdout
    summary = json.loads(stdout.strip().splitlines()[-1])
    assert summary["follow_ended"] == "stopped" and "SIGTERM: stopping after the batch in flight" in stderr
    # The batch in flight (3 partitions 0: 3 calls) committed, and nothing after it was claimed.
    assert (summary["partitions_done"], summary["llm_calls"], server.seen) == (3, 3, 3)
    assert [status for status, _ in encode_runs(ledger)] == ["ok"]
    assert online(store)[f"{LONG_TERM_VIEW}__partition_count"] == [1, 1, 1]
    assert encode_backlog(ledger).partitions == 9


@pytest.mark.parametrize("args, message", [
    (["--until-idle"], "--until-idle and --max-seconds go with --follow"),
    (["--max-seconds", "5"], "--until-idle and --max-seconds go with --follow"),
    (["--follow", "--ray"], "--follow encodes in this process, without --ray or --limit"),
    (["--follow", "--limit", "3"], "--follow encodes in this process, without --ray or --limit"),
])
def test_cli_follow_options_that_do_not_go_together(tmp_path, args, message):
    from click.testing import CliRunner

    from liber_features.cli.main import cli

    r = CliRunner().invoke(cli, ["encode", "--ledger", f"sqlite:///{tmp_path / 'l.db'}", *args])
    assert r.exit_code == 2 and r.stderr.splitlines()[-1] == f"Error: {message}"
    assert not (tmp_path / "l.db").exists()  # refused before the ledger is opened
