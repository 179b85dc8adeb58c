"""Throwaway copies of feature_repo/ for tests: own Feast project per copy, cleaned up after.

On Redis the copy uses the real server and a PostgreSQL SQL registry; an unreachable Redis fails
the test (``redis_client`` pings), it is never skipped. The ``ray`` backend is the scale-out yaml
(Ray offline store + Ray engine, Redis Cluster online, PostgreSQL registry) on a cluster the test
started (``tests/rediscluster.py``), staging under the copy.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pandas as pd

from liber_features.features.item_text import ITEM_TEXT_SCHEMA, sample_item_text
from liber_features.features.repo import (
    ITEM_TEXT_VIEW,
    LONG_TERM_SCHEMA,
    SHORT_TERM_SCHEMA,
    apply_repo,
    open_store,
    sample_long_term,
    sample_short_term,
    write_parquet,
)
from liber_features.features.stats import sample_stats, write_stats_tables
from liber_features.settings import ledger_key

REPO = Path(__file__).resolve().parents[1] / "feature_repo"
REDIS_URL = os.environ.get("LIBER_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
PG_URL = os.environ.get("LIBER_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
# The default data directory of a test that sets no LIBER_DATA_DIR nor LIBER_LEDGER_URL (one per ledger).
DATA = f"data/{ledger_key(None, None)}"
LONG_PATH, SHORT_PATH = f"{DATA}/user_long_term_memory.parquet", f"{DATA}/user_short_term_cache.parquet"


class Repo:
    """A throwaway feature repo + its store; ``env`` is what a shell would export."""

    def __init__(self, root: Path, backend: str, *, redis_cluster: str | None = None) -> None:
        self.root, self.backend = root, backend
        self.project = f"liber_t_{uuid.uuid4().hex[:10]}"
        shutil.copy(REPO / "definitions.py", root)
        for name in ("feature_store.yaml", "feature_store.redis.yaml", "feature_store.ray.yaml"):
            text = (REPO / name).read_text().replace("project: liber\n", f"project: {self.project}\n")
            (root / name).write_text(text)
        self.env: dict[str, str] = {}
        if backend == "redis":
            self.env |= {
                "FEAST_FS_YAML_FILE_PATH": str(root / "feature_store.redis.yaml"),
                "LIBER_REDIS_URL": REDIS_URL,
                "LIBER_REGISTRY_URL": PG_URL,
            }
        if backend == "ray":
            if redis_cluster is None:
                raise ValueError("the ray backend needs a Redis Cluster connection")
            self.env |= {
                "FEAST_FS_YAML_FILE_PATH": str(root / "feature_store.ray.yaml"),
                "LIBER_REDIS_CLUSTER_CONNECTION": redis_cluster,
                "LIBER_REGISTRY_URL": PG_URL,
                "LIBER_RAY_STORAGE_PATH": str(root / "ray-staging"),
            }

    def write(self, long_term: pd.DataFrame | None = None, short_term: pd.DataFrame | None = None,
              ledger=None, data: str = DATA) -> None:
        """Sample tables into ``data`` (the repo's default data dir), stamped with ``ledger`` if given."""
        if long_term is not None:
            write_parquet(long_term, self.root / data / "user_long_term_memory.parquet", LONG_TERM_SCHEMA, ledger)
        if short_term is not None:
            write_parquet(short_term, self.root / data / "user_short_term_cache.parquet", SHORT_TERM_SCHEMA, ledger)
        if long_term is not None:  # every view needs its table for Feast's own materialize
            first = int(pd.Timestamp(long_term.sealed_at.min()).value // 1000)
            write_stats_tables(sample_stats(sorted(set(long_term.user_id)), ["i1", "i2", "i3"], first),
                               self.root / data, ledger)
            write_parquet(sample_item_text(["i1", "i2", "i3"]), self.root / data / f"{ITEM_TEXT_VIEW}.parquet",
                          ITEM_TEXT_SCHEMA, ledger)

    def store(self):
        return open_store(self.root, environ={**os.environ, **self.env})

    def apply(self):
        """``feast apply`` through the Python API: every Feast object definitions.py declares."""
        store = self.store()
        apply_repo(store, self.root)
        return store


def redis_client():
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    client.ping()  # unreachable Redis must fail the test, never skip it
    return client


def cleanup(repo: Repo) -> None:
    if repo.backend == "ray":  # its cluster dies with the test: only the registry rows remain
        repo.store().registry.delete_project(repo.project)
    if repo.backend != "redis":
        return
    client = redis_client()
    keys = list(client.scan_iter(match=b"*" + repo.project.encode(), count=1000))
    if keys:
        client.delete(*keys)
    repo.store().registry.delete_project(repo.project)  # never store.teardown(): it drops every project


def sample_redis_repo(tmp_path: Path, users: list[str], now) -> Iterator[Repo]:
    """A Redis-backed repo holding the sample long-term (30 days old) and short-term (1 day) rows of
    ``users``; its keys and registry project are removed afterwards. Use with ``yield from``."""
    from datetime import timedelta

    repo = Repo(tmp_path, "redis")
    redis_client()
    repo.write(sample_long_term(users, now - timedelta(days=30)), sample_short_term(users, now - timedelta(days=1)))
    yield repo
    cleanup(repo)
