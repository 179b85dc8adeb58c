"""Candidate item statistics per request: one extra pipelined read vs an in-memory item table.

10,000 items' ``item_stats`` rows are written (liber's writer, Feast's Redis layout) into a
throwaway Feast project on the production yaml (Redis online store, PostgreSQL SQL registry).
Then, round by round in a fresh random order (the machine is noisy), one request of each variant
for N random candidates (N = 100 and 1,000), each ending in the same ``(N,)`` arrays per statistic:

  feast     get_online_features for the N items (Feast's own read)
  pipeline  one pipelined round trip of N HMGETs in Feast's layout + ValueProto decode
  table     ``serving.item_stats.ItemStatsTable.lookup`` (newest row per item, in process memory)

Every variant's arrays are checked equal to the table's before timing. Prints p50 / p99 in ms.

    LIBER_TEST_REDIS_URL=redis://127.0.0.1:6379/0 .venv/bin/python bench/bench_item_stats.py
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--items", type=int, default=10_000)
    ap.add_argument("--rounds", type=int, default=300)
    args = ap.parse_args()
    redis_url = os.environ.get("LIBER_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
    pg_url = os.environ.get("LIBER_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
    tmp = Path(tempfile.mkdtemp(prefix="bench-item-stats-"))
    project = f"bench_is_{uuid.uuid4().hex[:8]}"
    shutil.copy(REPO / "feature_repo" / "definitions.py", tmp)
    text = (REPO / "feature_repo" / "feature_store.redis.yaml").read_text()
    (tmp / "feature_store.redis.yaml").write_text(text.replace("project: liber\n", f"project: {project}\n"))
    os.environ.update({"FEAST_FS_YAML_FILE_PATH": str(tmp / "feature_store.redis.yaml"),
                       "LIBER_REDIS_URL": redis_url, "LIBER_REGISTRY_URL": pg_url, "LIBER_DATA_DIR": str(tmp)})

    from liber_features.features import redis_layout as layout
    from liber_features.features.online import write_online
    from liber_features.features.repo import apply_repo, open_store
    from liber_features.features.stats import ITEM_STATS_VIEW, stats_tables, write_stats_tables
    from liber_features.model.inputs import ITEM_STAT_FIELDS
    from liber_features.serving.item_stats import ItemStatsTable

    rng = np.random.default_rng(0)
    n_ev = args.items * 20
    items = np.array([f"i{k}" for k in range(args.items)], dtype=object)
    ev = pd.DataFrame({"user_id": rng.integers(0, 2000, n_ev).astype(str),
                       "item_id": items[rng.integers(0, len(items), n_ev)],
                       "ts_us": np.sort(rng.integers(0, 10**15, n_ev)), "created_us": 1})
    rating = rng.integers(1, 11, n_ev) / 2
    tables = stats_tables(ev, ev.assign(label=(rating >= 4).astype(float), rating=rating))
    write_stats_tables(tables, tmp)
    store = open_store(tmp)
    client = None
    try:
        apply_repo(store, tmp)
        write_online(store, ITEM_STATS_VIEW, tables.item.to_pandas())
        table = ItemStatsTable.from_store(store)

        import redis

        client = redis.Redis.from_url(redis_url)
        view = store.get_feature_view(ITEM_STATS_VIEW)
        name = layout.view_name(store, view)
        fields = [layout.feature_field(name, f) for f in ITEM_STAT_FIELDS]
        keys = layout.UserKeys(store.config.project, store.config.entity_key_serialization_version, "item_id")
        refs = [f"{ITEM_STATS_VIEW}:{f}" for f in ITEM_STAT_FIELDS]

        def feast(ids):
            got = store.get_online_features(features=refs, entity_rows=[{"item_id": i} for i in ids]).to_dict()
            return {f: np.array([np.nan if v is None else v for v in got[f]], float) for f in ITEM_STAT_FIELDS}

        def pipeline(ids):
            with client.pipeline(transaction=False) as pipe:
                for i in ids:
                    pipe.hmget(keys(i), fields)
                replies = pipe.execute()
            return {f: np.array([np.nan if r[j] is None else layout.decode_value(r[j]) for r in replies], float)
                    for j, f in enumerate(ITEM_STAT_FIELDS)}

        variants = {"feast": feast, "pipeline": pipeline, "table": table.lookup}
        for n in (100, 1000):
            probe = list(rng.choice(items, n, replace=False)) + ["never-seen"]
            want = table.lookup(probe)
            for name_, fn in variants.items():  # same answers before any timing
                got = fn(probe)
                assert all(np.array_equal(got[f], want[f], equal_nan=True) for f in ITEM_STAT_FIELDS), name_
            times = {k: [] for k in variants}
            for _ in range(args.rounds):
                ids = list(rng.choice(items, n, replace=False))
                order = list(variants)
                random.shuffle(order)
                for k in order:
                    t0 = time.perf_counter()
                    variants[k](ids)
                    times[k].append((time.perf_counter() - t0) * 1e3)
            for k, v in times.items():
                print(f"N={n:5d} {k:9s} p50 {np.percentile(v, 50):8.3f} ms  p99 {np.percentile(v, 99):8.3f} ms")
    finally:
        if client is not None:
            doomed = list(client.scan_iter(match=b"*" + project.encode(), count=1000))
            for lo in range(0, len(doomed), 1000):
                client.delete(*doomed[lo:lo + 1000])
        store.registry.delete_project(project)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
