"""Derived files are replaced whole or not at all, and concurrent appenders never lose rows."""

from __future__ import annotations

import multiprocessing
from datetime import UTC, datetime

import pyarrow.parquet as pq
import pytest

from liber_features.features.caches import append_cache_history
from liber_features.features.files import atomic_write, lock_path
from liber_features.features.repo import SHORT_TERM_SCHEMA, sample_short_term

T0 = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)


def test_atomic_write_replaces_the_file_whole(tmp_path):
    target = tmp_path / "sub" / "table.bin"
    with atomic_write(target) as f:
        f.write(b"first")
    with atomic_write(target) as f:
        f.write(b"second")
        assert target.read_bytes() == b"first"  # readers see the old file until the rename
    assert target.read_bytes() == b"second"
    assert sorted(p.name for p in target.parent.iterdir()) == ["table.bin"]  # no temp file left


def test_a_failed_write_leaves_the_old_file_and_no_temp_file(tmp_path):
    target = tmp_path / "table.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_write(target) as f:
            f.write(b"half of the new")
            raise RuntimeError("disk full")
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["table.bin"]


def _append_rows(path: str, name: str, n: int, barrier) -> None:
    """One ingest's worth of appends: ``n`` single-row appends, started together with the other."""
    barrier.wait()
    for i in range(n):
        append_cache_history(sample_short_term([f"{name}-{i}"], T0, items=1), path)


def test_two_processes_appending_at_once_keep_every_row(tmp_path):
    """Two ingests append to the same short-term history: the read-modify-write is locked, so the
    second rename never drops the first one's rows (without the lock, rows go missing here)."""
    path = tmp_path / "data" / "user_short_term_cache.parquet"
    n = 25
    ctx = multiprocessing.get_context("spawn")  # no fork of a process with Arrow's threads
    barrier = ctx.Barrier(2)
    procs = [ctx.Process(target=_append_rows, args=(str(path), name, n, barrier)) for name in ("a", "b")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
    assert [p.exitcode for p in procs] == [0, 0]
    table = pq.read_table(path, schema=SHORT_TERM_SCHEMA)
    assert table.num_rows == 2 * n
    assert sorted(table["user_id"].to_pylist()) == sorted(f"{w}-{i}" for w in "ab" for i in range(n))
    assert sorted(p.name for p in path.parent.iterdir()) == [lock_path(path).name, path.name]
