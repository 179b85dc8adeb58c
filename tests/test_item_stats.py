"""The scorer's in-memory item statistics table: the same values the online store serves after
``liber materialize``, refreshed when the offline table changes, the old table kept on a bad file."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
from feastrepo import Repo
from modelkit import write_log
from test_stats import CATALOG, EVENTS

from liber_features.features.stats import ITEM_STATS_VIEW
from liber_features.features.sync import sync_view
from liber_features.ingest.events import load_events
from liber_features.ingest.job import ingest
from liber_features.ingest.partition import PartitionRule
from liber_features.ledger.store import Ledger
from liber_features.model.inputs import ITEM_STAT_FIELDS
from liber_features.serving.item_stats import ItemStatsTable
from liber_features.training.statistics import refresh_stats_tables


def test_table_equals_the_online_store_and_follows_the_offline_table(tmp_path):
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    ingest(load_events(*write_log(tmp_path / "in", EVENTS, CATALOG)), ledger, PartitionRule(k=50), progress=False)
    repo_dir = tmp_path / "repo"
    repo_dir.mkdir()
    refresh_stats_tables(ledger, repo_dir)
    store = Repo(repo_dir, "sqlite").apply()
    sync_view(store, ledger, ITEM_STATS_VIEW)
    table = ItemStatsTable.from_store(store)
    items = ["d", "a", "zzz", "c", "b", "e"]
    online = store.get_online_features(features=[f"{ITEM_STATS_VIEW}:{f}" for f in ITEM_STAT_FIELDS],
                                       entity_rows=[{"item_id": x} for x in items]).to_dict()
    got = table.lookup(items)
    for f in ITEM_STAT_FIELDS:
        want = np.array([np.nan if v is None else v for v in online[f]], float)
        assert np.array_equal(got[f], want, equal_nan=True), f
    assert got["item_event_count"].tolist()[:2] == [1, 3] and np.isnan(got["item_event_count"][2])

    # Unchanged file: nothing re-read. New events: the rebuilt table is swapped in.
    assert table.refresh() is False
    more = pd.DataFrame({"user_id": ["u9"], "item_id": ["e"], "timestamp": [900], "rating": [5.0]})
    ingest(load_events(*write_log(tmp_path / "in2", more, CATALOG)), ledger, PartitionRule(k=50), progress=False)
    refresh_stats_tables(ledger, repo_dir)
    os.utime(table.path, ns=(table._snap.mtime_ns + 10**9,) * 2)  # a rewrite within the clock's tick still shows
    assert table.refresh() is True
    e = table.lookup(["e"])
    assert (e["item_event_count"][0], e["item_label_count"][0], e["item_positive_rate"][0]) == (1, 1, (1 + 5) / 11)

    # A broken file keeps the previous table and is counted.
    table.path.write_bytes(b"not parquet")
    assert table.refresh() is False and table.refresh_errors == 1
    assert table.lookup(["e"])["item_event_count"][0] == 1
