"""The short-term cache table: each user's unsealed events as Feast's short-term view holds them.

Rows come from the ledger's cache states (what UBSP left in each user's cache); the online store
gets the newest row per user, the offline history Parquet every row, for point-in-time joins.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from sqlalchemy import select

from liber_features.features.files import atomic_write, locked
from liber_features.features.ownership import check, stamp
from liber_features.features.repo import SHORT_TERM_SCHEMA
from liber_features.ingest.job import load_states
from liber_features.ingest.partition import UserState
from liber_features.ledger.store import Ledger, now_us
from liber_features.ledger.store import user_cache as cache_t

__all__ = ["cache_frame", "current_caches", "append_cache_history"]


def cache_frame(states: list[UserState]) -> pd.DataFrame:
    """Short-term cache rows for the online store and its offline history, one per user.

    A cache just emptied by a seal is a row too (length 0, stamped at the seal): otherwise the
    online store would keep serving events that now live in a long-term partition.
    """
    def ts(values: list[int | None]) -> pd.Series:
        return pd.to_datetime(pd.Series(values, dtype="Int64"), unit="us", utc=True)

    newest = [s.cache[-1].ts_us if s.cache else s.last_seal_us for s in states]
    return pd.DataFrame({
        "user_id": [s.user_id for s in states],
        "event_timestamp": ts(newest),
        "created_at": pd.Timestamp(now_us(), unit="us", tz="UTC"),
        "cache_item_ids": [[e.item_id for e in s.cache] for s in states],
        # Aligned with the items, so a ranker reading the view by user_id sees a purchase apart
        # from a view; "" for an untyped event (a Feast string list holds no nulls).
        "cache_event_types": [[e.event_type or "" for e in s.cache] for s in states],
        "cache_length": np.array([len(s.cache) for s in states], dtype="int64"),
        "cache_oldest_at": ts([s.cache[0].ts_us if s.cache else None for s in states]),
        "cache_newest_at": ts([s.cache[-1].ts_us if s.cache else None for s in states]),
    })


def current_caches(ledger: Ledger, users: list[str] | None = None) -> pd.DataFrame:
    """Every user's short-term cache as the ledger holds it now (``cache_frame`` rows)."""
    with ledger.engine.connect() as conn:
        q = select(cache_t.c.user_id)
        if users:
            q = q.where(cache_t.c.user_id.in_(users))
        ids = conn.execute(q).scalars().all()
        return cache_frame(list(load_states(conn, list(ids)).values()))


def append_cache_history(df: pd.DataFrame, path: str | Path, ledger: Ledger | None = None,
                         replace: bool = False) -> Path:
    """Append cache states to the short-term view's offline table.

    Training joins read it point-in-time; its granularity is one row per user per ingest run. The
    file is rewritten whole (Parquet has no append), so the read, concat and write happen under the
    file's lock: two ingests appending at once keep both their rows (``features/files.py``). With
    ``ledger`` (every command passes one) a history of another ledger is refused before it is read
    — ``replace`` drops it and starts a new one — and the file written carries this ledger.
    """
    path = Path(path)
    new = pa.Table.from_pandas(df[SHORT_TERM_SCHEMA.names], schema=SHORT_TERM_SCHEMA,
                               preserve_index=False)
    with locked(path):
        if ledger is not None:
            check(path.parent, ledger, replace)
        table = pa.concat_tables([pq.read_table(path, schema=SHORT_TERM_SCHEMA), new]) \
            if path.exists() else new
        if ledger is not None:
            table = stamp(table, ledger)
        with atomic_write(path) as f:
            pq.write_table(table, f)
    return path
