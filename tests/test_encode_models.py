"""The encoder job end to end with the real SmolLM2-135M-Instruct and all-MiniLM-L6-v2 (no fakes).

One test, through ``liber encode``: what the fakes cannot show is that real models produce texts
and unit vectors the ledger and the memory table take, and that a rerun then makes no LLM call.
Signals, leases and Ray are the same code whatever the backend: their tests drive the fake LLM
(test_concurrency.py, test_ray_encode.py). Users 5, 8, 9 of ml-latest-small have two partitions
each at K=20, so the run exercises both a first partition and a real cascaded shift.
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from conftest import ml_latest_small
from sqlalchemy import select

from liber_features.cli.main import cli
from liber_features.ingest.events import load_events
from liber_features.ingest.job import ingest
from liber_features.ingest.partition import PartitionRule
from liber_features.ledger.store import Ledger, interests, partitions, vectors
from liber_features.uil.prompts import FIRST_SHIFT

pytestmark = [pytest.mark.models, pytest.mark.slow]


@pytest.fixture(scope="module")
def movielens():
    return load_events(ml_latest_small())


def fresh_ledger(path, movielens) -> str:
    url = f"sqlite:///{path}"
    ingest(movielens, Ledger(url), PartitionRule(k=20), progress=False)
    return url


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
    # Only filled slots: each row holds min(partition_count, M = 8) real 384-d vectors, no padding.
    counts = table["partition_count"].to_pylist()
    assert table.num_rows == 6 and [len(v) for v in table["summary_vectors"].to_pylist()] == [
        min(c, 8) * 384 for c in counts] and max(counts) >= 2
    second = CliRunner().invoke(cli, args)
    assert second.exit_code == 0, second.output
    s2 = json.loads(second.stdout.strip().splitlines()[-1])
    assert (s2["llm_calls"], s2["partitions_done"], s2["skipped_already_done"]) == (0, 0, 6)
