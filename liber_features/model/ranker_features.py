"""The boosted ranker's feature row: one definition for training and for serving.

A gradient-boosted ranker (LightGBM, ``encoders/ctr/gbdt.py``) takes one dense row per
(user, candidate, moment). The training builder and the online scorer both call
:func:`ranker_features`, with the same arrays ``model.inputs`` builds for the neural backbones
(``user_idx``, ``hist_idx``, the memory slots) plus the statistics inputs (``stats_inputs``):

    ids        user and item index (categoricals of the booster)
    history    its length, the cosine between the candidate's text vector and the mean text vector
               of the history, how many history items share a genre with the candidate
    statistics ``STAT_NAMES``: the user_stats / item_stats views at t, strictly before t
    LIBER      (``liber`` set) the partition count, and for the summary and shift vectors the
               cosine to the candidate's text vector of the newest slot, the max and the mean over
               filled slots (the memory and the item texts come from the same text encoder)
    genres     the candidate's genres, multi-hot, named ``genre=<name>``

Training passes one candidate per row; the scorer passes one user (leading dimension 1) and N
candidates. Every value is computed per row by the same numpy operations in the same order, so a
row is bit for bit the same whichever way it was batched — what lets a boosted tree, whose splits
are exact thresholds, score online what it was trained on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from liber_features.errors import ConfigError
from liber_features.features.stats import genre_hot, split_categories
from liber_features.model.inputs import STAT_NAMES
from liber_features.model.vocab import PAD, ItemVocab

__all__ = ["BASE", "ID_COLUMNS", "LIBER", "RankerItems", "affinities", "feature_names", "ranker_features",
           "side_columns"]

BASE = ["user", "item", "hist_len", "hist_cos_mean", "hist_same_genre", *STAT_NAMES]
LIBER = ["partition_count", *(f"{v}_cos_{s}" for v in ("summary", "shift") for s in ("newest", "max", "mean"))]
# The index columns: categoricals for a booster; the neural backbones embed them instead, so their
# side input (``encoders/ctr/side.py``) is the row without these (and without ``LIBER``).
ID_COLUMNS = ("user", "item")
CHUNK = 2048  # rows per step: bounds the (rows, M, D) and (rows, L, D) temporaries


def _unit(x: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(x, axis=-1, keepdims=True)
    return np.divide(x, n, out=np.zeros_like(x), where=n > 0)


@dataclass(frozen=True)
class RankerItems:
    """Per item index of the vocabulary: its unit text vector, its genres (multi-hot) and its
    catalog categories (the statistics genres are re-derived from them in the views' vocabulary)."""

    text: np.ndarray  # (V, D) float32, unit rows (zero for PAD / OOV / items without text)
    genres: tuple[str, ...]
    hot: np.ndarray  # (V, G) float32
    categories: np.ndarray  # (V,) str, "" where the catalog has none

    @classmethod
    def from_catalog(cls, vocab: ItemVocab, catalog, item_text: np.ndarray) -> RankerItems:
        """``catalog``: ``item_id, categories``; ``item_text``: ``(V, D)`` rows in vocabulary order."""
        if item_text.shape[0] != vocab.size:
            raise ConfigError(f"{item_text.shape[0]} item text vectors for a vocabulary of {vocab.size}")
        cats = np.full(vocab.size, "", dtype=object)
        rows = vocab.index(catalog.item_id.astype(str).to_numpy())
        cats[rows] = catalog.categories.fillna("").astype(str).to_numpy()
        cats[:ItemVocab.RESERVED] = ""  # PAD and OOV: an unknown item has no genres
        names = tuple(sorted({g for c in cats for g in split_categories(c)}))
        hot = genre_hot(list(cats), names).astype(np.float32)
        return cls(_unit(item_text.astype(np.float32)), names, hot, cats.astype(str))

    def stats_hot(self, item_idx: np.ndarray, genres: tuple[str, ...]) -> np.ndarray:
        """``(N, G')`` int64 multi-hot of the candidates' genres in a statistics table's vocabulary."""
        return genre_hot(list(self.categories[item_idx]), genres)

    def save(self, path: str | Path) -> None:
        np.savez(path, text=self.text, hot=self.hot, genres=np.array(self.genres, dtype=str),
                 categories=self.categories)

    @classmethod
    def load(cls, path: str | Path) -> RankerItems:
        try:
            with np.load(path, allow_pickle=False) as z:
                return cls(z["text"], tuple(z["genres"].tolist()), z["hot"], z["categories"])
        except (OSError, KeyError, ValueError) as exc:
            raise ConfigError(f"cannot read the ranker's item table {path}: {exc}") from exc


def feature_names(items: RankerItems, liber: bool) -> list[str]:
    return [*BASE, *(LIBER if liber else ()), *(f"genre={g}" for g in items.genres)]


def side_columns(names: Sequence[str]) -> tuple[np.ndarray, list[str]]:
    """The positions and names of a ranker row's columns a neural backbone takes as ``dense``."""
    keep = [i for i, n in enumerate(names) if n not in ID_COLUMNS and n not in LIBER]
    return np.array(keep, dtype=np.int64), [names[i] for i in keep]


def _rows(a: np.ndarray, sl: slice) -> np.ndarray:
    """Rows ``sl`` of a per-row array; a one-row (per-user) array broadcasts as it is."""
    return a if a.shape[0] == 1 else a[sl]


def affinities(summary: np.ndarray, shift: np.ndarray, slots_used: np.ndarray, cand_text: np.ndarray
               ) -> dict[str, np.ndarray]:
    """LIBER's affinity features but ``partition_count``: ``LIBER[1:]`` → ``(N,)`` float64 each.

    ``summary`` / ``shift (U, M, D)`` float32 (zero where a slot is empty), ``slots_used (U, M)``
    bool, with U = N or 1 (one user, broadcast); ``cand_text (N, D)`` the candidates' *unit* text
    vectors (``RankerItems.text`` rows; zeros for an item without text). One definition for the
    training builder, the scorer and the ``liber_affinities`` on-demand feature view: a boosted
    tree's thresholds are exact, so all three must run these very operations.
    """
    out = {}
    for name, table in (("summary", summary), ("shift", shift)):
        cos = (_unit(table) * cand_text[:, None, :]).sum(-1)  # (N, M)
        out[f"{name}_cos_newest"] = np.where(slots_used[:, 0], cos[:, 0], 0)
        out[f"{name}_cos_max"] = np.where(slots_used.any(1), np.where(slots_used, cos, -2).max(1), 0)
        out[f"{name}_cos_mean"] = (cos * slots_used).sum(1) / np.maximum(slots_used.sum(1), 1)
    return out


def ranker_features(items: RankerItems, *, user_idx: np.ndarray, item_idx: np.ndarray, hist_idx: np.ndarray,
                    stats: np.ndarray, summary: np.ndarray | None = None, shift: np.ndarray | None = None,
                    slots_used: np.ndarray | None = None, partition_count: np.ndarray | None = None
                    ) -> np.ndarray:
    """``(N, F)`` float32 rows in :func:`feature_names` order.

    ``item_idx (N,)``, ``stats (N, S)``; ``user_idx (U,)``, ``hist_idx (U, L)``, ``summary`` /
    ``shift (U, M, D)``, ``slots_used (U, M)`` bool, ``partition_count (U,)`` with U = N (training)
    or 1 (one user online). ``summary`` None: no LIBER features.
    """
    n = len(item_idx)
    if stats.shape != (n, len(STAT_NAMES)):
        raise ConfigError(f"statistics inputs of shape {stats.shape}, expected ({n}, {len(STAT_NAMES)})")
    liber = summary is not None
    text, hot = items.text, items.hot
    hist_len, hist_cos, same = np.zeros(n), np.zeros(n), np.zeros(n)
    aff = {name: np.zeros(n) for name in LIBER[1:]}
    for lo in range(0, n, CHUNK):
        sl = slice(lo, lo + CHUNK)
        cand, hist = item_idx[sl], _rows(hist_idx, sl)
        filled = hist != PAD
        mean = _unit((text[hist] * filled[..., None]).sum(1))
        hist_len[sl] = filled.sum(1)
        hist_cos[sl] = (mean * text[cand]).sum(1)
        same[sl] = ((hot[hist] @ hot[cand][..., None])[..., 0] > 0).sum(1)  # PAD/OOV rows: no genre
        if liber:
            got = affinities(_rows(summary, sl), _rows(shift, sl), _rows(slots_used, sl), text[cand])
            for name, values in got.items():
                aff[name][sl] = values
    cols: list[np.ndarray | Sequence[float]] = [
        np.broadcast_to(user_idx, (n,)), item_idx, hist_len, hist_cos, same,
        *(stats[:, j] for j in range(len(STAT_NAMES)))]
    if liber:
        cols += [np.broadcast_to(partition_count, (n,)), *(aff[name] for name in LIBER[1:])]
    return np.column_stack([*(np.asarray(c, np.float32) for c in cols), hot[item_idx]]).astype(np.float32)
