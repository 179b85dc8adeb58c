"""LIBER's affinity features as Feast computes them: the ``liber_affinities`` on-demand feature view.

A ranker that is not ours (a boosted tree behind its own serving) lists ``liber_affinities_v1`` in
its FeatureService and reads, by ``user_id`` + ``item_id``, the seven numbers our boosted backbone
trains on (``ranker_features.LIBER``). Feast runs :func:`transform` (python mode) on the rows of
two views: the user's ``user_long_term_memory`` (``summary_vectors``, ``shift_vectors``: the last
min(count, M) partitions, flattened, slot 0 newest; ``partition_count``) and the candidate's
``item_text`` (its unit text vector). The numbers come from ``ranker_features.affinities``, the
function the training builder and the scorer call, on the same arrays: the memory padded to M
slots exactly as ``inputs.user_inputs`` pads it, one call per distinct user (U = 1, the scorer's
shape). So the view's value for a user, item and moment is the training row's, bit for bit.

Feature names: the six cosines keep their ``LIBER`` names; the count is ``partitions``, because
Feast hands the UDF the source views' features under their short names too and drops those names
from its output afterwards, so an output called ``partition_count`` would vanish.

Feast re-creates the UDF from its source text in every process that reads the registry, so the
UDF in ``feature_repo/definitions.py`` only imports and calls :func:`transform`. M comes from
``LIBER_MEMORY_SLOTS`` as it does for the definitions (the padding changes the last bits of the
mean); D from the vectors themselves, checked against the memory's length.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from liber_features.errors import VectorShapeError
from liber_features.features.repo import LiberFeatureConfig
from liber_features.model.ranker_features import LIBER, affinities

__all__ = ["AFFINITY_FEATURES", "transform"]

#: The view's features, in ``LIBER`` order (``partitions`` is ``partition_count``).
AFFINITY_FEATURES = ("partitions", *LIBER[1:])


def _missing(v: Any) -> bool:
    """Feast gives None (online) or NaN (a point-in-time join without a row) for a missing value."""
    return v is None or (isinstance(v, float) and v != v)


def _memory(flat: Any, count: int, slots: int, dim: int, user: Any) -> np.ndarray:
    """One user's flattened vectors → ``(1, M, D)`` float32, zero-padded (``inputs.user_inputs``)."""
    out = np.zeros((1, slots, dim), np.float32)
    if _missing(flat):
        return out
    a = np.asarray(flat, dtype=np.float32)
    filled = min(count, slots)
    if a.size not in (filled * dim, slots * dim):
        raise VectorShapeError(f"user {user!r}: a memory vector has {a.size} floats, expected "
                               f"min(partition_count, M)×D = {filled}×{dim}")
    k = a.size // dim
    out[0, :k] = a.reshape(k, dim)
    return out


def transform(inputs: Mapping[str, Sequence[Any]]) -> dict[str, list]:
    """Feast's python-mode input (one list per column, one entry per entity row) → one list per
    :data:`AFFINITY_FEATURES` entry; a user without memory gets 0 everywhere, an item without a
    text vector cosines of 0."""
    texts = inputs["text_vector"]
    n = len(texts)
    # Rows of one user share its memory: computed once. Without the join key (Feast's schema
    # inference at apply calls the UDF on one made-up row) each row stands alone.
    users = list(inputs["user_id"]) if "user_id" in inputs else list(range(n))
    dim = next((len(v) for v in texts if not _missing(v)), 0)
    cand = np.zeros((n, dim), np.float32)
    for i, v in enumerate(texts):
        if not _missing(v):
            if len(v) != dim:
                raise VectorShapeError(f"item {inputs['item_id'][i]!r}: a text vector of {len(v)} floats, "
                                       f"the others {dim}")
            cand[i] = v
    slots = LiberFeatureConfig.from_env().memory_slots
    counts = np.array([0 if _missing(c) else int(c) for c in inputs["partition_count"]], np.int64)
    out = {name: np.zeros(n) for name in LIBER[1:]}
    rows_of: dict[Any, list[int]] = {}
    for i, u in enumerate(users):
        rows_of.setdefault(u, []).append(i)
    for u, rows in rows_of.items():  # the user's side once, as the scorer computes it (U = 1)
        i, count = rows[0], int(counts[rows[0]])
        if count == 0 or dim == 0:
            continue  # no memory, or no candidate with text: every cosine is 0, as in training
        used = np.arange(slots)[None, :] < min(count, slots)
        got = affinities(_memory(inputs["summary_vectors"][i], count, slots, dim, u),
                         _memory(inputs["shift_vectors"][i], count, slots, dim, u), used, cand[rows])
        for name, values in got.items():
            out[name][rows] = values
    # The float32 values of the training row, as Python floats (Float64 in the view: exact).
    result: dict[str, list] = {"partitions": counts.tolist()}
    result.update({name: out[name].astype(np.float32).tolist() for name in LIBER[1:]})
    return result
