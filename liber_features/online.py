"""Writes to the online store that never lose data.

Feast alone loses LIBER data in three ways, all fixed here:

- ``materialize-incremental`` windows by event time from its last watermark, so a partition sealed
  before the watermark but encoded after it (the LLM lags the seal) is skipped: :func:`materialize_late`
  rewrites, for every user with rows *created* since a point in time, that user's newest row.
- Feast's Redis store drops a write whose event timestamp is not *newer* than the stored one, so a
  re-encode under a new ``encoder_version`` (same ``sealed_at``) or a short-term cache changed within
  the same second never lands. Our Redis writer drops only *older* rows ("not older" wins).
- Feast never checks vector length: every write here checks ``summary_vectors``/``shift_vectors``
  against the registered ``vector_length`` first (:class:`VectorShapeError`, nothing written).

On Redis, rows are written in Feast's own layout with Feast's own helpers (entity-key
serialisation, ``_redis_key``, murmur3 field names, ``ValueProto``/``Timestamp`` protos) through one
redis-py pipeline per batch, ~an order of magnitude faster than ``write_to_online_store``. On any
other online store (SQLite: last write wins already) the writes go through Feast's API.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from liber_features.errors import FeatureStoreError, VectorShapeError
from liber_features.featurestore import LONG_TERM_VIEW, SHORT_TERM_PUSH_SOURCE, SHORT_TERM_VIEW

if TYPE_CHECKING:
    from feast import FeatureStore, FeatureView

__all__ = [
    "MaterializeReport",
    "validate_vectors",
    "write_online",
    "push_short_term_cache",
    "materialize_late",
    "materialize",
]

# Rows created up to this long before the previous watermark are re-checked by the late pass:
# it absorbs clock skew between encoder hosts and the materializer. Rewrites are idempotent.
LATE_MARGIN = timedelta(hours=1)
_BATCH = 500  # rows per Redis pipeline: ~12 MB at M=8, D=384; bounded client memory


@dataclass(frozen=True)
class MaterializeReport:
    end: datetime
    late_since: datetime | None
    late_rows: int


@contextlib.contextmanager
def _store_errors(what: str) -> Iterator[None]:
    """Turn "store unreachable / not applied" failures from Feast and its clients into FeatureStoreError."""
    from feast.errors import FeastError
    from redis.exceptions import RedisError
    from sqlalchemy.exc import SQLAlchemyError

    try:
        yield
    except (RedisError, SQLAlchemyError, FeastError, ConnectionError, OSError) as exc:
        raise FeatureStoreError(f"{what} failed: {type(exc).__name__}: {exc}") from exc


def _vector_fields(view: FeatureView) -> dict[str, int]:
    return {f.name: f.vector_length for f in view.features if f.vector_length}


def validate_vectors(df: pd.DataFrame, view: FeatureView) -> None:
    """Check every vector cell against the registered ``vector_length`` (M×D) before any write."""
    join_key = view.join_keys[0]
    for name, expected in _vector_fields(view).items():
        if name not in df.columns:
            raise VectorShapeError(f"{view.name}: column {name!r} is missing")
        lengths = np.fromiter((-1 if v is None else len(v) for v in df[name]), np.int64, len(df))
        bad = np.flatnonzero(lengths != expected)
        if bad.size:
            i = int(bad[0])
            raise VectorShapeError(
                f"{join_key}={df[join_key].iloc[i]!r}: {view.name}.{name} has "
                f"{'no vector' if lengths[i] < 0 else f'{lengths[i]} floats'}, expected {expected} "
                f"(M×D from the registered view); {bad.size} bad row(s), nothing written"
            )


def _latest_per_entity(df: pd.DataFrame, view: FeatureView) -> pd.DataFrame:
    """Newest row per entity by (event time, created time), as materialization picks it."""
    src = view.batch_source
    order = [c for c in (src.timestamp_field, src.created_timestamp_column) if c and c in df.columns]
    return df.sort_values(order, kind="stable").drop_duplicates(view.join_keys, keep="last")


def _is_redis(store: FeatureStore) -> bool:
    return store.config.online_store.type == "redis"


def write_online(store: FeatureStore, view_name: str, df: pd.DataFrame, *, skip_older: bool = True) -> int:
    """Write ``df`` (entity, event-time column, features) to the online store; return rows written.

    Validates vectors, keeps each entity's newest row, then on Redis writes Feast's layout directly:
    a row older than what Redis holds is skipped (``skip_older``), an equal one overwrites.
    Elsewhere it calls Feast (``push`` for the push-fed view, else ``write_to_online_store``).
    """
    with _store_errors(f"writing {view_name}"):
        view = store.get_feature_view(view_name)
        validate_vectors(df, view)
        if df.empty:
            return 0
        rows = _latest_per_entity(df, view)
        if _is_redis(store):
            return _redis_write(store, view, rows, skip_older=skip_older)
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


_encode_floats: _FloatListEncoder | None = None


def _redis_write(store: FeatureStore, view: FeatureView, df: pd.DataFrame, *, skip_older: bool) -> int:
    """Pipelined HSETs in Feast's Redis layout; rows older than the stored ``_ts`` are skipped."""
    import pyarrow as pa
    from feast.infra.online_stores.helpers import (
        _mmh3,
        _redis_key,
        compute_versioned_name,
        get_online_store_from_config,
    )
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.type_map import python_values_to_proto_values
    from feast.types import Array, Float32
    from google.protobuf.timestamp_pb2 import Timestamp

    global _encode_floats
    _encode_floats = _encode_floats or _FloatListEncoder()
    config, cfg = store.config, store.config.online_store
    client = get_online_store_from_config(cfg)._get_client(cfg)  # Feast's own connection parsing
    name = compute_versioned_name(view, config.registry.enable_online_feature_view_versioning)
    ts_field = f"_ts:{name}"
    features = {f.name: f.dtype for f in view.features}
    vectors = [n for n, t in features.items() if t == Array(Float32)]
    others = [(n, t.to_value_type()) for n, t in features.items() if n not in vectors]
    others += [(c.name, c.dtype.to_value_type()) for c in view.entity_columns]
    # Non-vector columns take the exact path Feast's own write takes: arrow -> numpy -> type_map.
    table = pa.Table.from_pandas(df[[n for n, _ in others]], preserve_index=False)
    protos = {
        n: python_values_to_proto_values(table.column(n).to_numpy(zero_copy_only=False), t)
        for n, t in others
    }
    version = config.entity_key_serialization_version
    redis_keys = [
        _redis_key(config.project, EntityKey(join_keys=view.join_keys, entity_values=[protos[k][i] for k in view.join_keys]), version)
        for i in range(len(df))
    ]
    stamps = []
    for t in pd.to_datetime(df[view.batch_source.timestamp_field], utc=True):
        stamp = Timestamp()
        stamp.FromDatetime(t.to_pydatetime())
        stamps.append(stamp)
    hash_fields = {n: _mmh3(f"{name}:{n}") for n in features}
    columns = {n: df[n].to_numpy() for n in vectors}
    written = 0
    for lo in range(0, len(df), _BATCH):
        hi = min(lo + _BATCH, len(df))
        if skip_older:
            with client.pipeline(transaction=False) as pipe:
                for key in redis_keys[lo:hi]:
                    pipe.hget(key, ts_field)
                stored = pipe.execute()
        with client.pipeline(transaction=False) as pipe:
            for i in range(lo, hi):
                old = stored[i - lo] if skip_older else None
                if old and Timestamp.FromString(old).ToNanoseconds() > stamps[i].ToNanoseconds():
                    continue  # Redis already holds a newer row: an older one must not replace it
                mapping = {ts_field: stamps[i].SerializeToString()}
                for n, field in hash_fields.items():
                    value = columns[n][i] if n in columns else protos[n][i]
                    mapping[field] = _encode_floats(value) if n in columns else value.SerializeToString()
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
    """Write online the newest long-term row of every user with a row *created* since ``since_created_at``.

    Catches what ``materialize-incremental`` skips: partitions sealed before its watermark but
    encoded after it, and re-encodes (new ``encoder_version``) of already-sealed partitions.
    Returns the number of users written.
    """
    from feast.infra.offline_stores.offline_utils import get_offline_store_from_config

    end = end or datetime.now(timezone.utc)
    with _store_errors("late materialization"):
        view = store.get_feature_view(LONG_TERM_VIEW, allow_registry_cache=False)
        src, keys = view.batch_source, view.join_keys
        features = [f.name for f in view.features]
        offline = get_offline_store_from_config(store.config.offline_store)
        touched = offline.pull_all_from_table_or_query(
            store.config, src, keys, [], src.created_timestamp_column,
            start_date=since_created_at, end_date=end,
        ).to_df()
        if touched.empty:
            return 0
        latest = offline.pull_latest_from_table_or_query(
            store.config, src, keys, features, src.timestamp_field, src.created_timestamp_column,
            start_date=end - view.ttl if view.ttl else datetime(1970, 1, 1, tzinfo=timezone.utc),
            end_date=end,
        ).to_df()
    rows = latest[latest[keys[0]].isin(set(touched[keys[0]]))]
    return write_online(store, LONG_TERM_VIEW, rows)


def materialize(
    store: FeatureStore, *, end: datetime | None = None, late_since: datetime | None = None
) -> MaterializeReport:
    """``materialize-incremental`` to ``end`` (default now), then the late-row pass.

    Without ``late_since`` the late pass starts LATE_MARGIN before the long-term view's previous
    watermark (nothing to do on a first run: that window already starts at now - ttl).
    """
    end = end or datetime.now(timezone.utc)
    with _store_errors("materialize-incremental"):
        view = store.get_feature_view(LONG_TERM_VIEW, allow_registry_cache=False)
        previous = view.most_recent_end_time
        store.materialize_incremental(end_date=end)
    if late_since is None and previous is not None:
        late_since = previous.astimezone(timezone.utc) - LATE_MARGIN
    late = materialize_late(store, late_since, end=end) if late_since is not None else 0
    return MaterializeReport(end=end, late_since=late_since, late_rows=late)
