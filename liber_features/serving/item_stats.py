"""Candidate item statistics for the scorer: an in-memory table refreshed on a schedule.

A request scores N candidates of one user, and a ranker that reads item statistics needs them for
all N. Two ways were measured (``bench/bench_item_stats.py``, docs/serving.md): one extra pipelined
read of N item hashes from the online store per request, or this table. The table won by orders of
magnitude (a vectorised lookup in process memory instead of a round trip plus N×4 ValueProto
decodes), and costs little: one float64 per statistic per item. What it gives up is freshness —
a row is at most ``refresh_s`` older than the offline table — which matters little for statistics
that aggregate every user's events.

The table holds each item's newest row of the ``item_stats`` view's offline source, which is what
``liber materialize`` writes online (``features/sync.py`` writes the newest row per entity). It is
swapped whole on refresh, so a lookup never sees half of two tables; a failed refresh keeps the
previous table and is counted (``refresh_errors``), since statistics a minute old beat no scores.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from liber_features.features.stats import ITEM_STATS_VIEW
from liber_features.model.inputs import ITEM_STAT_FIELDS

if TYPE_CHECKING:
    from feast import FeatureStore

__all__ = ["ItemStatsTable"]


@dataclass(frozen=True)
class _Snapshot:
    index: pd.Index  # item_id → row
    values: dict[str, np.ndarray]  # field → (items,) float64
    mtime_ns: int


class ItemStatsTable:
    """``lookup(item_ids)`` → ``ITEM_STAT_FIELDS`` arrays (NaN where the item has no row), as
    ``model.inputs.stats_inputs`` takes them; ``start(refresh_s)`` re-reads the table when it changes."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.refresh_errors = 0
        self._snap = self._read()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @classmethod
    def from_store(cls, store: FeatureStore) -> ItemStatsTable:
        """The table behind the registered ``item_stats`` view (a local Parquet source)."""
        from liber_features.features.sync import source_path

        return cls(source_path(store, ITEM_STATS_VIEW))

    def _read(self) -> _Snapshot:
        mtime = self.path.stat().st_mtime_ns
        t = pq.read_table(self.path, columns=["item_id", "event_timestamp", "created_at", *ITEM_STAT_FIELDS])
        df = t.to_pandas().sort_values(["event_timestamp", "created_at"], kind="stable")
        df = df.drop_duplicates("item_id", keep="last")  # the newest row per item, as materialize writes it
        return _Snapshot(pd.Index(df.item_id.to_numpy()),
                         {f: df[f].to_numpy(dtype=np.float64) for f in ITEM_STAT_FIELDS}, mtime)

    def refresh(self) -> bool:
        """Re-read the table if its file changed; True when a new table was swapped in."""
        try:
            if self.path.stat().st_mtime_ns == self._snap.mtime_ns:
                return False
            self._snap = self._read()  # one reference swap: lookups see the old or the new table
            return True
        except (OSError, ValueError) as exc:  # a file replaced mid-read, a bad file: keep the old table
            self.refresh_errors += 1
            self.last_error = f"{type(exc).__name__}: {exc}"
            return False

    def lookup(self, item_ids: Any) -> dict[str, np.ndarray]:
        snap = self._snap
        rows = snap.index.get_indexer(np.asarray(item_ids, dtype=object))
        found = rows >= 0
        out = {}
        for f, col in snap.values.items():
            v = np.full(len(rows), np.nan)
            v[found] = col[rows[found]]
            out[f] = v
        return out

    def start(self, refresh_s: float = 60.0) -> None:
        """Refresh every ``refresh_s`` seconds on a daemon thread until :meth:`stop`."""
        def loop() -> None:
            while not self._stop.wait(refresh_s):
                self.refresh()

        self._thread = threading.Thread(target=loop, name="item-stats-refresh", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
