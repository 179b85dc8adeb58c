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
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from liber_features.errors import VectorShapeError
from liber_features.model.vocab import PAD, ItemVocab, UserVocab

__all__ = ["INPUT_NAMES", "history_items", "pad_history", "user_inputs"]

INPUT_NAMES = ("user_idx", "summary", "shift", "partition_count", "hist_idx", "item_idx")


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
