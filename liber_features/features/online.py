"""Writes to the online store that never lose data.

Feast alone loses LIBER data three ways; each is closed here:
- ``materialize-incremental`` skips rows whose event time is behind its watermark: a partition sealed
  before it but encoded after it (the LLM lags the seal). :func:`materialize_late` rewrites the newest
  row of every user with rows *created* since a time.
- Feast's Redis store drops a write whose event time is not *newer* than the stored one: a re-encode
  (new ``encoder_version``, same ``sealed_at``), a cache changed within the same second. Our Redis
  writer drops only *older* rows, in Feast's own layout built with Feast's own helpers (entity key,
  ``_redis_key``, murmur3 field names, ValueProto/Timestamp), pipelined: ~8x ``write_to_online_store``.
- Feast never checks vector length: :func:`validate_vectors` runs before every write.
Other online stores (SQLite: last write wins already) are written through Feast's API.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from liber_features.errors import FeatureStoreError, VectorShapeError
from liber_features.features.repo import (
    LONG_TERM_VIEW,
    SHORT_TERM_PUSH_SOURCE,
    SHORT_TERM_VIEW,
    LiberFeatureConfig,
)

if TYPE_CHECKING:
    from feast import FeatureStore, FeatureView
    from feast.data_source import DataSource

__all__ = ["MaterializeReport", "validate_vectors", "write_online", "push_short_term_cache",
           "materialize_late", "materialize"]

# The late pass also re-checks rows created this long before the watermark (clock skew; idempotent).
LATE_MARGIN = timedelta(hours=1)
_BATCH = 500  # rows per Redis pipeline: ~12 MB at M=8, D=384; bounded client memory


@dataclass(frozen=True)
class MaterializeReport:
    """What :func:`materialize` did: up to which event time, and the late pass's rows."""

    end: datetime
    late_since: datetime | None
    late_rows: int


@contextlib.contextmanager
def _store_errors(what: str) -> Iterator[None]:
    """Store unreachable / repo not applied (Feast's and its clients' errors) → FeatureStoreError."""
    from feast.errors import FeastError
    from redis.exceptions import RedisError
    from sqlalchemy.exc import SQLAlchemyError

    try:
        yield
    except (RedisError, SQLAlchemyError, FeastError, ConnectionError, OSError) as exc:
        raise FeatureStoreError(f"{what} failed: {type(exc).__name__}: {exc}") from exc


def _vector_fields(view: FeatureView) -> dict[str, int]:
    """Float32-list fields → registered ``vector_length``, else M×D from the environment."""
    from feast.types import Array, Float32

    fallback = LiberFeatureConfig.from_env().vector_length
    return {f.name: f.vector_length or fallback for f in view.features if f.dtype == Array(Float32)}


def validate_vectors(df: pd.DataFrame, view: FeatureView) -> None:
    """Check every vector's length before any write (Feast does not), naming the bad user and field."""
    join_key = view.join_keys[0]
    for name, expected in _vector_fields(view).items():
        if name not in df.columns:
            raise VectorShapeError(f"{view.name}: column {name!r} is missing")
        lengths = np.fromiter(
            (len(v) if isinstance(v, (list, tuple, np.ndarray)) else -1 for v in df[name]), np.int64, len(df)
        )
        bad = np.flatnonzero(lengths != expected)
        if bad.size:
            i = int(bad[0])
            raise VectorShapeError(
                f"{join_key}={df[join_key].iloc[i]!r}: {view.name}.{name} has "
                f"{'no vector' if lengths[i] < 0 else f'{lengths[i]} floats'}, expected {expected} "
                f"(M×D of the registered view); {bad.size} bad row(s), nothing written"
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
    with _store_errors(f"writing {view_name}"):
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


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


@functools.cache
def _float_encoder() -> _FloatListEncoder:  # built (and self-checked) once, on first use
    return _FloatListEncoder()


class _FloatListEncoder:
    """``ValueProto(float_list_val=...)`` bytes straight from a float32 buffer.

    Building the proto from 3,072 Python floats costs ~75 µs a vector, most of the write; the
    packed wire form is fixed by protobuf, so we emit it from the raw little-endian buffer with the
    field numbers read from Feast's own descriptors, and check it against ``SerializeToString`` on
    a probe once: if protobuf ever disagrees, we fall back to the proto object.
    """

    def __init__(self) -> None:
        from feast.protos.feast.types.Value_pb2 import FloatList, Value
        outer = Value.DESCRIPTOR.fields_by_name["float_list_val"].number
        inner = FloatList.DESCRIPTOR.fields_by_name["val"].number
        self._outer, self._inner = _varint(outer << 3 | 2), _varint(inner << 3 | 2)
        self._proto = lambda a: Value(float_list_val=FloatList(val=a.tolist())).SerializeToString()
        probe = np.array([0.0, -1.5, np.nan, 3.4e38, 1e-45], dtype=np.float32)
        self._fast = self._raw(probe) == self._proto(probe)

    def _raw(self, a: np.ndarray) -> bytes:
        raw = np.ascontiguousarray(a, dtype="<f4").tobytes()
        body = self._inner + _varint(len(raw)) + raw
        return self._outer + _varint(len(body)) + body

    def __call__(self, values: object) -> bytes:
        a = np.asarray(values, dtype=np.float32)
        return self._raw(a) if self._fast and a.size else self._proto(a)


_clients: dict[str, Any] = {}


def _redis_client(cfg: Any) -> Any:
    """One client per Redis config, built by Feast's RedisOnlineStore (its cluster/sentinel/password
    parsing); kept, since the ingest loop pushes often and a fresh pool per push would churn."""
    from feast.infra.online_stores.helpers import get_online_store_from_config

    key = cfg.model_dump_json()
    if key not in _clients:
        _clients[key] = get_online_store_from_config(cfg)._get_client(cfg)  # type: ignore[attr-defined]
    return _clients[key]


def _redis_write(store: FeatureStore, view: FeatureView, df: pd.DataFrame) -> int:
    """Pipelined HSETs in Feast's Redis layout; rows older than the stored ``_ts`` are skipped."""
    import pyarrow as pa
    from feast.infra.online_stores.helpers import _mmh3, _redis_key, compute_versioned_name
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.type_map import python_values_to_proto_values
    from google.protobuf.timestamp_pb2 import Timestamp

    encode_floats = _float_encoder()
    config, cfg = store.config, store.config.online_store
    client = _redis_client(cfg)
    name = compute_versioned_name(view, config.registry.enable_online_feature_view_versioning)
    ts_field = f"_ts:{name}"
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
    redis_keys = [_redis_key(config.project, key, version) for key in entity_keys]
    # Event time as Feast stores it: Timestamp.FromDatetime of a microsecond datetime.
    event_time = pd.to_datetime(df[_source(view).timestamp_field], utc=True)
    micros = event_time.dt.as_unit("us").astype("int64").tolist()
    stamps = [Timestamp(seconds=us // 1_000_000, nanos=us % 1_000_000 * 1000) for us in micros]
    hash_fields = {n: _mmh3(f"{name}:{n}") for n in features}
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
                if (old := stored[i - lo]) and Timestamp.FromString(old).ToNanoseconds() > micros[i] * 1000:
                    continue  # Redis already holds a newer row: an older one must not replace it
                mapping = {ts_field: stamps[i].SerializeToString()}
                for n, field in hash_fields.items():
                    mapping[field] = encode_floats(columns[n][i]) if n in columns else protos[n][i].SerializeToString()
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


def materialize_late(
    store: FeatureStore, since_created_at: datetime, *, end: datetime | None = None
) -> int:
    """Write online the newest long-term row of every user with a row *created* since
    ``since_created_at``: partitions sealed before the watermark but encoded after it, and
    re-encodes of sealed partitions (new ``encoder_version``). Returns the users written."""
    from feast.infra.offline_stores.offline_utils import get_offline_store_from_config

    end = end or datetime.now(UTC)
    with _store_errors("late materialization"):
        view = store.get_feature_view(LONG_TERM_VIEW, allow_registry_cache=False)
        src, keys = _source(view), view.join_keys
        features = [f.name for f in view.features]
        offline = get_offline_store_from_config(store.config.offline_store)
        touched = offline.pull_all_from_table_or_query(
            store.config, src, keys, [], src.created_timestamp_column,
            # created_at is stamped by encoder hosts: tolerate their clocks running ahead of ours
            start_date=since_created_at, end_date=end + LATE_MARGIN,
        ).to_df()
        if touched.empty:
            return 0
        latest = offline.pull_latest_from_table_or_query(
            store.config, src, keys, features, src.timestamp_field, src.created_timestamp_column,
            start_date=end - view.ttl if view.ttl else datetime(1970, 1, 1, tzinfo=UTC),
            end_date=end,
        ).to_df()
    rows = latest[latest[keys[0]].isin(set(touched[keys[0]]))]
    return write_online(store, LONG_TERM_VIEW, rows)


def materialize(
    store: FeatureStore, *, end: datetime | None = None, late_since: datetime | None = None,
    views: list[str] | None = None,
) -> MaterializeReport:
    """``materialize-incremental`` to ``end`` (default now) of ``views`` (default all), then the late pass.

    Without ``late_since`` the late pass starts LATE_MARGIN before the long-term view's previous
    watermark (nothing to do on a first run: that window already starts at now - ttl).
    """
    end = end or datetime.now(UTC)
    with _store_errors("materialize-incremental"):
        view = store.get_feature_view(LONG_TERM_VIEW, allow_registry_cache=False)
        previous = view.most_recent_end_time
        store.materialize_incremental(end_date=end, feature_views=views)
    if late_since is None and previous is not None:
        late_since = previous.astimezone(UTC) - LATE_MARGIN
    if views is not None and LONG_TERM_VIEW not in views:
        late_since = None
    late = materialize_late(store, late_since, end=end) if late_since is not None else 0
    return MaterializeReport(end=end, late_since=late_since, late_rows=late)
