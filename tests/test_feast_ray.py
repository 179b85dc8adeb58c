"""The scale-out configuration (``feature_store.ray.yaml``): Feast's Ray offline store and Ray
compute engine, Redis Cluster online. What runs on the default configuration runs unchanged on
it and gives the same answers, exactly:

- ``get_historical_features``: the same rows and values as DuckDB (the default's offline store),
  at the edges the training builder depends on — a feature row exactly at the entity time (the
  join is inclusive), one microsecond before it, repeated entity rows, users with nothing yet;
- the training-set builder: the same arrays, on real MovieLens events plus same-second ratings;
- ``liber materialize`` (the liber writer) and Feast's own ``materialize`` (the Ray engine's
  write path) into the cluster: what the fast path then reads is the newest offline row.

Ray (2 CPUs) and the cluster are started by the session fixtures and stopped after.
"""

from __future__ import annotations

import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from feastrepo import DATA, Repo, cleanup
from modelkit import encoded_repo, movielens_users

from liber_features.features.item_text import ITEM_TEXT_SCHEMA, ITEM_TEXT_VIEW, sample_item_text
from liber_features.features.repo import (
    LONG_TERM_VIEW,
    SHORT_TERM_VIEW,
    LiberFeatureConfig,
    sample_long_term,
    sample_short_term,
    write_parquet,
)
from liber_features.serving.fetch import RedisFetcher
from liber_features.training.samples import SampleConfig, build_training_set

pytestmark = [pytest.mark.redis, pytest.mark.postgres, pytest.mark.slow]

SHAPE = LiberFeatureConfig(memory_slots=2, vector_dim=4, history_length=5)
T0 = datetime(2024, 1, 1, tzinfo=UTC)


@pytest.fixture(autouse=True)
def _env(monkeypatch):
    for name in ("LIBER_DATA_DIR", "FEAST_FS_YAML_FILE_PATH", "LIBER_REDIS_URL", "LIBER_REDIS_CONNECTION"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("LIBER_MEMORY_SLOTS", "2")
    monkeypatch.setenv("LIBER_VECTOR_DIM", "4")
    monkeypatch.setenv("LIBER_HISTORY_LENGTH", "5")


@pytest.fixture
def twin(tmp_path, redis_cluster_connection, local_ray):
    """Build a Ray-configured copy of a default repo: same definitions, same Parquet."""
    made: list[Repo] = []

    def make(default_repo: Repo) -> Repo:
        root = tmp_path / f"ray-{len(made)}"
        root.mkdir()
        ray_repo = Repo(root, "ray", redis_cluster=redis_cluster_connection)
        shutil.copytree(default_repo.root / "data", root / "data", ignore=shutil.ignore_patterns("*.db"))
        made.append(ray_repo)
        return ray_repo

    yield make
    for r in made:
        cleanup(r)


def test_ray_yaml_is_selected_by_environment_and_names_what_is_missing(tmp_path, monkeypatch):
    from feast.repo_config import load_repo_config

    from liber_features.errors import ConfigError
    from liber_features.features.repo import open_store

    repo = Repo(tmp_path, "ray", redis_cluster="10.0.0.1:7000,10.0.0.2:7000")
    selected = {"FEAST_FS_YAML_FILE_PATH": repo.env["FEAST_FS_YAML_FILE_PATH"]}
    with pytest.raises(ConfigError, match="LIBER_RAY_STORAGE_PATH, LIBER_REDIS_CLUSTER_CONNECTION, LIBER_REGISTRY_URL"):
        open_store(tmp_path, environ=selected)
    config = open_store(tmp_path, environ=repo.env).config  # builds nothing: Ray starts on first use
    assert (config.offline_store.type, config.offline_store.storage_path) == ("ray", str(tmp_path / "ray-staging"))
    assert config.batch_engine_config["type"] == "ray.engine"
    assert config.online_store.redis_type.value == "redis_cluster"
    assert config.online_store.connection_string == "10.0.0.1:7000,10.0.0.2:7000"
    for name, value in repo.env.items():  # plain `feast` reads the same file the same way
        monkeypatch.setenv(name, value)
    feast_config = load_repo_config(tmp_path, Path(repo.env["FEAST_FS_YAML_FILE_PATH"]))
    assert feast_config.online_store.connection_string == config.online_store.connection_string
    assert feast_config.batch_engine.type == "ray.engine" and feast_config.offline_store.type == "ray"


def test_historical_features_equal_duckdb_at_the_edges(tmp_path, twin):
    users = [f"u{i}" for i in range(12)]
    # Three partitions per user, sealed 100 s apart; u11's first one only at T0 + 50 s.
    rows = pd.concat([sample_long_term(users, T0 + timedelta(seconds=100 * k), partition_count=k + 1,
                                       shape=SHAPE, seed=k) for k in range(3)], ignore_index=True)
    rows.loc[rows.user_id == "u11", "sealed_at"] += pd.Timedelta(seconds=50)
    (tmp_path / "default").mkdir()
    default = Repo(tmp_path / "default", "sqlite")
    default.write(rows, sample_short_term(users, T0))
    ray_repo = twin(default)
    at = [T0 + timedelta(seconds=100), T0 + timedelta(seconds=100) - timedelta(microseconds=1),
          T0 - timedelta(seconds=1), T0 + timedelta(seconds=250), T0 + timedelta(days=1), T0 + timedelta(seconds=50)]
    entity = pd.DataFrame({
        "user_id": [u for u in users for _ in at] + ["u3", "u3", "nobody"],
        "event_timestamp": at * len(users) + [at[0], at[0], at[3]],  # u3 at T0+100 s three times
    })  # fmt: skip
    entity["row"] = np.arange(len(entity))
    features = [f"{LONG_TERM_VIEW}:{f}" for f in ("partition_count", "summary_vectors", "encoder_version")]

    def fetch(store) -> pd.DataFrame:
        out = store.get_historical_features(entity_df=entity, features=features).to_df()
        return out.sort_values("row").reset_index(drop=True)

    expected, got = fetch(default.apply()), fetch(ray_repo.apply())
    assert got.row.tolist() == entity.row.tolist()  # every entity row once, none dropped or repeated
    assert got.user_id.tolist() == entity.user_id.tolist()
    assert got.partition_count.isna().tolist() == expected.partition_count.isna().tolist()
    assert got.partition_count.fillna(-1).tolist() == expected.partition_count.fillna(-1).tolist()
    assert got.encoder_version.tolist() == expected.encoder_version.tolist()
    for a, b in zip(got.summary_vectors, expected.summary_vectors):
        if b is None:  # the one difference: no row → DuckDB null, Ray an empty list (README)
            assert len(a) == 0
        else:
            assert np.array_equal(np.float32(a), np.float32(b))
    # The edges really were exercised: at T0 + 100 s the join sees P1, 1 µs earlier only P0;
    # before T0 nothing; u11 (first seal at T0 + 50 s) sees it at exactly T0 + 50 s.
    counts = got.partition_count.fillna(-1).astype(int)
    assert counts[got.user_id == "u0"].tolist() == [2, 1, -1, 3, 3, 1]
    assert counts[got.user_id == "u11"].tolist() == [1, 1, -1, 3, 3, 1]
    assert counts.iloc[-3:].tolist() == [2, 2, -1]  # u3 three times at T0 + 100 s; nobody


def test_training_set_is_identical_on_ray(tmp_path, twin):
    events, catalog = movielens_users(["1", "5"])
    # Same-second ratings: the join at t - 1 µs must keep them out of their own partition.
    extra = pd.DataFrame({"user_id": ["u"] * 6, "item_id": list(catalog.item_id[:6]),
                          "timestamp": [100, 100, 100, 200, 200, 300], "rating": [5, 4, 2, 5, 1, 4]})
    ledger, default, store = encoded_repo(tmp_path / "default", pd.concat([events, extra]), catalog,
                                          k=7, shape=SHAPE)
    expected = build_training_set(ledger, store, SampleConfig(), SHAPE)
    ray_repo = twin(default)
    got = build_training_set(ledger, ray_repo.apply(), SampleConfig(), SHAPE)
    for name in ("user_ids", "item_ids", "ts_us", "label", "split", "user_idx", "item_idx", "hist_idx",
                 "partition_count", "slot_rows", "summary_table", "shift_table"):
        a, b = getattr(got, name), getattr(expected, name)
        assert a.dtype == b.dtype and np.array_equal(a, b), name
    assert got.counts == expected.counts and got.part_items == expected.part_items
    assert got.user_vocab == expected.user_vocab and got.item_vocab == expected.item_vocab
    assert expected.partition_count.max() > 2 and expected.counts["samples_with_0_partitions"] > 0


def test_liber_materialize_and_the_ray_engine_write_the_cluster(tmp_path, twin, monkeypatch):
    from liber_features.cli.repo import materialize as materialize_cmd

    # One data directory, named, for the tables written below and for `liber materialize --ledger`
    # (whose per-ledger default would be derived from the URL it is given).
    monkeypatch.setenv("LIBER_DATA_DIR", DATA)
    events, catalog = movielens_users(["1", "5", "7"])
    ledger, default, _ = encoded_repo(tmp_path / "default", events, catalog, k=10, shape=SHAPE)
    # What `liber items` writes: Feast's Ray store cannot read the empty table ingest leaves
    # (docs/scale-out.md).
    write_parquet(sample_item_text(list(catalog.item_id[:3]), SHAPE.vector_dim),
                  default.root / DATA / f"{ITEM_TEXT_VIEW}.parquet", ITEM_TEXT_SCHEMA, ledger)
    ray_repo = twin(default)
    store = ray_repo.apply()
    offline = pd.read_parquet(ray_repo.root / DATA / f"{LONG_TERM_VIEW}.parquet")
    newest = offline.sort_values("sealed_at").groupby("user_id").tail(1).set_index("user_id")
    cache_rows = pd.read_parquet(ray_repo.root / DATA / f"{SHORT_TERM_VIEW}.parquet")
    newest_cache = cache_rows.sort_values("event_timestamp").groupby("user_id").tail(1).set_index("user_id")

    # Feast's own materialization, through the Ray compute engine, into the cluster.
    # From before the epoch: item texts are timeless rows at the epoch (features/item_text.py), and
    # the Ray store stops on a view with no rows in the window (docs/scale-out.md).
    store.materialize(start_date=datetime(1969, 12, 31, tzinfo=UTC), end_date=datetime.now(UTC))
    fast = RedisFetcher(store)
    got = dict(zip(["1", "5", "7"], fast.fetch(["1", "5", "7"])))
    for u, row in got.items():
        assert row["partition_count"] == newest.partition_count[u]
        assert np.array_equal(row["summary_vectors"], np.float32(newest.summary_vectors[u]))
        # The push source's batch Parquet is materialized too: the cache history's newest state.
        assert row["cache_item_ids"] == list(newest_cache.cache_item_ids.get(u, [])) or (
            u not in newest_cache.index and row["cache_item_ids"] is None)
    assert any(row["cache_item_ids"] for row in got.values())
    # `liber materialize --rebuild` must restore everything on its own: drop this project's keys.
    for node in fast.client.get_primaries():
        for key in fast.client.scan_iter(match=b"*" + ray_repo.project.encode(), target_nodes=node):
            fast.client.delete(key)
    assert fast.fetch(["1"]) == [None]

    # `liber materialize` unchanged: the liber writer, the ledger's sync state, the caches.
    for name, value in ray_repo.env.items():
        monkeypatch.setenv(name, value)
    result = CliRunner().invoke(materialize_cmd, ["--repo", str(ray_repo.root), "--rebuild", "--json",
                                                  "--ledger", str(ledger.engine.url)])
    assert result.exit_code == 0, result.output
    assert '"user_long_term_memory": 3' in result.output
    got = dict(zip(["1", "5", "7"], fast.fetch(["1", "5", "7"])))
    caches = ledger_caches(ledger)
    for u, row in got.items():
        assert row["partition_count"] == newest.partition_count[u]
        assert np.array_equal(row["summary_vectors"], np.float32(newest.summary_vectors[u]))
        assert np.array_equal(row["shift_vectors"], np.float32(newest.shift_vectors[u]))
        assert row["cache_item_ids"] == caches.get(u)
    assert any(row["cache_item_ids"] for row in got.values())


def ledger_caches(ledger) -> dict[str, list[str]]:
    from liber_features.features.caches import current_caches

    caches = current_caches(ledger)
    return {u: list(items) for u, items in zip(caches.user_id, caches.cache_item_ids)}
