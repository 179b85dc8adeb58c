"""The liber Redis writer and the fast fetch path on a real 3-master Redis Cluster.

The cluster is started by the test (``tests/rediscluster.py``) on free local ports and stopped
after; the repo is the scale-out yaml (``feature_store.ray.yaml``: ``redis_type: redis_cluster``).
1,000 users are written by the liber writer and must read back identically — bit for bit — through
Feast's ``get_online_features`` and through ``RedisFetcher``, one user at a time and pipelined.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from feastrepo import Repo, cleanup

from liber_features.errors import OnlineStoreError
from liber_features.features.online import write_online
from liber_features.features.repo import (
    LONG_TERM_VIEW,
    SHORT_TERM_VIEW,
    sample_long_term,
    sample_short_term,
)
from liber_features.serving.fetch import FEATURES, FeastFetcher, RedisFetcher

pytestmark = [pytest.mark.redis, pytest.mark.postgres, pytest.mark.slow]

NOW = datetime.now(UTC).replace(microsecond=0)
USERS = [f"cluster-user-{i}" for i in range(1000)]


@pytest.fixture
def cluster_repo(tmp_path, monkeypatch, redis_cluster_connection, local_ray):
    for name in ("LIBER_DATA_DIR", "FEAST_FS_YAML_FILE_PATH", "LIBER_REDIS_URL", "LIBER_REDIS_CONNECTION"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("LIBER_MEMORY_SLOTS", "4")
    monkeypatch.setenv("LIBER_VECTOR_DIM", "16")
    r = Repo(tmp_path, "ray", redis_cluster=redis_cluster_connection)
    r.write(sample_long_term(USERS, NOW - timedelta(days=3), partition_count=3),
            sample_short_term(USERS, NOW - timedelta(days=1)))
    yield r
    cleanup(r)


def bits(values) -> np.ndarray:
    return np.asarray(values, dtype=np.float32).view(np.uint32)


def test_writer_and_fast_path_on_redis_cluster(cluster_repo, redis_cluster_connection):
    from rediscluster import Cluster

    store = cluster_repo.apply()
    assert store.config.online_store.redis_type.value == "redis_cluster"
    long_term = sample_long_term(USERS, NOW - timedelta(hours=2), partition_count=3, seed=7)
    long_term.at[0, "summary_vectors"][:4] = [np.nan, -0.0, 1e-45, np.inf]  # bit patterns must survive
    short_term = sample_short_term(USERS, NOW - timedelta(hours=1), items=5)
    assert write_online(store, LONG_TERM_VIEW, long_term) == len(USERS)
    assert write_online(store, SHORT_TERM_VIEW, short_term) == len(USERS)

    # The keys really are spread: every master holds some of this project's users.
    client = Cluster(tuple(int(n.split(":")[1]) for n in redis_cluster_connection.split(","))).client()
    suffix = b"*" + cluster_repo.project.encode()
    per_node = {n.name: sum(1 for _ in client.scan_iter(match=suffix, target_nodes=n, count=1000))
                for n in client.get_primaries()}
    assert sum(per_node.values()) == len(USERS) and len(per_node) == 3 and min(per_node.values()) > 0

    fast = RedisFetcher(store)
    users = USERS + ["nobody"]
    piped, via_feast = fast.fetch(users), FeastFetcher(store).fetch(users)
    assert piped[-1] is None and via_feast[-1] is None
    for i in range(len(USERS)):
        a, b = piped[i], via_feast[i]
        for _, f in FEATURES:
            if f.endswith("_vectors"):
                assert a[f].dtype == np.float32 and np.array_equal(bits(a[f]), bits(b[f])), (i, f)
            else:
                assert a[f] == b[f], (i, f)
        assert np.array_equal(bits(a["summary_vectors"]), bits(long_term.summary_vectors[i]))
        assert np.array_equal(bits(a["shift_vectors"]), bits(long_term.shift_vectors[i]))
        assert a["recent_item_ids"] == list(long_term.recent_item_ids[i]) and a["partition_count"] == 3
        assert a["cache_item_ids"] == list(short_term.cache_item_ids[i]) and a["encoder_version"] == "v1"
    for i in (0, 499, 999):  # the single-user path (one HMGET routed by slot) reads the same
        single = fast.fetch([USERS[i]])[0]
        assert all(np.array_equal(bits(single[f]), bits(piped[i][f])) for f in ("summary_vectors", "shift_vectors"))


def test_writer_skips_older_rows_on_cluster(cluster_repo):
    store = cluster_repo.apply()
    users = USERS[:50]
    newer = sample_long_term(users, NOW - timedelta(hours=1), partition_count=2, encoder_version="v2")
    assert write_online(store, LONG_TERM_VIEW, newer) == 50
    older = sample_long_term(users, NOW - timedelta(hours=5), partition_count=1, encoder_version="v0")
    assert write_online(store, LONG_TERM_VIEW, older) == 0  # the read-then-write spans all nodes
    assert {r["encoder_version"] for r in RedisFetcher(store).fetch(users)} == {"v2"}


def test_unreachable_cluster_is_an_online_store_error(cluster_repo):
    store = cluster_repo.apply()
    cluster_repo.env["LIBER_REDIS_CLUSTER_CONNECTION"] = "127.0.0.1:1"  # nothing listens on port 1
    with pytest.raises(OnlineStoreError, match="Redis Cluster via 127.0.0.1:1"):
        RedisFetcher(cluster_repo.store())
    assert store.project == cluster_repo.project
