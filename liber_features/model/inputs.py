"""One definition of every model input, shared by the training-set builder and the online scorer.

A LIBER ranker reads, for one user, what ``liber_ranker_v1`` serves: the last min(count, M)
partition summary and shift vectors (flattened k×D, slot 0 newest: only the filled slots are
stored; here, and only here, they are padded to M), ``partition_count``, ``recent_item_ids`` (last L
items of the sealed partitions) and ``cache_item_ids`` (the unsealed short-term cache). This module
turns those values — whether they come from a Feast point-in-time join, an online read, or the
Redis fast path — into the exact arrays the model takes, so training and serving cannot drift:

    user_idx        (U,)        int64    user vocabulary index (0 = unknown user)
    summary         (U, M, D)   float32  summary vectors, slot 0 newest, zero-padded
    shift           (U, M, D)   float32  shift vectors, aligned with ``summary``
    partition_count (U,)        int64    filled slots = min(count, M); 0 = no LIBER memory
    hist_idx        (U, L)      int64    item indices of the last L behaviours, oldest first,
                                         left-padded with PAD (0)
    item_idx        (N,)        int64    candidate item indices (OOV = 1)

Indices come from the vocabularies (``liber_features.model.vocab``), which own the reserved rows.

U is 1 online (one user, N candidates broadcast inside the graph) and B in training (one
candidate per sample, U = N = B).

Statistics inputs (:func:`stats_inputs`, read by the boosted backbone) come from the ``user_stats``
and ``item_stats`` views — a point-in-time join in training, an online read in serving — as
``(N, len(STAT_NAMES))`` float32, one row per candidate; missing rows (a user or item with no
event before t) give counts 0, rates at the views' fixed priors, ``item_unseen`` 1 and
``seconds_since_previous`` -1.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd

from liber_features.errors import VectorShapeError
from liber_features.features.stats import StatsConfig
from liber_features.model.vocab import PAD, ItemVocab, UserVocab

__all__ = ["INPUT_NAMES", "ITEM_STAT_FIELDS", "STAT_NAMES", "USER_STAT_FIELDS", "history_items", "pad_history",
           "stats_inputs", "user_inputs"]

INPUT_NAMES = ("user_idx", "summary", "shift", "partition_count", "hist_idx", "item_idx")
# What the statistics views serve, and the model inputs made of them (in this order).
USER_STAT_FIELDS = ("user_event_count", "user_label_count", "user_positive_rate", "user_mean_rating",
                    "user_last_event_at", "user_genre_label_counts", "user_genre_positive_counts")
ITEM_STAT_FIELDS = ("item_event_count", "item_label_count", "item_positive_rate", "item_mean_rating")
STAT_NAMES = ("user_event_count", "user_label_count", "user_positive_rate", "user_mean_rating",
              "seconds_since_previous", "item_event_count", "item_label_count", "item_positive_rate",
              "item_mean_rating", "item_unseen", "user_genre_label_count", "user_genre_positive_rate")


def history_items(recent_item_ids: Sequence[str] | None, cache_item_ids: Sequence[str] | None,
                  length: int) -> list[str]:
    """The user's last ``length`` behaviours: sealed partitions' recent items, then the cache.

    The cache holds exactly what arrived after the newest sealed partition, so the concatenation
    is the user's stream in order; ``None`` (a user the store has never seen) counts as empty.
    """
    items = [*(() if recent_item_ids is None else recent_item_ids),
             *(() if cache_item_ids is None else cache_item_ids)]
    return items[-length:] if length else []


def pad_history(idx: np.ndarray, length: int) -> np.ndarray:
    """Left-pad (or keep the last ``length`` of) a 1-D index array: newest behaviour last."""
    out = np.full(length, PAD, dtype=np.int64)
    if length and idx.size:
        tail = idx[-length:]
        out[length - tail.size:] = tail
    return out


def user_inputs(*, user_id: str, user_vocab: UserVocab, item_vocab: ItemVocab,
                memory_slots: int, vector_dim: int, history_length: int,
                summary_vectors: Sequence[float] | np.ndarray | None,
                shift_vectors: Sequence[float] | np.ndarray | None,
                partition_count: int | None, recent_item_ids: Sequence[str] | None,
                cache_item_ids: Sequence[str] | None) -> dict[str, np.ndarray]:
    """One user's side of the model inputs (U = 1), from the values ``liber_ranker_v1`` serves.

    Missing long-term values (a user with no encoded partition) give zero vectors and count 0 —
    masks, never a fallback row. A vector field holds min(count, M)×D floats, or M×D zero-padded
    (the layout of 0.1, still read: both give the same block). Vector lengths are checked: a
    wrong-shaped value is an error, not a silently reshaped one.
    """
    M, D = memory_slots, vector_dim
    filled = min(max(int(partition_count or 0), 0), M)

    def block(flat) -> np.ndarray:
        out = np.zeros((1, M, D), dtype=np.float32)
        if flat is None:
            return out
        a = np.asarray(flat, dtype=np.float32)
        if a.size not in (filled * D, M * D):
            raise VectorShapeError(f"user {user_id!r}: a memory vector has {a.size} floats, expected "
                                   f"min(partition_count, M)×D = {filled}×{D} = {filled * D}")
        k = a.size // D
        out[0, :k] = a.reshape(k, D)
        return out

    hist = item_vocab.index(history_items(recent_item_ids, cache_item_ids, history_length))
    return {
        "user_idx": np.array([user_vocab.row(user_id)], dtype=np.int64),
        "summary": block(summary_vectors),
        "shift": block(shift_vectors),
        "partition_count": np.array([int(partition_count or 0)], dtype=np.int64),
        "hist_idx": pad_history(hist, history_length)[None, :],
    }


_NUMBER = (int, float, np.integer, np.floating)


def _column(values: Any, n: int, missing: float) -> np.ndarray:
    """Feast's values (None / NaN where the view has no row) → float64 of length n (1 broadcasts)."""
    arr = np.asarray(values)
    if arr.dtype.kind in "fiu":  # numbers already (the item table's columns, a training set's arrays)
        a = arr.astype(np.float64).ravel()
    elif arr.size == 1 and (arr.item() is None or (isinstance(arr.item(), _NUMBER)
                                                   and not isinstance(arr.item(), bool))):
        # One user's value online: pandas' per-call set-up was most of a request's side row
        # (0.82 of 1.32 s over 300 rows in a cProfile, 2026-12-06); the same float64, the same NaN.
        a = np.array([np.nan if arr.item() is None else float(arr.item())])
    else:
        a = pd.to_numeric(pd.Series(arr.astype(object).ravel(), dtype=object), errors="raise")
        a = a.astype("float64").to_numpy()
    a = np.where(np.isnan(a), missing, a)
    return np.broadcast_to(a, (n,)) if a.size == 1 else a


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _micros(values: Any, n: int) -> np.ndarray:
    """Timestamps as Feast returns them (datetimes, pandas Timestamps, None) → float64 µs, NaN missing."""
    vals = np.asarray(values, dtype=object).ravel()
    if vals.size == 1 and (vals[0] is None or type(vals[0]) is datetime):
        # One user's value online (a plain datetime: microseconds exactly; naive means UTC, as
        # pd.to_datetime(utc=True) reads it), without pandas' per-call set-up.
        v = vals[0]
        if v is None:
            a = np.array([np.nan])
        else:
            aware = v if v.tzinfo is not None else v.replace(tzinfo=UTC)
            a = np.array([float((aware - _EPOCH) // timedelta(microseconds=1))])
        return np.broadcast_to(a, (n,))
    t = pd.to_datetime(pd.Series(vals), utc=True)
    a, ok = np.full(len(t), np.nan), t.notna().to_numpy()
    a[ok] = t[ok].dt.as_unit("us").astype("int64").to_numpy()
    return np.broadcast_to(a, (n,)) if a.size == 1 else a


def _genre_counts(values: Any, n: int, g: int) -> np.ndarray:
    """Per-genre count lists (None where the user has no row) → ``(n, G)`` int64 (1 row broadcasts)."""
    rows = list(values)
    out = np.zeros((len(rows), g), np.int64)
    for i, v in enumerate(rows):
        if v is None or (np.ndim(v) == 0 and pd.isna(v)):
            continue
        a = np.asarray(v, dtype=np.int64)
        if a.size != g:  # a table written under another genre vocabulary: never realigned silently
            raise VectorShapeError(f"per-genre counts hold {a.size} genres, the candidates' vocabulary {g}")
        out[i] = a
    return np.broadcast_to(out, (n, g)) if len(rows) == 1 else out


def stats_inputs(user: Mapping[str, Any], items: Mapping[str, Any], t_us: int | np.ndarray,
                 priors: StatsConfig | None = None, item_genres: np.ndarray | None = None) -> np.ndarray:
    """``(N, len(STAT_NAMES))`` float32 from the user's ``USER_STAT_FIELDS`` (length 1 online, N in
    training) and the candidates' ``ITEM_STAT_FIELDS`` (length N), at time ``t_us`` (scalar or N).

    ``item_genres``: ``(N, G)`` multi-hot of the candidates' genres in the statistics tables' genre
    vocabulary (``features.stats.genre_hot``); the genre-conditional rate pools the user's labels and
    positives over the candidate's genres. None: no genres (the rate stays at its prior).
    """
    p = priors or StatsConfig()
    n = len(np.asarray(items["item_event_count"], dtype=object).ravel())
    hot = np.zeros((n, 0), np.int64) if item_genres is None else np.asarray(item_genres, np.int64)
    g_lab = (_genre_counts(user["user_genre_label_counts"], n, hot.shape[1]) * hot).sum(1).astype(np.float64)
    g_pos = (_genre_counts(user["user_genre_positive_counts"], n, hot.shape[1]) * hot).sum(1).astype(np.float64)
    last = _micros(user["user_last_event_at"], n)
    t = np.broadcast_to(np.asarray(t_us, dtype=np.float64), (n,))
    item_events = _column(items["item_event_count"], n, 0)
    cols = {
        "user_event_count": _column(user["user_event_count"], n, 0),
        "user_label_count": _column(user["user_label_count"], n, 0),
        "user_positive_rate": _column(user["user_positive_rate"], n, p.prior_rate),
        "user_mean_rating": _column(user["user_mean_rating"], n, p.prior_rating),
        "seconds_since_previous": np.where(np.isnan(last), -1.0, (t - np.nan_to_num(last)) / 1e6),
        "item_event_count": item_events,
        "item_label_count": _column(items["item_label_count"], n, 0),
        "item_positive_rate": _column(items["item_positive_rate"], n, p.prior_rate),
        "item_mean_rating": _column(items["item_mean_rating"], n, p.prior_rating),
        "item_unseen": (item_events == 0).astype(np.float64),
        "user_genre_label_count": g_lab,
        "user_genre_positive_rate": p.rate(g_pos, g_lab),
    }
    return np.column_stack([cols[c] for c in STAT_NAMES]).astype(np.float32)
