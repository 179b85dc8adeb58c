"""The long-term memory table: ledger → one row per (user_id, sealed_at) for Feast.

Row for partition ``j`` of a user holds the vectors of partitions ``j, j-1, …, j-M+1`` (slot 0
= newest, zero-padded when the user has fewer), flattened to ``M×D`` float32, the partition
count ``j+1``, the newest summary/shift texts, and ``recent_item_ids``: the last L item ids of
partitions ``0..j`` in stream order. The short-term cache holds only what came after partition
``j``, so a ranker's behaviour history (``liber_features.inputs.history_items``) is
``recent_item_ids + cache_item_ids`` — one online read, no second lookup. Its event time is partition ``j``'s seal time,
so a point-in-time join at time ``t`` only ever sees partitions sealed at or before ``t``.

``encoder_version`` fingerprints (prompt version, LLM id, text encoder id): it changes whenever
any of them does, which is what lets a re-encode be told apart and pushed online.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from sqlalchemy import select

from .errors import LedgerError, VectorShapeError
from .ledger import Ledger, interests as int_t, partitions as parts_t, runs as runs_t
from .ledger import vectors as vec_t

__all__ = ["encoder_version", "latest_versions", "memory_table", "write_memory_table"]


def encoder_version(prompt_version: str, llm_id: str, encoder_id: str) -> str:
    return hashlib.sha256(f"{prompt_version}\x1f{llm_id}\x1f{encoder_id}".encode()).hexdigest()[:12]


def latest_versions(ledger: Ledger) -> tuple[str, str, str]:
    """(prompt_version, llm_id, encoder_id) of the newest successful encode run."""
    with ledger.engine.connect() as conn:
        row = conn.execute(select(runs_t.c.params).where(
            runs_t.c.kind == "encode", runs_t.c.status == "ok").order_by(runs_t.c.id.desc())
            .limit(1)).first()
    if row is None:
        raise LedgerError("no successful encode run in this ledger: run `liber encode` first")
    p = json.loads(row.params)
    return p["prompt_version"], p["llm_id"], p["encoder_id"]


def memory_table(ledger: Ledger, *, memory_slots: int, vector_dim: int, history_length: int = 50,
                 versions: tuple[str, str, str] | None = None,
                 users: list[str] | None = None) -> pa.Table:
    """Build the long-term memory table (schema in the module docstring)."""
    pv, llm_id, enc_id = versions or latest_versions(ledger)
    q = (select(parts_t.c.user_id, parts_t.c.seq, parts_t.c.sealed_at_us, int_t.c.summary,
                int_t.c.shift, parts_t.c.events_json, vec_t.c.dim, vec_t.c.summary_vec, vec_t.c.shift_vec,
                vec_t.c.created_us)
         .select_from(parts_t.join(int_t, int_t.c.partition_id == parts_t.c.id)
                      .join(vec_t, vec_t.c.interest_id == int_t.c.id))
         .where(int_t.c.prompt_version == pv, int_t.c.llm_id == llm_id, int_t.c.status == "done",
                vec_t.c.encoder_id == enc_id)
         .order_by(parts_t.c.user_id, parts_t.c.seq))
    if users:
        q = q.where(parts_t.c.user_id.in_(users))
    with ledger.engine.connect() as conn:
        rows = conn.execute(q).all()
    M, D = memory_slots, vector_dim
    n = len(rows)
    summ = np.zeros((n, M, D), dtype=np.float32)
    shift = np.zeros((n, M, D), dtype=np.float32)
    count = np.zeros(n, dtype=np.int64)
    recent: list[list[str]] = []
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

    def vec_column(a: np.ndarray) -> pa.Array:
        offsets = np.arange(0, (n + 1) * M * D, M * D, dtype=np.int32)
        return pa.ListArray.from_arrays(pa.array(offsets), pa.array(a.reshape(-1)))

    ts = pa.timestamp("us", tz="UTC")
    return pa.table({
        "user_id": pa.array([r.user_id for r in rows], pa.string()),
        "sealed_at": pa.array([r.sealed_at_us for r in rows], pa.int64()).cast(ts),
        "created_at": pa.array([r.created_us for r in rows], pa.int64()).cast(ts),
        "partition_count": pa.array(count),
        "summary_vectors": vec_column(summ),
        "shift_vectors": vec_column(shift),
        "recent_item_ids": pa.array(recent, pa.list_(pa.string())),
        "latest_summary": pa.array([r.summary for r in rows], pa.string()),
        "latest_shift": pa.array([r.shift for r in rows], pa.string()),
        "encoder_version": pa.array([encoder_version(pv, llm_id, enc_id)] * n, pa.string()),
    })


def write_memory_table(table: pa.Table, path: str | Path) -> Path:
    """Write atomically (temp file + rename): Feast never reads a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    pq.write_table(table, tmp)
    tmp.replace(path)
    return path


def to_frame(table: pa.Table) -> pd.DataFrame:
    """Pandas view with float32 vector arrays (pyarrow's default would give float64 lists)."""
    df = table.drop_columns(["summary_vectors", "shift_vectors"]).to_pandas()
    for col in ("summary_vectors", "shift_vectors"):
        flat = table[col].combine_chunks()
        width = len(flat[0]) if len(flat) else 0
        df[col] = list(flat.values.to_numpy().reshape(-1, width)) if width else []
    return df
