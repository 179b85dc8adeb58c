"""Several encoder processes on one ledger (real PostgreSQL and SQLite), a worker SIGKILLed while
holding a lease: every partition is generated once (plus at most the killed worker's batch), one
interest and one vector row each, no orphans, every surviving process exits 0.

Workers are real processes (tests/encode_worker.py) driving the deterministic counting LLM of
liber_features.testing, which appends each call to a shared file.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from sqlalchemy import func, select

from liber_features.ingest.events import LoadedEvents
from liber_features.ingest.job import ingest
from liber_features.ingest.partition import PartitionRule
from liber_features.ledger.store import claims, interests, partitions, runs, vectors
from liber_features.testing import event_log

pytestmark = pytest.mark.slow  # worker processes, each importing the package: seconds apiece
ROOT = Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "encode_worker.py"
USERS, PER_USER, K = 8, 7, 2  # 3 sealed partitions per user (one event stays cached)
PARTS = USERS * (PER_USER // K)
NEEDED = PARTS + USERS * (PER_USER // K - 1)  # a summary each + a shift after partition 0


def events(users=USERS, per_user=PER_USER) -> LoadedEvents:
    return event_log(users, per_user)


def spawn(ledger, calls: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    args = [sys.executable, str(WORKER), ledger.url, str(calls)]
    if ledger.schema:
        args += ["--schema", ledger.schema]
    return subprocess.Popen(args + list(extra), env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def finish(procs: list[subprocess.Popen]) -> list[dict]:
    out = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=120)
        assert p.returncode == 0, stderr[-3000:]
        out.append(json.loads(stdout.strip().splitlines()[-1]))
    return out


def call_lines(calls: Path) -> list[list[str]]:
    return [line.split() for line in calls.read_text().splitlines()] if calls.exists() else []


def assert_exactly_once(ledger) -> None:
    """One done interest and one vector per partition, nothing orphaned, every claim done."""
    with ledger.engine.connect() as conn:
        one = lambda q: conn.execute(q).scalar()  # noqa: E731
        assert one(select(func.count()).select_from(partitions)) == PARTS
        assert one(select(func.count()).select_from(interests).where(interests.c.status == "done")) == PARTS
        assert one(select(func.count()).select_from(interests)) == PARTS
        assert one(select(func.count(func.distinct(interests.c.partition_id)))) == PARTS
        assert one(select(func.count()).select_from(vectors)) == PARTS
        orphans = select(func.count()).select_from(
            vectors.outerjoin(interests, interests.c.id == vectors.c.interest_id)).where(interests.c.id.is_(None))
        assert one(orphans) == 0
        no_vector = select(func.count()).select_from(
            interests.outerjoin(vectors, vectors.c.interest_id == interests.c.id)).where(vectors.c.id.is_(None))
        assert one(no_vector) == 0
        assert dict(conn.execute(select(claims.c.status, func.count()).group_by(claims.c.status)).all()) == {
            "done": PARTS}


def done_count(ledger) -> int:
    with ledger.engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(interests).where(
            interests.c.status == "done")).scalar()


def test_sigterm_ends_the_run_as_failed_keeping_committed_batches(ledger, tmp_path):
    ingest(events(), ledger, PartitionRule(k=K), progress=False)
    calls = tmp_path / "calls.txt"
    # 0.1 s a call, 40 calls: it is stopped a few batches in, long before it could finish.
    worker = spawn(ledger, calls, "--delay", "0.1", "--batch-size", "3")
    deadline = time.time() + 60
    while done_count(ledger) == 0 and time.time() < deadline:
        assert worker.poll() is None, worker.communicate()[1][-2000:]
        time.sleep(0.05)
    worker.terminate()
    try:
        worker.wait(timeout=30)
    except subprocess.TimeoutExpired:  # hung: show where (encode_worker dumps its threads on SIGUSR1)
        worker.send_signal(signal.SIGUSR1)
        time.sleep(1)
        worker.kill()
        pytest.fail("the worker ignored SIGTERM for 30 s:\n" + worker.communicate()[1][-6000:])
    assert worker.returncode == 143
    kept = done_count(ledger)
    assert kept % 3 == 0 and 3 <= kept < PARTS  # whole batches of 3, none of them lost
    with ledger.engine.connect() as conn:
        assert conn.execute(select(runs.c.status).where(runs.c.kind == "encode")).scalar_one() == "failed"
        assert dict(conn.execute(select(claims.c.status, func.count()).group_by(claims.c.status)).all()) == {
            "done": kept}  # what it held in flight was given back, not left to expire
    rerun = spawn(ledger, calls)
    (s,) = finish([rerun])
    assert s["partitions_done"] == PARTS - kept and s["skipped_already_done"] == kept
    assert_exactly_once(ledger)


@pytest.mark.parametrize("workers", [2, 4])
def test_concurrent_workers_generate_each_partition_once(ledger, tmp_path, workers):
    ingest(events(), ledger, PartitionRule(k=K), progress=False)
    calls, table = tmp_path / "calls.txt", tmp_path / "long_term.parquet"
    start = f"{time.time() + 4:.3f}"  # every process past its imports, then all at once
    procs = [spawn(ledger, calls, "--start-at", start, "--table", str(table), "--delay", "0.01")
             for _ in range(workers)]
    summaries = finish(procs)

    lines = call_lines(calls)
    assert len(lines) == NEEDED  # not one LLM call more than necessary
    assert len({tuple(x[1:]) for x in lines}) == NEEDED  # and no prompt answered twice
    assert sum(s["partitions_done"] for s in summaries) == PARTS
    assert sum(s["llm_calls"] for s in summaries) == NEEDED
    assert sum(s["rejected_commits"] for s in summaries) == 0
    assert_exactly_once(ledger)
    written = pq.read_table(table)
    assert written.num_rows == PARTS and len(set(written.column("user_id").to_pylist())) == USERS
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_killed_worker_lease_is_taken_over(ledger, tmp_path):
    ingest(events(), ledger, PartitionRule(k=K), progress=False)
    calls = tmp_path / "calls.txt"
    victim = spawn(ledger, calls, "--lease", "1.5", "--delay", "0.3", "--batch-size", "3")
    deadline = time.time() + 60
    while not call_lines(calls) and time.time() < deadline:
        time.sleep(0.05)
    assert call_lines(calls), victim.communicate()[1][-2000:]
    victim.send_signal(signal.SIGKILL)  # mid-batch, holding a lease, no chance to clean up
    victim.wait(timeout=10)
    with ledger.engine.connect() as conn:
        held = conn.execute(select(func.count()).select_from(claims).where(claims.c.status == "held")).scalar()
    assert held == 3  # its batch is still claimed: nobody else may generate it until expiry

    survivors = [spawn(ledger, calls, "--lease", "1.5", "--delay", "0.01") for _ in range(2)]
    summaries = finish(survivors)

    lines = call_lines(calls)
    wasted = [x for x in lines if int(x[0]) == victim.pid]
    assert len(wasted) in (1, 2, 3)  # killed during its first batch: 3 summaries, no shift yet
    assert len(lines) == NEEDED + len(wasted)  # only the killed worker's batch is paid twice
    assert sum(s["partitions_done"] for s in summaries) == PARTS
    assert_exactly_once(ledger)
    with ledger.engine.connect() as conn:
        assert conn.execute(select(func.sum(claims.c.takeovers))).scalar() == 3
        hb = conn.execute(select(runs).where(runs.c.worker.endswith(f":{victim.pid}"))).one()
    # The ledger knows the calls were made (counted before generating) and never committed.
    assert (hb.llm_calls, hb.llm_calls_committed, hb.partitions_done) == (3, 0, 0)
