"""The ``item_text`` view: each item's unit text vector, keyed by ``item_id``.

The ``liber_affinities`` on-demand view takes the cosine between a candidate's text vector and the
user's summary and shift vectors, so both must live in one space: the item texts go through the
text encoder that encoded the memory, at the memory's D, with no D′ projection in between
(:func:`check_space` refuses anything else, naming both sides). ``liber items`` (the torch half,
``cli/items.py``) computes the vectors and hands them to :func:`write_item_text`.

Rows are the unit vectors the ranker's item table holds (``RankerItems.text``), not re-normalised
later: the view serves the very floats the training row was computed from. They are timeless,
so each row's event time is the epoch: a point-in-time join at any sample's moment sees it;
``created_at`` (the write) makes the newest write of an item win.

Like the statistics tables, the Parquet is rewritten whole, atomically, stamped with its ledger
(``ownership.py``), and the same rows go online at once (``online.write_online``; ``liber
materialize --rebuild`` writes them again after the online store lost its data).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pyarrow as pa

from liber_features.errors import ConfigError, VectorShapeError
from liber_features.features.repo import ITEM_TEXT_VIEW, LiberFeatureConfig, write_parquet

if TYPE_CHECKING:
    from feast import FeatureStore

    from liber_features.ledger.store import Ledger

__all__ = ["EPOCH", "ITEM_TEXT_SCHEMA", "ITEM_TEXT_VIEW", "check_space", "ensure_item_text", "item_text_frame",
           "sample_item_text", "write_item_text"]

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_TS = pa.timestamp("us", tz="UTC")
ITEM_TEXT_SCHEMA = pa.schema([
    ("item_id", pa.string()), ("event_timestamp", _TS), ("created_at", _TS),
    ("text_vector", pa.list_(pa.float32())), ("text_encoder_id", pa.string()),
])  # fmt: skip


def check_space(shape: LiberFeatureConfig, encoder_dim: int, encoder_id: str, memory_encoder_id: str | None) -> None:
    """Refuse item vectors that cannot be compared with the memory's: another D, or another encoder
    (a D′ projection stores its own encoder id in the memory's versions)."""
    if encoder_dim != shape.vector_dim:
        raise ConfigError(f"the text encoder {encoder_id} gives D={encoder_dim}, the long-term view holds "
                          f"D={shape.vector_dim} (LIBER_VECTOR_DIM): the affinity cosines need one space, "
                          "so the memory must be encoded at the text encoder's D, without a D′ projection")
    if memory_encoder_id is not None and memory_encoder_id != encoder_id:
        raise ConfigError(f"the long-term memory was encoded by {memory_encoder_id}, the item texts would be by "
                          f"{encoder_id}: the affinity cosines need one space (no D′ projection, same encoder)")


def item_text_frame(item_ids: Sequence[str], vectors: np.ndarray, encoder_id: str,
                    created_at: datetime | None = None) -> pd.DataFrame:
    """One row per item: its unit vector (``(N, D)`` float32, rows as ``RankerItems.text`` holds them)."""
    vectors = np.asarray(vectors)
    if vectors.ndim != 2 or vectors.shape[0] != len(item_ids):
        raise VectorShapeError(f"{len(item_ids)} items, text vectors of shape {vectors.shape}")
    now = pd.Timestamp(created_at or datetime.now(UTC))
    return pd.DataFrame({"item_id": [str(i) for i in item_ids], "event_timestamp": pd.Timestamp(EPOCH),
                         "created_at": now, "text_vector": list(vectors.astype(np.float32, copy=False)),
                         "text_encoder_id": encoder_id})


def write_item_text(store: FeatureStore, frame: pd.DataFrame, ledger: Ledger | None = None) -> tuple[Path, int]:
    """Write the view's Parquet (where the registry reads it; checked to be ``ledger``'s data
    directory first) and the same rows online. Returns (the Parquet's path, rows written online)."""
    from liber_features.features.online import store_errors, write_online
    from liber_features.features.sync import check_sources, source_path

    dim = LiberFeatureConfig.from_env().vector_dim
    lengths = {len(v) for v in frame.text_vector}
    if lengths - {dim}:
        raise VectorShapeError(f"{ITEM_TEXT_VIEW}: text vectors of {sorted(lengths)} floats, the view holds "
                               f"D={dim} (LIBER_VECTOR_DIM)")
    with store_errors(f"reading {ITEM_TEXT_VIEW} from the registry (run `feast apply` first)"):
        path = source_path(store, ITEM_TEXT_VIEW)
        if ledger is not None:
            check_sources(store, ledger, [ITEM_TEXT_VIEW])
    write_parquet(frame, path, ITEM_TEXT_SCHEMA, ledger)
    return path, write_online(store, ITEM_TEXT_VIEW, frame)


def ensure_item_text(data_dir: str | Path, ledger: Ledger | None = None) -> bool:
    """Write an empty ``item_text.parquet`` into ``data_dir`` when there is none; True if written.

    Feast's own ``materialize`` / ``materialize-incremental`` read every view's source and stop at
    the first missing file, so a repo whose items were never encoded (``liber items`` needs the
    torch half) would fail there. An empty table materializes nothing and leaves the on-demand
    affinities null, as for an item never encoded; ``liber items`` replaces it.
    """
    path = Path(data_dir) / f"{ITEM_TEXT_VIEW}.parquet"
    if path.exists():
        return False
    write_parquet(pd.DataFrame({n: pd.Series(dtype=object) for n in ITEM_TEXT_SCHEMA.names}), path,
                  ITEM_TEXT_SCHEMA, ledger)
    return True


def sample_item_text(item_ids: Sequence[str], dim: int | None = None, seed: int = 0) -> pd.DataFrame:
    """Random unit text vectors for ``item_ids`` (a bootstrap, and the fixture of tests and benchmarks)."""
    dim = dim or LiberFeatureConfig.from_env().vector_dim
    v = np.random.default_rng(seed).standard_normal((len(item_ids), dim)).astype(np.float32)
    return item_text_frame(item_ids, v / np.linalg.norm(v, axis=1, keepdims=True), "sample-encoder@0", EPOCH)
