"""Feast's Redis layout in one place: what the bulk writer writes and the fast fetch reads.

Feast's ``RedisOnlineStore`` keeps one hash per entity:

- **key**: the serialized ``EntityKey`` followed by the project name (Feast's ``_redis_key``);
- **fields**: ``mmh3("<view>:<feature>")`` (4 bytes) per feature, plus ``_ts:<view>`` holding the
  row's event time as a ``Timestamp`` proto; ``<view>`` is the view's (versioned) name;
- **values**: ``ValueProto`` bytes.

The writer (``features/online.py``) and the fast fetch (``serving/fetch.py``) must agree with Feast
bit for bit, or the fetch reads nothing and Feast reads garbage. Two parts are on the hot path and
are built here from templates rather than through Feast's protos: the user key (a per-request cost
of the fetch) and the float-list value (~75 µs a vector through ``FloatList``, most of a write).
Each template is checked against Feast's own helper on probe values when it is built — the start-up
self-check — and a mismatch falls back to Feast's helper instead of writing or reading keys and
values Feast does not.
"""

from __future__ import annotations

import functools
import struct
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from feast import FeatureStore, FeatureView
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey

__all__ = ["FloatCodec", "UserKeys", "decode_value", "feature_field", "float_codec", "redis_key",
           "stamp", "stamp_nanos", "ts_field", "view_name"]

# Probes of the self-checks: NaN, the largest float32 and a denormal must survive bit for bit; keys
# must hold for empty, non-ASCII and long ids (a 300-byte id needs a two-byte varint in some encodings).
_FLOAT_PROBE = np.array([0.0, -0.0, -1.5, np.nan, 3.4e38, 1e-45, np.inf], dtype=np.float32)
_KEY_PROBES = ("u-1", "", "用户-42", "x" * 300)


def view_name(store: FeatureStore, view: FeatureView) -> str:
    """The view's name as Feast's Redis store spells it in field names (versioned when enabled)."""
    from feast.infra.online_stores.helpers import compute_versioned_name

    return compute_versioned_name(view, store.config.registry.enable_online_feature_view_versioning)


def feature_field(view: str, feature: str) -> bytes:
    """Hash field of one feature: murmur3 of ``<view>:<feature>``, as Feast's ``_mmh3``."""
    from feast.infra.online_stores.helpers import _mmh3

    return _mmh3(f"{view}:{feature}")


def ts_field(view: str) -> str:
    """Hash field holding the row's event time."""
    return f"_ts:{view}"


def redis_key(project: str, entity_key: EntityKey, version: int) -> bytes:
    """Key of the entity's hash, through Feast's own helper (any join keys, any value types)."""
    from feast.infra.online_stores.helpers import _redis_key

    return _redis_key(project, entity_key, version)


def stamp(micros: int) -> bytes:
    """``_ts`` value of a microsecond event time, as Feast stores ``Timestamp.FromDatetime``."""
    from google.protobuf.timestamp_pb2 import Timestamp

    return Timestamp(seconds=micros // 1_000_000, nanos=micros % 1_000_000 * 1000).SerializeToString()


def stamp_nanos(raw: bytes) -> int:
    """A stored ``_ts`` value → nanoseconds since the epoch."""
    from google.protobuf.timestamp_pb2 import Timestamp

    return Timestamp.FromString(raw).ToNanoseconds()


def decode_value(raw: bytes) -> Any:
    """A scalar or list ``ValueProto`` → its Python value (a list for ``*_list_val``; None if unset)."""
    from feast.protos.feast.types.Value_pb2 import Value

    v = Value.FromString(raw)
    kind = v.WhichOneof("val")
    val = getattr(v, kind) if kind else None
    return list(val.val) if hasattr(val, "val") else val


class UserKeys:
    """Hash key of a ``user_id`` (one string join key), from a template checked against Feast.

    Feast's key for ``u`` is ``<entity-key prefix><len(u) as <I><u utf-8><project>``: the prefix is
    cut from Feast's own key for ``""``, and the template must equal Feast's helper on every probe,
    else :attr:`templated` is False and every key goes through the helper (a Feast that serialises
    differently costs speed, never correctness).
    """

    def __init__(self, project: str, version: int, join_key: str = "user_id") -> None:
        self.project, self.version, self.join_key = project, version, join_key
        suffix = project.encode()
        self._prefix = self.feast_key("")[: -len(suffix) - 4]
        self._suffix = suffix
        self.templated = all(self._from_template(p) == self.feast_key(p) for p in _KEY_PROBES)

    def feast_key(self, user_id: str) -> bytes:
        """The key through Feast's ``EntityKey`` + ``_redis_key`` (the reference)."""
        from feast.protos.feast.types.EntityKey_pb2 import EntityKey
        from feast.protos.feast.types.Value_pb2 import Value

        ek = EntityKey(join_keys=[self.join_key], entity_values=[Value(string_val=str(user_id))])
        return redis_key(self.project, ek, self.version)

    def _from_template(self, user_id: str) -> bytes:
        raw = str(user_id).encode()
        return self._prefix + struct.pack("<I", len(raw)) + raw + self._suffix

    def __call__(self, user_id: str) -> bytes:
        return self._from_template(user_id) if self.templated else self.feast_key(user_id)


def _encode_varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7


class FloatCodec:
    """``ValueProto(float_list_val=...)`` bytes ⇄ float32 arrays, without per-float protobuf work.

    The packed wire form is fixed by protobuf: ``<outer tag><len><inner tag><len><little-endian
    float32s>``, with the field numbers read from Feast's own descriptors (never assumed). Encoding
    and decoding are each checked against ``SerializeToString`` / ``FromString`` on a probe when
    built; if protobuf ever disagrees, that direction goes through the proto object instead.
    """

    def __init__(self) -> None:
        from feast.protos.feast.types.Value_pb2 import FloatList, Value

        self._Value, self._FloatList = Value, FloatList
        self._outer = (Value.DESCRIPTOR.fields_by_name["float_list_val"].number << 3) | 2
        self._inner = (FloatList.DESCRIPTOR.fields_by_name["val"].number << 3) | 2
        self._outer_tag, self._inner_tag = _encode_varint(self._outer), _encode_varint(self._inner)
        reference = self._proto_bytes(_FLOAT_PROBE)
        self.fast_encode = self._raw(_FLOAT_PROBE) == reference
        self.fast_decode = all(
            np.array_equal(self._parse(raw).view(np.uint32), a.view(np.uint32))
            for a in (_FLOAT_PROBE, _FLOAT_PROBE[:0]) for raw in [self._proto_bytes(a)])

    def _proto_bytes(self, a: np.ndarray) -> bytes:
        return self._Value(float_list_val=self._FloatList(val=a.tolist())).SerializeToString()

    def _raw(self, a: np.ndarray) -> bytes:
        raw = np.ascontiguousarray(a, dtype="<f4").tobytes()
        body = self._inner_tag + _encode_varint(len(raw)) + raw
        return self._outer_tag + _encode_varint(len(body)) + body

    def _parse(self, raw: bytes) -> np.ndarray:
        tag, pos = _read_varint(raw, 0)
        if tag == self._outer:
            _, pos = _read_varint(raw, pos)
            if pos == len(raw):  # an empty list: the inner field is absent
                return np.zeros(0, np.float32)
            tag2, pos2 = _read_varint(raw, pos)
            if tag2 == self._inner:
                n, pos2 = _read_varint(raw, pos2)
                return np.frombuffer(raw, dtype="<f4", count=n // 4, offset=pos2)
        return self._slow_decode(raw)

    def _slow_decode(self, raw: bytes) -> np.ndarray:
        return np.asarray(self._Value.FromString(raw).float_list_val.val, np.float32)

    def encode(self, values: object) -> bytes:
        """A float vector → the ``ValueProto`` bytes Feast writes for it."""
        a = np.asarray(values, dtype=np.float32)
        return self._raw(a) if self.fast_encode and a.size else self._proto_bytes(a)

    def decode(self, raw: bytes) -> np.ndarray:
        """``ValueProto{float_list_val}`` bytes → float32 array (zero-copy on the fast path, read-only)."""
        return self._parse(raw) if self.fast_decode else self._slow_decode(raw)


@functools.cache
def float_codec() -> FloatCodec:
    """The process's codec, built (and self-checked) once, on first use."""
    return FloatCodec()
