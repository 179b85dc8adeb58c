"""The training set: the ledger's labelled events as point-in-time-correct, leak-free samples.

A sample is (user, candidate item, t, label); which events become samples and their labels is the
label rule's (``labels.LabelRule``): by default every rated event, label ``rating >= 4``; or
purchases/clicks against unclicked impressions; or positives with sampled negatives; or explicit
labels. Each user's samples, in ``(ts, event_id)`` order, are split in time: the first 80 % train,
the next 10 % validation, the last 10 % test (``split`` sets the cut points; the cut is
``floor(frac * n)``; a sampled negative takes its positive's split).

What the sample sees, with the definitions the online path uses (``liber_features.model.inputs``):

- **Long-term memory** comes through Feast: ``partition_count`` of ``user_long_term_memory`` by a
  point-in-time join at ``t - 1 µs``. Feast's join is inclusive (≤); MovieLens has many ratings in
  the same second, and the summary of a partition sealed at ``t`` may have been written from this
  very event — so only partitions sealed *strictly* before ``t`` are visible, and since every
  event of a partition is at or before its seal time, no visible partition holds an event at or
  after ``t``. The vectors are then gathered per partition from the view's offline source (slot 0
  of each row), so memory stays O(partitions × D) instead of O(samples × M × D).
- **Behaviour history**: ``history_items(recent_item_ids, cache)`` — the visible row's last L
  sealed items, then the cache as it stood at ``t``: the user's events before ``t`` (every event,
  labelled or not: the online cache holds them all) that no
  partition sealed before ``t`` holds, in ``(ts, event_id)`` order. That is what an online read
  (long-term row + pushed cache) returns at the same moment.
- **Candidate**: the sample's item index (its text vector lives with the model).
- **Statistics** (``stats``): the ``user_stats`` / ``item_stats`` views joined at ``t`` — their rows
  are stamped 1 µs after the events they count — through ``model.inputs.stats_inputs``
  (``training/statistics.py``).

Nothing is dropped silently: a sample with no partitions gets ``partition_count = 0`` (masked
slots) and one with no history an all-PAD history; events the rule does not label are history
only, counted in ``counts["unlabelled"]``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field, model_validator
from sqlalchemy import select

from liber_features.errors import LedgerError
from liber_features.features.repo import LONG_TERM_VIEW, LiberFeatureConfig
from liber_features.ledger.store import Ledger
from liber_features.ledger.store import events as events_t
from liber_features.ledger.store import items as items_t
from liber_features.ledger.store import partitions as parts_t
from liber_features.model.inputs import STAT_NAMES, history_items, pad_history
from liber_features.model.vocab import OOV, PAD, ItemVocab, UserVocab
from liber_features.training.labels import LabelRule, label_samples

if TYPE_CHECKING:
    from feast import FeatureStore

__all__ = ["SPLITS", "SampleConfig", "TrainingSet", "build_training_set", "train_period_ends"]

SPLITS = ("train", "validation", "test")


class SampleConfig(BaseModel):
    """How samples are labelled and split."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    labels: LabelRule = Field(LabelRule(), description="which events are samples, and their labels")
    train_frac: float = Field(0.8, gt=0, lt=1)
    validation_frac: float = Field(0.1, ge=0, lt=1)

    @model_validator(mode="after")
    def _fits(self) -> SampleConfig:
        if self.train_frac + self.validation_frac >= 1:
            raise ValueError("train_frac + validation_frac must leave room for a test split")
        return self


@dataclass
class TrainingSet:
    """Samples (N rows) plus the per-partition vector tables their slots point into."""

    user_ids: np.ndarray  # (N,) str
    item_ids: np.ndarray  # (N,) str
    ts_us: np.ndarray  # (N,) int64
    label: np.ndarray  # (N,) float32
    split: np.ndarray  # (N,) int8: 0 train, 1 validation, 2 test
    user_idx: np.ndarray  # (N,) int64
    item_idx: np.ndarray  # (N,) int64
    hist_idx: np.ndarray  # (N, L) int64
    partition_count: np.ndarray  # (N,) int64, partitions visible at t (may exceed M)
    slot_rows: np.ndarray  # (N, M) int64 rows of the tables below; 0 = empty slot
    summary_table: np.ndarray  # (P + 1, D) float32, row 0 zeros
    shift_table: np.ndarray  # (P + 1, D) float32
    part_items: list[list[str]]  # (P + 1) item ids of each partition row (row 0 empty)
    part_users: list[str]  # (P + 1) owner of each partition row (row 0 "")
    user_vocab: UserVocab  # the users with a training-split sample
    item_vocab: ItemVocab  # the catalog's items and every rated item
    catalog: pd.DataFrame  # item_id, title, categories
    shape: LiberFeatureConfig
    encoder_version: str
    counts: dict[str, Any] = field(default_factory=dict)
    # (N, len(STAT_NAMES)) float32: user/item statistics strictly before t (``model.inputs.stats_inputs``)
    stats: np.ndarray = field(default_factory=lambda: np.zeros((0, len(STAT_NAMES)), np.float32))

    def vectors(self, rows: np.ndarray, tables: tuple[np.ndarray, np.ndarray] | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
        """Slot rows ``(B, M)`` → summary, shift ``(B, M, D)`` (zeros for empty slots)."""
        summ, shift = tables or (self.summary_table, self.shift_table)
        return summ[rows], shift[rows]

    def mask(self, split: str) -> np.ndarray:
        return self.split == SPLITS.index(split)


def _events(ledger: Ledger) -> pd.DataFrame:
    with ledger.engine.connect() as conn:
        rows = conn.execute(select(events_t.c.event_id, events_t.c.user_id, events_t.c.item_id,
                                   events_t.c.ts_us, events_t.c.rating, events_t.c.event_type,
                                   events_t.c.label)).all()
    df = pd.DataFrame(rows, columns=["event_id", "user_id", "item_id", "ts_us", "rating", "event_type", "label"])
    df["rating"], df["label"] = df.rating.astype("float64"), df.label.astype("float64")
    return df.sort_values(["user_id", "ts_us", "event_id"], kind="stable").reset_index(drop=True)


def _split(df: pd.DataFrame, cfg: SampleConfig) -> np.ndarray:
    pos = df.groupby("user_id", sort=False).cumcount().to_numpy()
    n = df.groupby("user_id", sort=False)["user_id"].transform("size").to_numpy()
    cut1 = np.floor(cfg.train_frac * n)
    cut2 = np.floor((cfg.train_frac + cfg.validation_frac) * n)
    return np.where(pos < cut1, 0, np.where(pos < cut2, 1, 2)).astype(np.int8)


def _samples(every: pd.DataFrame, cfg: SampleConfig):
    """(the rule's labelled rows, the samples frame, each sample's split) of the ledger's events."""
    got = label_samples(every, cfg.labels)
    ev = pd.DataFrame({"event_id": every.event_id.to_numpy()[got.rows], "user_id": every.user_id.to_numpy()[got.rows],
                       "item_id": got.item_id, "ts_us": every.ts_us.to_numpy()[got.rows]})
    # One split per group (a positive and its sampled negatives), cut over the groups in time order.
    lead = np.r_[True, got.group[1:] != got.group[:-1]]
    return got, ev, _split(ev[lead].reset_index(drop=True), cfg)[got.group]


def train_period_ends(ledger: Ledger, cfg: SampleConfig | None = None) -> dict[str, int]:
    """user → time (µs) of the user's first validation or test sample, by the split
    :func:`build_training_set` makes (same label rule, same cut): the user's training period is
    everything strictly before it. Users without samples have no training period (absent)."""
    _, ev, split = _samples(_events(ledger), cfg or SampleConfig())
    held = ev[split > 0]
    return {str(u): int(t) for u, t in held.groupby("user_id", sort=False).ts_us.min().items()}


def _visible_counts(store: FeatureStore, df: pd.DataFrame) -> np.ndarray:
    """Feast point-in-time ``partition_count`` at ``t - 1 µs`` (strictly before t), 0 when none."""
    from liber_features.features.online import store_errors

    entity = pd.DataFrame({
        "user_id": df.user_id.to_numpy(),
        "event_timestamp": pd.to_datetime(df.ts_us.to_numpy() - 1, unit="us", utc=True),
        "row": np.arange(len(df)),
    })  # fmt: skip
    with store_errors("point-in-time join of partition_count"):
        out = store.get_historical_features(
            entity_df=entity, features=[f"{LONG_TERM_VIEW}:partition_count"]).to_df()
    out = out.sort_values("row")
    if len(out) != len(df):  # Feast must return every entity row: a loss here would bias the set
        raise LedgerError(f"Feast returned {len(out)} rows for {len(df)} samples")
    return out["partition_count"].fillna(0).astype(np.int64).to_numpy()


def _memory_rows(store: FeatureStore, D: int) -> pd.DataFrame:
    """The long-term offline rows, slot 0 only: (user_id, partition_count) → the vectors and
    recent items *of that partition*. Slot j of a row is slot 0 of the row j partitions earlier."""
    view = store.get_feature_view(LONG_TERM_VIEW)
    path = Path(view.batch_source.path)  # type: ignore[union-attr]
    t = pq.read_table(path, columns=["user_id", "partition_count", "summary_vectors",
                                     "shift_vectors", "recent_item_ids", "encoder_version"])

    def slot0(col: str) -> np.ndarray:
        flat = pc.list_slice(t[col], 0, D).combine_chunks().flatten().to_numpy()
        return flat.astype(np.float32, copy=False).reshape(-1, D)

    df = pd.DataFrame({"user_id": t["user_id"].to_pylist(),
                       "partition_count": t["partition_count"].to_numpy(),
                       "recent_item_ids": t["recent_item_ids"].to_pylist(),
                       "encoder_version": t["encoder_version"].to_pylist()})
    df["summary"], df["shift"] = list(slot0("summary_vectors")), list(slot0("shift_vectors"))
    return df.sort_values(["user_id", "partition_count"]).reset_index(drop=True)


def build_training_set(ledger: Ledger, store: FeatureStore, cfg: SampleConfig | None = None,
                       shape: LiberFeatureConfig | None = None) -> TrainingSet:
    """Every labelled event of the ledger as a sample (module docstring for the rules).

    The store's tables must be this ledger's (``ownership.check_sources``): another ledger's
    long-term rows joined to this ledger's events would train on someone else's memory.
    """
    from liber_features.features.repo import SHORT_TERM_VIEW
    from liber_features.features.stats import ITEM_STATS_VIEW, USER_STATS_VIEW
    from liber_features.features.sync import check_sources
    from liber_features.training.statistics import point_in_time_stats

    check_sources(store, ledger, [LONG_TERM_VIEW, SHORT_TERM_VIEW, USER_STATS_VIEW, ITEM_STATS_VIEW])
    cfg, shape = cfg or SampleConfig(), shape or LiberFeatureConfig.from_env()
    M, D, L = shape.memory_slots, shape.vector_dim, shape.history_length
    every = _events(ledger)  # the behaviour the features see; samples are the rule's subset
    got, ev, split = _samples(every, cfg)
    counts = _visible_counts(store, ev)
    mem = _memory_rows(store, D)
    versions = sorted(set(mem.encoder_version))
    if len(versions) > 1:
        raise LedgerError(f"the long-term table mixes encoder versions {versions}; rewrite it first")

    with ledger.engine.connect() as conn:
        parts = pd.DataFrame(conn.execute(select(parts_t.c.user_id, parts_t.c.seq,
                                                 parts_t.c.sealed_at_us, parts_t.c.events_json)).all(),
                             columns=["user_id", "seq", "sealed_at_us", "events_json"])
        catalog = pd.DataFrame(conn.execute(select(items_t.c.item_id, items_t.c.title,
                                                   items_t.c.categories)).all(),
                               columns=["item_id", "title", "categories"])
    stats = point_in_time_stats(store, ev, catalog)  # the user/item statistics views, strictly before t
    parts = parts.sort_values(["user_id", "seq"]).reset_index(drop=True)
    event_part = {}  # event_id -> (user, seq) of the partition holding it
    part_items_by_key: dict[tuple[str, int], list[str]] = {}
    for p in parts.itertuples(index=False):
        rows = json.loads(p.events_json)
        part_items_by_key[(p.user_id, p.seq)] = [r[1] for r in rows]
        for r in rows:
            event_part[r[0]] = p.seq

    item_vocab = ItemVocab.build(set(catalog.item_id) | set(every.item_id))
    user_vocab = UserVocab.build(ev.user_id[split == 0])

    # Partition tables: row r >= 1 is one encoded partition (user, seq = partition_count - 1).
    summary_table = np.zeros((len(mem) + 1, D), np.float32)
    shift_table = np.zeros((len(mem) + 1, D), np.float32)
    if len(mem):
        summary_table[1:] = np.stack(mem["summary"].to_list())
        shift_table[1:] = np.stack(mem["shift"].to_list())
    part_items = [[]] + [part_items_by_key.get((u, c - 1), [])
                         for u, c in zip(mem.user_id, mem.partition_count)]
    first_row = {}  # user -> table row of its partition 0
    recent = {}
    for r, (u, c, rec) in enumerate(zip(mem.user_id, mem.partition_count, mem.recent_item_ids), 1):
        if c == 1:
            first_row[u] = r
        recent[(u, int(c))] = rec

    N = len(ev)
    slot_rows = np.zeros((N, M), np.int64)
    hist_idx = np.full((N, L), PAD, np.int64)
    seal_by_user = {u: g.sealed_at_us.to_numpy() for u, g in parts.groupby("user_id", sort=False)}
    seq_of = every.event_id.map(event_part).fillna(np.iinfo(np.int64).max).astype(np.int64).to_numpy()
    ts, all_ts, all_ids = ev.ts_us.to_numpy(), every.ts_us.to_numpy(), every.item_id.to_numpy()
    all_rows = every.groupby("user_id", sort=False).indices
    for u, g in ev.groupby("user_id", sort=False).indices.items():
        # g: this user's rows, already in (ts, event_id) order.
        c = counts[g]
        if u in first_row:
            for j in range(M):
                s = c - 1 - j
                slot_rows[g, j] = np.where(s >= 0, first_row[u] + s, 0)
        sealed_before = np.searchsorted(seal_by_user.get(u, np.empty(0, np.int64)), ts[g], side="left")
        ga = all_rows[u]  # every event of the user, in (ts, event_id) order
        before = np.searchsorted(all_ts[ga], ts[g], side="left")  # events strictly before t
        seq_g = seq_of[ga]
        for k, i in enumerate(g):
            # The cache at t: events before t that no partition sealed before t holds (ts order).
            cache = all_ids[ga[np.flatnonzero(seq_g[: before[k]] >= sealed_before[k])[-L:]]]
            hist = history_items(recent.get((u, int(c[k]))), cache, L)
            hist_idx[i] = pad_history(item_vocab.index(hist), L)

    item_idx = item_vocab.index(ev.item_id.to_numpy())
    user_idx = user_vocab.index(ev.user_id.to_numpy())
    label = got.label
    summary: dict[str, Any] = {"samples": N, "unlabelled": got.counts["unlabelled"],
                               "users": int(ev.user_id.nunique()),
                               "users_with_0_partitions": int(ev.user_id.nunique() - len(first_row)),
                               "samples_with_0_partitions": int(np.count_nonzero(counts == 0)),
                               "samples_with_empty_history": int(np.count_nonzero(hist_idx[:, -1] == PAD)),
                               "oov_candidates": int(np.count_nonzero(item_idx == OOV)),
                               "label_rule": cfg.labels.describe()}
    if cfg.labels.kind == "sampled":
        summary["sampled_negatives"] = got.counts["sampled_negatives"]
        summary["short_negative_pools"] = got.counts["short_pools"]
    for s, name in enumerate(SPLITS):
        m = split == s
        summary[name] = {"samples": int(m.sum()), "positives": int(label[m].sum()),
                         "users": int(ev.user_id[m].nunique())}
    return TrainingSet(
        user_ids=ev.user_id.to_numpy(), item_ids=ev.item_id.to_numpy(), ts_us=ts, label=label,
        split=split, user_idx=user_idx, item_idx=item_idx, hist_idx=hist_idx, partition_count=counts,
        slot_rows=slot_rows, summary_table=summary_table, shift_table=shift_table,
        part_items=part_items, part_users=["", *mem.user_id], user_vocab=user_vocab, item_vocab=item_vocab,
        catalog=catalog,
        shape=shape, encoder_version=versions[0] if versions else "", counts=summary, stats=stats)
