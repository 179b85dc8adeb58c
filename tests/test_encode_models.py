"""The encoder job with the real SmolLM2-135M-Instruct and all-MiniLM-L6-v2 (no fakes).

Users 5, 8, 9, 14, 44 of ml-latest-small have two partitions each at K=20, so every run
exercises both a first partition and a real cascaded shift.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from conftest import REPO, ml_latest_small
from sqlalchemy import func, select

from liber_features.cli.main import cli
from liber_features.ingest.events import load_events
from liber_features.ingest.job import ingest
from liber_features.ingest.partition import PartitionRule
from liber_features.ledger.store import Ledger, interests, partitions, vectors
from liber_features.uil.prompts import FIRST_SHIFT

pytestmark = [pytest.mark.models, pytest.mark.slow]
USERS = ["5", "8", "9", "14", "44"]


@pytest.fixture(scope="module")
def movielens():
    return load_events(ml_latest_small())


def fresh_ledger(path, movielens) -> str:
    url = f"sqlite:///{path}"
    ingest(movielens, Ledger(url), PartitionRule(k=20), progress=False)
    return url


def done_per_partition(url: str) -> dict[int, int]:
    with Ledger(url).engine.connect() as conn:
        rows = conn.execute(
            select(partitions.c.id, func.count(interests.c.id))
            .select_from(partitions.outerjoin(interests, (interests.c.partition_id == partitions.c.id)
                                              & (interests.c.status == "done")))
            .where(partitions.c.user_id.in_(USERS)).group_by(partitions.c.id)).all()
    return dict(rows)


def test_real_models_store_texts_vectors_and_rerun_makes_no_llm_calls(tmp_path, movielens):
    # Summaries are read from stdout: on a machine's first use of SmolLM2 the GGUF conversion draws
    # transformers' progress bar on stderr, which CliRunner's .output interleaves with the JSON.
    url = fresh_ledger(tmp_path / "l.db", movielens)
    args = ["encode", "--ledger", url, "--users", "5,8,9", "--max-new-tokens", "24",
            "--repo", str(tmp_path / "repo"), "--json"]
    first = CliRunner().invoke(cli, args)
    assert first.exit_code == 0, first.output
    s = json.loads(first.stdout.strip().splitlines()[-1])
    assert (s["partitions_done"], s["llm_calls"], s["failed"]) == (6, 9, 0)
    with Ledger(url).engine.connect() as conn:
        rows = conn.execute(select(partitions.c.seq, interests.c.summary, interests.c.shift,
                                   vectors.c.dim, vectors.c.summary_vec)
                            .select_from(partitions.join(interests, interests.c.partition_id == partitions.c.id)
                                         .join(vectors, vectors.c.interest_id == interests.c.id))).all()
    assert len(rows) == 6
    for seq, summary, shift, dim, blob in rows:
        assert summary.strip() and shift.strip() and dim == 384
        v = np.frombuffer(blob, dtype=np.float32)
        assert v.shape == (384,) and abs(float(np.linalg.norm(v)) - 1) < 1e-4
        assert (shift == FIRST_SHIFT) == (seq == 0)
    table = pq.read_table(s["table"])
    assert table.num_rows == 6 and len(table["summary_vectors"][0]) == 8 * 384
    second = CliRunner().invoke(cli, args)
    assert second.exit_code == 0, second.output
    s2 = json.loads(second.stdout.strip().splitlines()[-1])
    assert (s2["llm_calls"], s2["partitions_done"], s2["skipped_already_done"]) == (0, 0, 6)


def test_sigterm_ends_the_run_as_failed_keeping_committed_batches(tmp_path, movielens):
    from liber_features.ledger.store import runs

    url = fresh_ledger(tmp_path / "term.db", movielens)
    cmd = [sys.executable, "-m", "liber_features.cli.main", "encode", "--ledger", url,
           "--users", ",".join(USERS), "--batch-size", "2", "--max-new-tokens", "8", "--no-table"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while sum(done_per_partition(url).values()) < 2:
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.2)
    proc.terminate()
    assert proc.wait(timeout=60) == 143
    with Ledger(url).engine.connect() as conn:
        status = conn.execute(select(runs.c.status).where(runs.c.kind == "encode")).scalar_one()
    assert status == "failed" and sum(done_per_partition(url).values()) >= 2


def test_sigkill_mid_run_then_rerun_loses_nothing_and_redoes_at_most_one_batch(tmp_path, movielens):
    url = fresh_ledger(tmp_path / "kill.db", movielens)
    # The rerun waits for the killed run's lease on its in-flight batch to expire: 20 s, not the
    # default 300 (this test took 327 s of CI's 20 minutes with it).
    cmd = [sys.executable, "-m", "liber_features.cli.main", "encode", "--ledger", url,
           "--users", ",".join(USERS), "--batch-size", "2", "--max-new-tokens", "16",
           "--no-table", "--json", "--lease", "20"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    while sum(done_per_partition(url).values()) < 2:  # at least one batch committed
        assert proc.poll() is None, proc.stdout.read().decode()[-2000:]
        assert time.monotonic() < deadline, "first batch never committed"
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with Ledger(url).engine.connect() as conn:
        committed = conn.execute(select(partitions.c.seq).select_from(
            partitions.join(interests, interests.c.partition_id == partitions.c.id))
            .where(interests.c.status == "done")).scalars().all()
    assert 2 <= len(committed) < 10
    calls_committed = sum(1 if seq == 0 else 2 for seq in committed)

    rerun = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    s = json.loads(rerun.stdout.strip().splitlines()[-1])
    assert done_per_partition(url) == {pid: 1 for pid in done_per_partition(url)}
    assert len(done_per_partition(url)) == 10
    # Every partition needs 1 call (first) or 2 (summary + shift): 5 + 10 = 15 in all. The rerun
    # makes exactly the calls the killed run had not committed: nothing committed is redone,
    # and the killed run lost at most the one batch (≤ 4 calls) it had in flight.
    assert s["llm_calls"] == 15 - calls_committed
    assert s["skipped_already_done"] == len(committed) and s["failed"] == 0


def test_encode_on_ray_with_real_models_then_one_process_continues(tmp_path, movielens):
    """`liber encode --ray` starts a local Ray whose actor loads both models; a plain `liber
    encode` then finds that work done under the same keys and generates only the rest."""
    url = fresh_ledger(tmp_path / "l.db", movielens)
    common = ["encode", "--ledger", url, "--max-new-tokens", "16", "--no-table", "--json"]
    on_ray = CliRunner().invoke(cli, [*common, "--users", "5,8", "--ray", "--actors", "1"])
    assert on_ray.exit_code == 0, on_ray.output
    s = json.loads(on_ray.stdout.strip().splitlines()[-1])
    assert (s["partitions_done"], s["llm_calls"], s["failed"]) == (4, 6, 0)
    assert (s["ray_address"], s["actors"], s["actor_deaths"]) == ("local", 1, 0)
    with Ledger(url).engine.connect() as conn:
        dims = conn.execute(select(vectors.c.dim)).scalars().all()
    assert dims == [384] * 4
    rest = CliRunner().invoke(cli, [*common, "--users", "5,8,9"])
    assert rest.exit_code == 0, rest.output
    s2 = json.loads(rest.stdout.strip().splitlines()[-1])
    assert (s2["skipped_already_done"], s2["partitions_done"], s2["llm_calls"]) == (4, 2, 3)
    assert s2["llm_id"] == s["llm_id"]
