"""Feast's Redis layout (features/redis_layout.py): the writer and the fast fetch against Feast itself.

The codec and key template are checked against Feast's and protobuf's own helpers; the round trip
writes with the liber bulk writer, then reads with Feast's ``get_online_features`` and with the
Redis fast fetch, and compares exact values (float32 bit patterns included).
"""

from __future__ import annotations

import warnings
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
import redis
from feastrepo import sample_redis_repo

from liber_features.features.online import push_short_term_cache, write_online
from liber_features.features.redis_layout import FloatCodec, UserKeys, decode_value, stamp, stamp_nanos
from liber_features.features.repo import LONG_TERM_VIEW, SHORT_TERM_VIEW, sample_long_term, sample_short_term
from liber_features.serving.fetch import RedisFetcher

NOW = datetime.now(UTC).replace(microsecond=0)
USERS = ["1", "", "用户-42", "a" * 300]


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for name in ("LIBER_DATA_DIR", "LIBER_MEMORY_SLOTS", "LIBER_VECTOR_DIM", "FEAST_FS_YAML_FILE_PATH",
                 "LIBER_REDIS_URL", "LIBER_REDIS_CONNECTION", "LIBER_REGISTRY_URL"):
        monkeypatch.delenv(name, raising=False)


def bits(values) -> list[int]:
    return np.asarray(values, dtype=np.float32).view(np.uint32).tolist()


@pytest.mark.parametrize("values", [
    [], [1.0], [np.nan, -0.0, 1e-45, np.inf, -3.4e38],
    np.arange(3072, dtype=np.float32) / 7,  # a 12 KiB body: two-byte length varints
])  # fmt: skip
def test_float_codec_equals_protobuf_both_ways(values):
    from feast.protos.feast.types.Value_pb2 import FloatList, Value

    codec = FloatCodec()
    assert codec.fast_encode and codec.fast_decode  # the start-up self-check passed on this protobuf
    a = np.asarray(values, dtype=np.float32)
    reference = Value(float_list_val=FloatList(val=a.tolist())).SerializeToString()
    assert codec.encode(a) == reference
    decoded = codec.decode(reference)
    assert decoded.dtype == np.float32 and bits(decoded) == bits(a)


def test_scalar_values_and_timestamps_decode_as_feast_wrote_them():
    from feast.protos.feast.types.Value_pb2 import StringList, Value
    from google.protobuf.timestamp_pb2 import Timestamp

    assert decode_value(Value(int64_val=23).SerializeToString()) == 23
    assert decode_value(Value(string_list_val=StringList(val=["i1", "i2"])).SerializeToString()) == ["i1", "i2"]
    assert decode_value(Value().SerializeToString()) is None
    micros = 1_709_294_400_123_456
    reference = Timestamp()
    reference.FromDatetime(datetime.fromtimestamp(micros // 1_000_000, UTC).replace(microsecond=123_456))
    assert stamp(micros) == reference.SerializeToString()
    assert stamp_nanos(stamp(micros)) == micros * 1000


@pytest.mark.parametrize("user_id", [*USERS, "tab\tand\nnewline", "0" * 3])
def test_user_keys_equal_feasts_helper(user_id):
    from feast.infra.online_stores.helpers import _redis_key
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import Value

    keys = UserKeys("liber_t_keys", 3)
    assert keys.templated  # the template matched Feast's helper on the start-up probes
    ek = EntityKey(join_keys=["user_id"], entity_values=[Value(string_val=user_id)])
    assert keys(user_id) == _redis_key("liber_t_keys", ek, 3)


@pytest.fixture
def redis_repo(tmp_path):
    yield from sample_redis_repo(tmp_path, USERS, NOW)


@pytest.mark.redis
@pytest.mark.postgres
def test_liber_writes_feast_and_the_fast_fetch_read_the_same_exact_values(redis_repo):
    store = redis_repo.apply()
    rows = sample_long_term(USERS, NOW - timedelta(hours=1), partition_count=4, encoder_version="v7", seed=4)
    rows.at[0, "summary_vectors"][:5] = [np.nan, -0.0, 1e-45, np.inf, -np.inf]  # bit patterns must survive
    caches = sample_short_term(USERS, NOW, items=3)
    assert write_online(store, LONG_TERM_VIEW, rows) == len(USERS)
    assert push_short_term_cache(store, caches) == len(USERS)

    feats = [f"{LONG_TERM_VIEW}:{f}" for f in ("summary_vectors", "shift_vectors", "partition_count",
                                               "recent_item_ids", "encoder_version")]
    feast = store.get_online_features(features=[*feats, f"{SHORT_TERM_VIEW}:cache_item_ids"],
                                      entity_rows=[{"user_id": u} for u in USERS]).to_dict()
    fast = RedisFetcher(store, timeout_ms=5000).fetch([*USERS, "nobody"])
    assert fast[-1] is None
    for i, got in enumerate(fast[:-1]):
        for col in ("summary_vectors", "shift_vectors"):
            assert bits(got[col]) == bits(rows[col][i]) == bits(feast[col][i]), (i, col)
        for col in ("partition_count", "encoder_version"):
            assert got[col] == feast[col][i] == rows[col][i], (i, col)
        assert got["recent_item_ids"] == feast["recent_item_ids"][i] == list(rows.recent_item_ids[i])
        assert got["cache_item_ids"] == feast["cache_item_ids"][i] == list(caches.cache_item_ids[i])


class Redis50Pool(redis.ConnectionPool):
    """redis-py 5.0–5.2's ``get_connection`` signature: the command name is required."""

    def get_connection(self, command_name, *keys, **options):
        self.asked = command_name
        return super().get_connection()


@pytest.mark.redis
@pytest.mark.postgres
def test_fast_fetch_takes_its_connection_on_every_supported_redis_py(redis_repo):
    """5.0–5.2 require the command name, 5.3 on deprecate it: each gets what it expects."""
    store = redis_repo.apply()
    write_online(store, LONG_TERM_VIEW, sample_long_term(USERS[:1], NOW, partition_count=2))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the installed redis-py warns when given the name
        current = RedisFetcher(store, timeout_ms=5000).fetch(USERS[:1])[0]
    old = RedisFetcher(store, timeout_ms=5000)
    kwargs = old.client.connection_pool.connection_kwargs
    old.client.connection_pool = Redis50Pool(**kwargs)
    got = old.fetch(USERS[:1])[0]
    assert old.client.connection_pool.asked == "HMGET"
    assert got["partition_count"] == current["partition_count"] == 2
    assert bits(got["summary_vectors"]) == bits(current["summary_vectors"])
