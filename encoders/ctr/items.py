"""Item text vectors: title + genres through the same text encoder as the interests.

Computed once per (catalog, encoder) and cached on disk (``LIBER_CACHE_DIR``), then stored with
the model (a constant inside the exported graph). The table has the item vocabulary's rows
(``ItemVocab.size``); the reserved rows (PAD, OOV) are zeros.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd

from liber_features.features.files import atomic_write
from liber_features.model.vocab import OOV, ItemVocab
from liber_features.settings import get_settings

__all__ = ["item_text", "item_vectors", "partition_item_vectors"]


def item_text(title: str, categories: str) -> str:
    cats = ", ".join(c for c in str(categories or "").split("|") if c and c != "(no genres listed)")
    return f"{title}. Genres: {cats}" if cats else str(title)


def item_vectors(vocab: ItemVocab, catalog: pd.DataFrame, encoder, *, cache: bool = True) -> np.ndarray:
    """``(vocab.size, D)`` float32, row ``vocab[item]`` = that item's unit text vector.

    Items missing from the catalog are encoded from their id alone (nothing else is known).
    """
    meta = catalog.set_index("item_id")
    ids = sorted(vocab, key=vocab.__getitem__)
    texts = [item_text(meta.at[i, "title"], meta.at[i, "categories"]) if i in meta.index else str(i)
             for i in ids]
    key = hashlib.sha256("\x1e".join([encoder.encoder_id, *ids, *texts]).encode()).hexdigest()[:16]
    path = get_settings().cache_dir / f"item-vectors-{key}.npy"
    if cache and path.exists():
        return np.load(path)
    out = np.zeros((vocab.size, encoder.dim), np.float32)
    out[vocab.index(ids)] = encoder.encode(texts)
    if cache:
        with atomic_write(path) as f:  # a concurrent trainer never loads a half-written cache
            np.save(f, out)
    return out


def partition_item_vectors(part_items: list[list[str]], vocab: ItemVocab,
                           item_vecs: np.ndarray, owners: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """The no-LLM memory: per partition row, the unit mean of its items' text vectors ("summary"),
    and the unit change from the same user's previous partition ("shift"; zeros for partition 0).

    ``part_items`` and ``owners`` are aligned with the training set's partition table (row 0 empty,
    rows of one user consecutive in partition order).
    """
    D = item_vecs.shape[1]
    summ = np.zeros((len(part_items), D), np.float32)
    shift = np.zeros_like(summ)

    def unit(v: np.ndarray) -> np.ndarray:
        n = np.linalg.norm(v)
        return v / n if n > 0 else v

    for r in range(1, len(part_items)):
        idx = vocab.index(part_items[r])
        idx = idx[idx != OOV]  # an item the vocabulary lacks has no text vector
        if idx.size:
            summ[r] = unit(item_vecs[idx].mean(0))
        if r > 1 and owners[r] == owners[r - 1]:
            shift[r] = unit(summ[r] - summ[r - 1])
    return summ, shift
