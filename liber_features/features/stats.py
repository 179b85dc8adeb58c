"""User and item statistics tables: point-in-time counts and rates for the ``user_stats`` and
``item_stats`` feature views.

Each table has one row per entity per moment its statistics change: a user's row at each distinct
time ``ts`` of their events, an item's at each distinct time it appears in an event or a labelled
sample. A row holds everything up to and including ``ts`` and is stamped ``ts + 1 µs``. Feast's
point-in-time join takes rows with timestamp ``<= t``, so a sample at ``t`` sees exactly the
events strictly before ``t``: one at ``t`` itself (MovieLens has many ratings in one second) is not
visible until ``t + 1 µs``. Event times are whole microseconds, so nothing lies in between.

Statistics (samples are the label rule's, ``training/labels.py``, given by the caller: this stage
sits below ``training``):

- ``*_event_count``: every event (any type, labelled or not) — for an item, 0 = "unseen before t";
- ``*_label_count`` / ``*_positive_count``: labelled samples and their positives;
- ``*_positive_rate``: ``(positives + S·p0) / (labels + S)``;
- ``*_rated_count`` / ``*_mean_rating``: samples carrying their event's rating (a sampled negative's
  candidate has none) and ``(sum + S·r0) / (rated + S)``;
- ``user_last_event_at``: the user's newest event time (the basis of "time since the previous event");
- ``user_genre_label_counts`` / ``user_genre_positive_counts``: labels and positives per genre of the
  candidate item, aligned with the tables' genre vocabulary (the catalog's categories, sorted; in the
  Parquet metadata, ``liber.genres``): the basis of the genre-conditional positive rate.

The smoothing ``S`` and the priors ``p0``, ``r0`` are fixed numbers (:class:`StatsConfig`), not
fitted on the data: a prior from all events would carry the future into every past row.

``created_at`` of a row is the start of the newest ingest run among the events it counts (a running
max): a rebuild that changes nothing changes no ``created_at``, so ``liber materialize`` writes online
only entities whose statistics changed (``features/sync.py``), and a late event changes the rows
after it, which then carry its run's time.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field

from liber_features.features.files import atomic_write
from liber_features.features.ownership import stamp
from liber_features.ledger.store import Ledger

__all__ = ["GENRES_KEY", "ITEM_STATS_SCHEMA", "ITEM_STATS_VIEW", "USER_STATS_SCHEMA", "USER_STATS_VIEW",
           "StatsConfig", "StatsTables", "genre_hot", "genre_vocab", "sample_stats", "split_categories",
           "stats_tables", "write_stats_tables"]

USER_STATS_VIEW = "user_stats"
ITEM_STATS_VIEW = "item_stats"
_TS = pa.timestamp("us", tz="UTC")
_COUNTS = ("event_count", "label_count", "positive_count", "rated_count")
USER_STATS_SCHEMA = pa.schema(
    [("user_id", pa.string()), ("event_timestamp", _TS), ("created_at", _TS)]
    + [(f"user_{c}", pa.int64()) for c in _COUNTS]
    + [("user_positive_rate", pa.float64()), ("user_mean_rating", pa.float64()), ("user_last_event_at", _TS),
       ("user_genre_label_counts", pa.list_(pa.int64())), ("user_genre_positive_counts", pa.list_(pa.int64()))])
GENRES_KEY = b"liber.genres"
_NO_GENRE = "(no genres listed)"  # MovieLens' placeholder: not a genre
ITEM_STATS_SCHEMA = pa.schema(
    [("item_id", pa.string()), ("event_timestamp", _TS), ("created_at", _TS)]
    + [(f"item_{c}", pa.int64()) for c in _COUNTS]
    + [("item_positive_rate", pa.float64()), ("item_mean_rating", pa.float64())])


class StatsConfig(BaseModel):
    """Smoothing of the rates: fixed priors, so no row depends on anything after its time."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    smoothing: float = Field(10.0, ge=0, description="S: pseudo-samples at the prior")
    prior_rate: float = Field(0.5, ge=0, le=1, description="p0: positive rate with no samples")
    prior_rating: float = Field(3.5, description="r0: mean rating with no rated samples")

    def rate(self, positives: np.ndarray, n: np.ndarray) -> np.ndarray:
        return (positives + self.smoothing * self.prior_rate) / (n + self.smoothing) if self.smoothing \
            else np.where(n > 0, positives / np.maximum(n, 1), self.prior_rate)

    def mean(self, total: np.ndarray, n: np.ndarray) -> np.ndarray:
        return (total + self.smoothing * self.prior_rating) / (n + self.smoothing) if self.smoothing \
            else np.where(n > 0, total / np.maximum(n, 1), self.prior_rating)


@dataclass(frozen=True)
class StatsTables:
    user: pa.Table
    item: pa.Table
    genres: tuple[str, ...] = ()  # the vocabulary of the user rows' per-genre counts


def split_categories(text: object) -> list[str]:
    """A catalog ``categories`` value (``Drama|Comedy``) → its genres (none for empty or placeholder)."""
    return [g for g in str(text or "").split("|") if g and g != _NO_GENRE]


def genre_vocab(path: str | Path) -> tuple[str, ...]:
    """The genre vocabulary a statistics table was written with (empty: none, or no catalog)."""
    raw = (pq.read_schema(path).metadata or {}).get(GENRES_KEY)
    return tuple(json.loads(raw)) if raw else ()


def genre_hot(categories: list[object], genres: tuple[str, ...]) -> np.ndarray:
    """``(N, G)`` multi-hot of each item's genres in ``genres``' order (unknown genres ignored)."""
    col = {g: j for j, g in enumerate(genres)}
    hot = np.zeros((len(categories), len(genres)), np.int64)
    for i, c in enumerate(categories):
        for g in split_categories(c):
            if g in col:
                hot[i, col[g]] = 1
    return hot


def _running(parts: pd.DataFrame, key: str) -> pd.DataFrame:
    """Per (key, ts): the cumulative sums of every column up to and including ts, and the running
    max of ``created_us``. ``parts`` holds one contribution per row (an event or a sample)."""
    sums = [c for c in parts.columns if c not in (key, "ts_us", "created_us")]
    g = parts.groupby([key, "ts_us"], sort=True)
    per = g[sums].sum().join(g["created_us"].max()).reset_index()
    by_key = per.groupby(key, sort=False)
    per[sums] = by_key[sums].cumsum()
    per["created_us"] = by_key["created_us"].cummax()
    return per


def _table(per: pd.DataFrame, key: str, prefix: str, cfg: StatsConfig, schema: pa.Schema) -> pa.Table:
    ts = per.ts_us.to_numpy(np.int64)
    cols = {key: pa.array(per[key].astype(str).to_numpy(), pa.string()),
            "event_timestamp": pa.array(ts + 1).cast(_TS),  # strictly-before: visible from ts + 1 µs
            "created_at": pa.array(per.created_us.to_numpy(np.int64)).cast(_TS)}
    for c in _COUNTS:
        cols[f"{prefix}_{c}"] = pa.array(per[c].to_numpy(np.int64))
    cols[f"{prefix}_positive_rate"] = pa.array(cfg.rate(per.positive_count.to_numpy(float),
                                                         per.label_count.to_numpy(float)))
    cols[f"{prefix}_mean_rating"] = pa.array(cfg.mean(per.rating_sum.to_numpy(float),
                                                      per.rated_count.to_numpy(float)))
    if prefix == "user":
        cols["user_last_event_at"] = pa.array(ts).cast(_TS)  # the row's own time: its newest event
        for kind in ("label", "positive"):
            flat = per[[c for c in per.columns if c.startswith(f"g_{kind}_")]].to_numpy(np.int64)
            offsets = np.arange(len(per) + 1, dtype=np.int32) * flat.shape[1]
            cols[f"user_genre_{kind}_counts"] = pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat.ravel()))
    return pa.table(cols, schema=schema)


def stats_tables(events: pd.DataFrame, samples: pd.DataFrame, cfg: StatsConfig | None = None,
                 categories: pd.Series | None = None) -> StatsTables:
    """Both tables from every event (``user_id, item_id, ts_us, created_us``) and the label rule's
    samples (``user_id, item_id, ts_us, label, rating``; ``rating`` NaN when the sample has none,
    ``created_us`` of the event the sample stands at); ``categories``: the catalog's, by item id."""
    cfg = cfg or StatsConfig()
    cats = categories if categories is not None else pd.Series(dtype=object)
    genres = tuple(sorted({g for c in cats for g in split_categories(c)}))
    hot = genre_hot(list(cats.reindex(samples.item_id.to_numpy()).to_numpy()), genres)
    positive = (samples.label.to_numpy(float) > 0.5).astype(np.int64)
    zeros = np.zeros(len(events), np.int64)
    ev = pd.DataFrame({"ts_us": events.ts_us.to_numpy(np.int64), "created_us": events.created_us.to_numpy(np.int64),
                       "event_count": np.ones(len(events), np.int64), "label_count": zeros,
                       "positive_count": zeros, "rated_count": zeros, "rating_sum": zeros.astype(float)})
    rating = samples.rating.to_numpy(float)
    rated = ~np.isnan(rating)
    sm = pd.DataFrame({"ts_us": samples.ts_us.to_numpy(np.int64),
                       "created_us": samples.created_us.to_numpy(np.int64),
                       "event_count": np.zeros(len(samples), np.int64),
                       "label_count": np.ones(len(samples), np.int64),
                       "positive_count": positive,
                       "rated_count": rated.astype(np.int64), "rating_sum": np.where(rated, rating, 0.0)})
    per_genre = {**{f"g_label_{j}": hot[:, j] for j in range(len(genres))},
                 **{f"g_positive_{j}": hot[:, j] * positive for j in range(len(genres))}}
    out = {}
    for key, prefix, schema in (("user_id", "user", USER_STATS_SCHEMA), ("item_id", "item", ITEM_STATS_SCHEMA)):
        extra = per_genre if prefix == "user" else {}
        parts = pd.concat([ev.assign(**{key: events[key].to_numpy()}, **{c: 0 for c in extra}),
                           sm.assign(**{key: samples[key].to_numpy()}, **extra)], ignore_index=True)
        out[prefix] = _table(_running(parts, key), key, prefix, cfg, schema)
    return StatsTables(out["user"], out["item"], genres)


def write_stats_tables(tables: StatsTables, data_dir: str | Path, ledger: Ledger | None = None,
                       meta: dict[bytes, bytes] | None = None) -> list[Path]:
    """Write both tables into ``data_dir`` (``user_stats.parquet``, ``item_stats.parquet``) atomically,
    stamped with ``ledger`` (``features/ownership.py``). Each table is rebuilt whole from the ledger,
    never appended to, so a reader never sees half of one; two writers racing may leave the one
    built from the older snapshot, which the next refresh (every ingest, materialize and training
    set) replaces. ``meta``: extra schema metadata (the label rule the samples came from)."""
    paths = []
    for name, table in ((USER_STATS_VIEW, tables.user), (ITEM_STATS_VIEW, tables.item)):
        path = Path(data_dir) / f"{name}.parquet"
        meta = {**(meta or {}), GENRES_KEY: json.dumps(list(tables.genres)).encode()}
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), **meta})
        with atomic_write(path) as f:
            pq.write_table(stamp(table, ledger) if ledger is not None else table, f, compression="zstd")
        paths.append(path)
    return paths


def sample_stats(users: list[str], items: list[str], at_us: int) -> StatsTables:
    """Statistics of a sample log (a bootstrap, and the fixture of tests and benchmarks): user ``i``
    rated item ``(i + j) % len(items)`` at ``at_us + j`` seconds, ``j < 3``, rating ``1 + (i + j) % 5``."""
    rows = [(u, items[(i + j) % len(items)], at_us + j * 1_000_000, 1.0 + (i + j) % 5)
            for i, u in enumerate(users) for j in range(3)]
    ev = pd.DataFrame(rows, columns=["user_id", "item_id", "ts_us", "rating"]).assign(created_us=at_us)
    return stats_tables(ev, ev.assign(label=(ev.rating >= 4).astype(float)))
