"""Writes to the online store that never lose data.

Feast alone loses LIBER data three ways; each is closed here or in the sync state:
- ``materialize-incremental`` skips rows whose event time is behind its watermark: a partition sealed
  before it but encoded after it (the LLM lags the seal). ``liber materialize`` does not use the
  watermark: ``features/sync.py`` writes every row created since the last successful write.
- Feast's Redis store drops a write whose event time is not *newer* than the stored one: a re-encode
  (new ``encoder_version``, same ``sealed_at``), a cache changed within the same second. Our Redis
  writer drops only *older* rows, in Feast's own layout (``features/redis_layout.py``: entity key,
  murmur3 field names, ValueProto/Timestamp values), pipelined: ~8x ``write_to_online_store``.
- Feast never checks vector length: :func:`validate_vectors` runs before every write (a vector
  field holds min(partition_count, M)×D floats; M×D, the zero-padded layout of 0.1, is still read).
Other online stores (SQLite: last write wins already) are written through Feast's API.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from liber_features.errors import FeatureStoreError, VectorShapeError
from liber_features.features import redis_layout as layout
from liber_features.features.repo import SHORT_TERM_PUSH_SOURCE, SHORT_TERM_VIEW, LiberFeatureConfig

if TYPE_CHECKING:
    from feast import FeatureStore, FeatureView
    from feast.data_source import DataSource

__all__ = ["push_short_term_cache", "store_errors", "validate_vectors", "write_online"]

_BATCH = 500  # rows per Redis pipeline: ~12 MB at M=8, D=384; bounded client memory


@contextlib.contextmanager
def store_errors(what: str) -> Iterator[None]:
    """Store unreachable / repo not applied (Feast's and its clients' errors) → FeatureStoreError."""
    from feast.errors import FeastError
    from redis.exceptions import RedisError
    from sqlalchemy.exc import SQLAlchemyError

    try:
        yield
    except (RedisError, SQLAlchemyError, FeastError, ConnectionError, OSError) as exc:
        raise FeatureStoreError(f"{what} failed: {type(exc).__name__}: {exc}") from exc


def _vector_fields(view: FeatureView) -> dict[str, int]:
    """Float32-list fields → registered ``vector_length`` (M×D), else M×D from the environment."""
    from feast.types import Array, Float32

    fallback = LiberFeatureConfig.from_env().vector_length
    return {f.name: f.vector_length or fallback for f in view.features if f.dtype == Array(Float32)}


def validate_vectors(df: pd.DataFrame, view: FeatureView) -> None:
    """Check every vector's length before any write (Feast does not), naming the bad user and field.

    A row with ``partition_count`` c holds min(c, M)×D floats (only filled slots); M×D, the
    zero-padded rows of 0.1, stay valid so an old table can be written back while it is rebuilt.
    """
    join_key = view.join_keys[0]
    shape = LiberFeatureConfig.from_env()
    for name, longest in _vector_fields(view).items():
        if name not in df.columns:
            raise VectorShapeError(f"{view.name}: column {name!r} is missing")
        lengths = np.fromiter(
            (len(v) if isinstance(v, (list, tuple, np.ndarray)) else -1 for v in df[name]), np.int64, len(df)
        )
        dim = longest // shape.memory_slots if longest % shape.memory_slots == 0 else shape.vector_dim
        slots = longest // dim
        counts = (df["partition_count"].fillna(0).to_numpy(dtype=np.int64) if "partition_count" in df.columns
                  else np.full(len(df), slots))
        filled = np.minimum(np.maximum(counts, 0), slots) * dim
        bad = np.flatnonzero((lengths != filled) & (lengths != longest))
        if bad.size:
            i = int(bad[0])
            raise VectorShapeError(
                f"{join_key}={df[join_key].iloc[i]!r}: {view.name}.{name} has "
                f"{'no vector' if lengths[i] < 0 else f'{lengths[i]} floats'}, expected {filled[i]} "
                f"(min(partition_count, M)×D of the registered view); {bad.size} bad row(s), nothing written"
            )


def _source(view: FeatureView) -> DataSource:
    if view.batch_source is None:  # every LIBER view has one; a foreign view may not
        raise FeatureStoreError(f"feature view {view.name!r} has no batch source")
    return view.batch_source


def _latest_per_entity(df: pd.DataFrame, view: FeatureView) -> pd.DataFrame:
    """Newest row per entity by (event time, created time), as materialization picks it."""
    src = _source(view)
    order = [c for c in (src.timestamp_field, src.created_timestamp_column) if c and c in df.columns]
    return df.sort_values(order, kind="stable").drop_duplicates(view.join_keys, keep="last")


def write_online(store: FeatureStore, view_name: str, df: pd.DataFrame) -> int:
    """Validate, keep each entity's newest row, write online; return rows written. On Redis an
    older row than the stored one is skipped, an equal or newer one overwrites (Feast's layout,
    written directly); elsewhere Feast's ``push`` (push-fed view) or ``write_to_online_store``."""
    with store_errors(f"writing {view_name}"):
        view = store.get_feature_view(view_name)
        validate_vectors(df, view)
        if df.empty:
            return 0
        rows = _latest_per_entity(df, view)
        if store.config.online_store.type == "redis":
            return _redis_write(store, view, rows)
        if view.stream_source is not None and view.stream_source.name == SHORT_TERM_PUSH_SOURCE:
            from feast.data_source import PushMode

            store.push(view.stream_source.name, rows, to=PushMode.ONLINE)
        else:
            store.write_to_online_store(view_name, rows)
        return len(rows)


_clients: dict[str, Any] = {}


def _redis_client(cfg: Any) -> Any:
    """One client per Redis config, built by Feast's RedisOnlineStore (its cluster/sentinel/password
    parsing); kept, since the ingest loop pushes often and a fresh pool per push would churn."""
    from feast.infra.online_stores.helpers import get_online_store_from_config

    key = cfg.model_dump_json()
    if key not in _clients:
        client = get_online_store_from_config(cfg)._get_client(cfg)  # type: ignore[attr-defined]
        _fail_fast(client)
        _clients[key] = client
    return _clients[key]


def _fail_fast(client: Any) -> None:
    """A dead Redis must fail a write in about a second, not in redis-py's default retries with
    exponential backoff from 1 s (~8 s per call, measured): the stream consumer's flusher writes
    between commits, and a stalled write stalled the consumer. The writers' callers already retry
    what failed (the sync state / the flusher's pending set never move past an unwritten row)."""
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    if not isinstance(client, redis.Redis):
        return  # a Redis Cluster client keeps its own retries: they carry it through a failover
    # New connections take these; a bulk pipeline of 500 users (~12 MB) is far under 10 s.
    client.connection_pool.connection_kwargs.update(retry=Retry(NoBackoff(), 1), socket_connect_timeout=1.0,
                                                    socket_timeout=10.0)
    if hasattr(client, "retry"):  # redis-py 6 also retries at the client level
        client.retry = Retry(NoBackoff(), 1)


def _redis_write(store: FeatureStore, view: FeatureView, df: pd.DataFrame) -> int:
    """Pipelined HSETs in Feast's Redis layout; rows older than the stored ``_ts`` are skipped."""
    import pyarrow as pa
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.type_map import python_values_to_proto_values

    codec = layout.float_codec()
    config, cfg = store.config, store.config.online_store
    client = _redis_client(cfg)
    name = layout.view_name(store, view)
    ts_field = layout.ts_field(name)
    features = {f.name: f.dtype for f in view.features}
    vectors = list(_vector_fields(view))
    others = [(n, t.to_value_type()) for n, t in features.items() if n not in vectors]
    others += [(c.name, c.dtype.to_value_type()) for c in view.entity_columns]
    # Non-vector columns take the exact path Feast's own write takes: arrow -> numpy -> type_map.
    arrow = pa.Table.from_pandas(df[[n for n, _ in others]], preserve_index=False)
    protos = {n: python_values_to_proto_values(arrow[n].to_numpy(zero_copy_only=False), t) for n, t in others}
    version = config.entity_key_serialization_version
    join_keys = view.join_keys  # a type-checked property: ~20 µs a call, so not once per row
    entity_keys = (
        EntityKey(join_keys=join_keys, entity_values=[protos[k][i] for k in join_keys]) for i in range(len(df))
    )
    redis_keys = [layout.redis_key(config.project, key, version) for key in entity_keys]
    # Event time as Feast stores it: Timestamp.FromDatetime of a microsecond datetime.
    event_time = pd.to_datetime(df[_source(view).timestamp_field], utc=True)
    micros = event_time.dt.as_unit("us").astype("int64").tolist()
    hash_fields = {n: layout.feature_field(name, n) for n in features}
    columns = {n: df[n].to_numpy() for n in vectors}
    written = 0
    for lo in range(0, len(df), _BATCH):
        hi = min(lo + _BATCH, len(df))
        with client.pipeline(transaction=False) as pipe:
            for key in redis_keys[lo:hi]:
                pipe.hget(key, ts_field)
            stored = pipe.execute()
        with client.pipeline(transaction=False) as pipe:
            for i in range(lo, hi):
                if (old := stored[i - lo]) and layout.stamp_nanos(old) > micros[i] * 1000:
                    continue  # Redis already holds a newer row: an older one must not replace it
                mapping = {ts_field: layout.stamp(micros[i])}
                for n, field in hash_fields.items():
                    mapping[field] = codec.encode(columns[n][i]) if n in columns else protos[n][i].SerializeToString()
                pipe.hset(redis_keys[i], mapping=mapping)
                if cfg.key_ttl_seconds:
                    pipe.expire(redis_keys[i], cfg.key_ttl_seconds)
                written += 1
            pipe.execute()
    return written


def push_short_term_cache(store: FeatureStore, df: pd.DataFrame) -> int:
    """Push short-term cache states online (the view behind ``user_short_term_cache_push``).

    Online only: the partition module already appends these rows to the Parquet batch source, and
    Feast's file offline store would rewrite that whole file, non-atomically, on every push.
    """
    return write_online(store, SHORT_TERM_VIEW, df)
