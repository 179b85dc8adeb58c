"""Online feature rows for a boosted ranker (a card with ``backbone: lgbm``) and the side row of a
neural one (a DIN / DCNv2 card that lists ``features``: the same row without the id and LIBER
columns, ``model.ranker_features.side_columns``).

The scorer reads the user once (the long-term memory, the short-term cache and the ``user_stats``
view, one ``HMGET`` on the Redis fast path: Feast keeps every view of an entity in one hash), takes
the candidates' statistics from the in-memory ``ItemStatsTable`` (``item_stats.py``: measured
against a per-request read in docs/serving.md), and builds the rows with the training code itself:
``model.inputs.user_inputs`` / ``stats_inputs`` then ``model.ranker_features``. The request's
moment is "now" unless the caller names one (the train/serve equality test does).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from liber_features.errors import ConfigError
from liber_features.features.stats import USER_STATS_VIEW, genre_vocab
from liber_features.model.card import ModelCard
from liber_features.model.inputs import ITEM_STAT_FIELDS, USER_STAT_FIELDS, stats_inputs
from liber_features.model.ranker_features import RankerItems, feature_names, ranker_features, side_columns

if TYPE_CHECKING:
    from feast import FeatureStore

    from liber_features.serving.item_stats import ItemStatsTable

__all__ = ["RankerRows"]


class RankerRows:
    """``rows(feeds, row, item_idx, at_us)`` → ``(N, F)`` float32 (module docstring)."""

    def __init__(self, card: ModelCard, items: RankerItems, item_stats: ItemStatsTable,
                 stats_genres: tuple[str, ...]) -> None:
        self.card, self.items, self.item_stats, self.stats_genres = card, items, item_stats, stats_genres
        boosted = card.backbone == "lgbm"
        # A neural card's LIBER enters through UIF in its graph: its side row has no LIBER column.
        self.liber = boosted and card.liber != "none"
        names = feature_names(items, self.liber)
        self.keep, expected = (None, names) if boosted else side_columns(names)
        if expected != card.features:
            raise ConfigError(f"the model card names {len(card.features)} features, its item table "
                              f"{card.item_table} gives {len(expected)} (another catalog's genres?): "
                              "re-export the model")
        # The candidates' genres in the statistics views' vocabulary, by item index, once.
        self.stats_hot = items.stats_hot(np.arange(len(items.categories)), stats_genres)

    @classmethod
    def load(cls, card: ModelCard, model_dir: str | Path, store: FeatureStore) -> RankerRows:
        from liber_features.features.sync import source_path
        from liber_features.serving.item_stats import ItemStatsTable

        if not card.item_table:
            raise ConfigError(f"the model card in {model_dir} ({card.backbone}) names features but no item table")
        items = RankerItems.load(Path(model_dir) / card.item_table)
        if items.text.shape[0] != len(card.item_vocab) + 2:
            raise ConfigError(f"{card.item_table} holds {items.text.shape[0]} items, the card's vocabulary "
                              f"{len(card.item_vocab) + 2} (with PAD and OOV)")
        return cls(card, items, ItemStatsTable.from_store(store), genre_vocab(source_path(store, USER_STATS_VIEW)))

    def rows(self, feeds: dict[str, np.ndarray], row: dict[str, Any] | None, item_idx: np.ndarray,
             item_ids: Any, at_us: int | None = None) -> np.ndarray:
        """``feeds``: the user's side from ``user_inputs``; ``row``: the fetched values (or None)."""
        at = int(time.time() * 1e6) if at_us is None else int(at_us)
        user = {f: [(row or {}).get(f)] for f in USER_STAT_FIELDS}
        cand = self.item_stats.lookup(item_ids)
        stats = stats_inputs(user, {f: cand[f] for f in ITEM_STAT_FIELDS}, at,
                             item_genres=self.stats_hot[item_idx])
        liber = {}
        if self.liber:
            count = feeds["partition_count"]
            summary = feeds["summary"]
            shift = feeds["shift"] if self.card.liber == "both" else np.zeros_like(summary)
            used = np.arange(summary.shape[1])[None, :] < np.minimum(count, summary.shape[1])[:, None]
            liber = {"summary": summary, "shift": shift, "slots_used": used, "partition_count": count}
        x = ranker_features(self.items, user_idx=feeds["user_idx"], item_idx=item_idx,
                            hist_idx=feeds["hist_idx"], stats=stats, **liber)
        return x if self.keep is None else np.ascontiguousarray(x[:, self.keep])
