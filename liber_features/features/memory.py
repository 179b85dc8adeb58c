"""The long-term memory table: ledger → one row per (user_id, sealed_at) for Feast.

Row for partition ``j`` of a user holds the vectors of partitions ``j, j-1, …, j-k+1`` with
``k = min(j+1, M)`` (slot 0 = newest), flattened to ``k×D`` float32 — only the filled slots: at
K = 50 on ml-latest-small the median user has one partition, and zero padding to M×D made 7/8 of
their online bytes zeros (``model.inputs`` pads to M×D when it reads them) — the partition
count ``j+1``, the newest summary/shift texts, and ``recent_item_ids``: the last L item ids of
partitions ``0..j`` in stream order. The short-term cache holds only what came after partition
``j``, so a ranker's behaviour history (``liber_features.model.inputs.history_items``) is
``recent_item_ids + cache_item_ids`` — one online read, no second lookup. Its event time is partition ``j``'s seal time,
so a point-in-time join at time ``t`` only ever sees partitions sealed at or before ``t``.

``encoder_version`` fingerprints (prompt version, LLM id, text encoder id): it changes whenever
any of them does, which is what lets a re-encode be told apart and pushed online. Each user's
rows come from one version: the newest that is complete for that user (see ``_chosen_vectors``).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from sqlalchemy import select

from liber_features.errors import LedgerError, VectorShapeError
from liber_features.features.files import atomic_write
from liber_features.features.ownership import check, stamp
from liber_features.ledger.store import Ledger
from liber_features.ledger.store import interests as int_t
from liber_features.ledger.store import partitions as parts_t
from liber_features.ledger.store import projections as proj_t
from liber_features.ledger.store import runs as runs_t
from liber_features.ledger.store import vectors as vec_t

__all__ = ["encoder_version", "latest_versions", "memory_table", "refresh_memory_table",
           "versions_of", "write_memory_table"]


def encoder_version(prompt_version: str, llm_id: str, encoder_id: str) -> str:
    return hashlib.sha256(f"{prompt_version}\x1f{llm_id}\x1f{encoder_id}".encode()).hexdigest()[:12]


def latest_versions(ledger: Ledger, *, required: bool = True,
                    dim: int | None = None) -> tuple[str, str, str] | None:
    """(prompt_version, llm_id, encoder_id) of the newest successful encode run — or of a running one
    that has committed partitions (``liber encode --follow`` runs for as long as it is up).

    What the ledger encodes *now* — not necessarily what a table holds: during a migration each
    user keeps their newest complete version (``_chosen_vectors``); a model names the version it
    was trained on with :func:`versions_of`. ``required=False``: None when nothing was encoded.
    ``dim``: as a table at that D holds them (a D′ projection's encoder id in place of its source).
    """
    with ledger.engine.connect() as conn:
        row = conn.execute(select(runs_t.c.params).where(
            runs_t.c.kind == "encode", (runs_t.c.status == "ok")
            | ((runs_t.c.status == "running") & (runs_t.c.partitions_done > 0)))
            .order_by(runs_t.c.id.desc()).limit(1)).first()
    if row is None:
        if not required:
            return None
        raise LedgerError("no successful encode run in this ledger: run `liber encode` first")
    p = json.loads(row.params)
    found = p["prompt_version"], p["llm_id"], p["encoder_id"]
    return found if dim is None else _at_dim(ledger, found, dim)


def _at_dim(ledger: Ledger, versions: tuple[str, str, str], dim: int) -> tuple[str, str, str]:
    """``versions`` as the table at D holds them: through the newest D′ projection of their text
    encoder when its vectors are not of D (``uil/projection.py``), unchanged otherwise."""
    with ledger.engine.connect() as conn:
        enc_dim = conn.execute(select(vec_t.c.dim).where(vec_t.c.encoder_id == versions[2]).limit(1)).scalar()
        derived = conn.execute(select(proj_t.c.encoder_id).where(
            proj_t.c.source_encoder_id == versions[2], proj_t.c.out_dim == dim)
            .order_by(proj_t.c.created_us.desc()).limit(1)).scalar()
    if enc_dim in (None, dim) or derived is None:
        return versions
    return versions[0], versions[1], derived


def versions_of(ledger: Ledger, version: str) -> tuple[str, str, str]:
    """The (prompt_version, llm_id, encoder_id) whose :func:`encoder_version` is ``version``,
    among the vectors this ledger holds: what a table written from it actually contains."""
    q = (select(int_t.c.prompt_version, int_t.c.llm_id, vec_t.c.encoder_id).distinct()
         .select_from(int_t.join(vec_t, vec_t.c.interest_id == int_t.c.id)))
    with ledger.engine.connect() as conn:
        for triple in conn.execute(q):
            if encoder_version(*triple) == version:
                return tuple(triple)
    raise LedgerError(f"encoder version {version} is not in {ledger.describe()}: "
                      "the table was written from another ledger")


def _version_order(ledger: Ledger) -> dict[tuple[str, str, str], int]:
    """(prompt version, LLM id, encoder id) → when it was introduced (its first encode run id).

    By first run, not last: an old worker still running the previous version during a migration
    must not make that version "newer" again.
    """
    order: dict[tuple[str, str, str], int] = {}
    with ledger.engine.connect() as conn:
        for run_id, params in conn.execute(select(runs_t.c.id, runs_t.c.params).where(
                runs_t.c.kind == "encode").order_by(runs_t.c.id)):
            p = json.loads(params or "{}")
            key = (p.get("prompt_version"), p.get("llm_id"), p.get("encoder_id"))
            order.setdefault(key, run_id)
    return order


def _chosen_vectors(ledger: Ledger, versions: tuple[str, str, str] | None,
                    users: list[str] | None, dim: int) -> list[int]:
    """Vector ids of each user's newest complete version: the longest encoded prefix of the
    user's partitions, ties to the newest version. While the fleet moves to a new LLM, prompt or
    text encoder, a user keeps the old version until the new one covers as much, never vanishes.
    Only vectors of the views' D count: a D′ projection (``uil/projection.py``) is a version of
    its own dimension, chosen by setting ``LIBER_VECTOR_DIM`` to D′.
    """
    q = (select(parts_t.c.user_id, parts_t.c.seq, int_t.c.prompt_version, int_t.c.llm_id,
                vec_t.c.encoder_id, vec_t.c.id)
         .select_from(parts_t.join(int_t, int_t.c.partition_id == parts_t.c.id)
                      .join(vec_t, vec_t.c.interest_id == int_t.c.id))
         .where(int_t.c.status == "done", vec_t.c.dim == dim))
    if versions:
        q = q.where(int_t.c.prompt_version == versions[0], int_t.c.llm_id == versions[1],
                    vec_t.c.encoder_id == versions[2])
    if users:
        q = q.where(parts_t.c.user_id.in_(users))
    by_user: dict[str, dict[tuple[str, str, str], dict[int, int]]] = {}
    with ledger.engine.connect() as conn:
        for r in conn.execute(q):
            by_user.setdefault(r.user_id, {}).setdefault(
                (r.prompt_version, r.llm_id, r.encoder_id), {})[r.seq] = r.id
    order = _version_order(ledger)
    chosen: list[int] = []
    for per_version in by_user.values():
        def prefix(seqs: dict[int, int]) -> int:
            n = 0
            while n in seqs:
                n += 1
            return n

        best = max(per_version, key=lambda v: (prefix(per_version[v]), order.get(v, -1), v))
        seqs = per_version[best]
        chosen += [seqs[j] for j in range(prefix(seqs))]
    return chosen


def _no_vectors_at(ledger: Ledger, dim: int) -> None:
    """Nothing at D, but vectors of another D: say which, and how to get D (not an empty table)."""
    with ledger.engine.connect() as conn:
        dims = sorted(conn.execute(select(vec_t.c.dim).distinct()).scalars())
    if dims:
        raise VectorShapeError(f"the feature views expect D={dim} (LIBER_VECTOR_DIM); {ledger.describe()} "
                               f"holds vectors of D={', '.join(map(str, dims))}: set LIBER_VECTOR_DIM to "
                               f"one of them, or fit a projection with `liber project --dim {dim}`")


def memory_table(ledger: Ledger, *, memory_slots: int, vector_dim: int, history_length: int = 50,
                 versions: tuple[str, str, str] | None = None,
                 users: list[str] | None = None) -> pa.Table:
    """Build the long-term memory table (schema in the module docstring): every user once, each
    in their newest complete version (``versions`` restricts it to one version)."""
    ids = _chosen_vectors(ledger, versions, users, vector_dim)
    if not ids:
        _no_vectors_at(ledger, vector_dim)
    q = (select(parts_t.c.user_id, parts_t.c.seq, parts_t.c.sealed_at_us, int_t.c.summary,
                int_t.c.shift, parts_t.c.events_json, vec_t.c.dim, vec_t.c.summary_vec, vec_t.c.shift_vec,
                vec_t.c.created_us, int_t.c.prompt_version, int_t.c.llm_id, vec_t.c.encoder_id)
         .select_from(parts_t.join(int_t, int_t.c.partition_id == parts_t.c.id)
                      .join(vec_t, vec_t.c.interest_id == int_t.c.id)))
    rows = []
    with ledger.engine.connect() as conn:
        for lo in range(0, len(ids), 5000):  # bounded IN lists (SQLite's variable limit)
            rows += conn.execute(q.where(vec_t.c.id.in_(ids[lo:lo + 5000]))).all()
    rows.sort(key=lambda r: (r.user_id, r.seq))
    M, D = memory_slots, vector_dim
    n = len(rows)
    summ = np.zeros((n, M, D), dtype=np.float32)
    shift = np.zeros((n, M, D), dtype=np.float32)
    count = np.zeros(n, dtype=np.int64)
    recent: list[list[str]] = []
    created = np.zeros(n, dtype=np.int64)
    start = 0  # index of the current user's first row
    for i, r in enumerate(rows):
        if r.dim != D:
            raise VectorShapeError(f"user {r.user_id} partition {r.seq}: vectors have D={r.dim}, "
                                   f"the feature views expect D={D} (LIBER_VECTOR_DIM)")
        if i == 0 or rows[i - 1].user_id != r.user_id:
            start = i
        if r.seq != i - start:  # encodes are a prefix of each user's partitions, in order
            raise LedgerError(f"user {r.user_id}: partition {r.seq} encoded but an earlier one is not")
        # Slot 0 = this partition, slots 1.. = the previous row's slots shifted by one.
        summ[i, 0] = np.frombuffer(r.summary_vec, dtype=np.float32)
        shift[i, 0] = np.frombuffer(r.shift_vec, dtype=np.float32)
        if i > start and M > 1:
            summ[i, 1:] = summ[i - 1, :-1]
            shift[i, 1:] = shift[i - 1, :-1]
        count[i] = r.seq + 1
        # events_json rows are [event_id, item_id, ts_us, rating] in the partition's stream order.
        items = [e[1] for e in json.loads(r.events_json)]
        recent.append(((recent[i - 1] if i > start else []) + items)[-history_length:])
        # A row changes when any of its slots does (a new text encoder fills vectors in any
        # order): its created_at is the newest of them, so the online sync sees the change.
        created[i] = max(r.created_us, created[i - 1]) if i > start else r.created_us

    filled = np.minimum(count, M)  # slots per row

    def vec_column(a: np.ndarray) -> pa.Array:
        offsets = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(filled * D, out=offsets[1:])
        keep = np.arange(M)[None, :] < filled[:, None]  # (n, M): the filled slots, newest first
        return pa.LargeListArray.from_arrays(pa.array(offsets), pa.array(a[keep].reshape(-1))).cast(
            pa.list_(pa.float32()))

    ts = pa.timestamp("us", tz="UTC")
    return pa.table({
        "user_id": pa.array([r.user_id for r in rows], pa.string()),
        "sealed_at": pa.array([r.sealed_at_us for r in rows], pa.int64()).cast(ts),
        "created_at": pa.array(created, pa.int64()).cast(ts),
        "partition_count": pa.array(count),
        "summary_vectors": vec_column(summ),
        "shift_vectors": vec_column(shift),
        "recent_item_ids": pa.array(recent, pa.list_(pa.string())),
        "latest_summary": pa.array([r.summary for r in rows], pa.string()),
        "latest_shift": pa.array([r.shift for r in rows], pa.string()),
        "encoder_version": pa.array([encoder_version(r.prompt_version, r.llm_id, r.encoder_id)
                                     for r in rows], pa.string()),
    })


def write_memory_table(table: pa.Table, path: str | Path, ledger: Ledger | None = None) -> Path:
    """Write atomically (``features/files.py``): Feast never reads a half-written file, and two
    writers never write into (or rename away) each other's temp file. With ``ledger`` the file
    carries it (``features/ownership.py``), as every table ``refresh_memory_table`` writes does."""
    path = Path(path)
    if ledger is not None:
        table = stamp(table, ledger)
    # zstd without dictionaries on the vectors: a row's M-slot window repeats the vectors of the
    # rows before it, which zstd's window finds (dictionary pages overflow on float32 values).
    # Measured on the K = 50 ledger (bench/bench_memory.py): 2.9 KB per partition instead of
    # snappy's 9.1 KB; DuckDB and pyarrow, Feast's readers, both read zstd.
    vectors = {"summary_vectors", "shift_vectors"}
    with atomic_write(path) as f:
        pq.write_table(table, f, compression="zstd",
                       use_dictionary=[c for c in table.column_names if c not in vectors])
    return path


def refresh_memory_table(ledger: Ledger, path: str | Path, *, memory_slots: int,
                         vector_dim: int, history_length: int = 50, replace: bool = False) -> pa.Table:
    """Rebuild the table from the ledger and write it, under the ledger's ``memory_table`` lock.

    Built *inside* the lock: the last writer then always saw every commit made before it, so a
    worker finishing earlier can never rename a staler table over a newer one. A data directory
    holding another ledger's files is refused first (``ownership.check``; ``replace`` drops them).
    """
    import socket

    from liber_features.uil.projection import project_new

    check(Path(path).parent, ledger, replace)
    # Partitions encoded since a D′ projection was fitted get their D′ vectors first (no LLM call),
    # so the table at D′ covers as much as the table at D would.
    project_new(ledger)
    with ledger.lock("memory_table", f"{socket.gethostname()}:{os.getpid()}"):
        table = memory_table(ledger, memory_slots=memory_slots, vector_dim=vector_dim,
                             history_length=history_length)
        write_memory_table(table, path, ledger)
    return table


def to_frame(table: pa.Table) -> pd.DataFrame:
    """Pandas view with float32 vector arrays (pyarrow's default would give float64 lists)."""
    df = table.drop_columns(["summary_vectors", "shift_vectors"]).to_pandas()
    for col in ("summary_vectors", "shift_vectors"):
        flat = table[col].combine_chunks()  # rows differ in length: min(count, M)×D each
        values, offsets = flat.values.to_numpy(), flat.offsets.to_numpy()
        df[col] = [values[a:b] for a, b in zip(offsets[:-1], offsets[1:])]
    return df
