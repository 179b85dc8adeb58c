"""Broker messages → event rows, under the same field rules as file ingest (``events.check_rows``).

A message is one JSON object: ``user_id``, ``item_id``, ``timestamp`` (alias ``ts``; epoch seconds or
ISO-8601), optional ``rating`` (alias ``weight``), ``event_id``, ``event_type`` (alias ``event``) and
``label`` (0 / 1, also JSON true / false; ``ingest.feedback``); other keys are ignored, so a
producer may add its own metadata. A message without ``event_id`` gets its broker position as id
(``nats:STREAM:SEQ``, ``redis:KEY:ENTRY-ID``; a sha1 of it past 64 characters): a redelivery of it is
then the same event. A bad message — not JSON, not an object, a missing or mistyped field, any rule
of ``check_rows`` (ids, timestamps, ratings, an item the ledger's catalog does not hold) — becomes a
quarantine row naming its position (``source``, ``row`` = the position's integer form) and reason;
the consumer commits it with the batch and acks it, so it never blocks the stream and is never lost.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import orjson
import pandas as pd

from liber_features.ingest.events import LoadConfig, check_rows
from liber_features.ledger.fieldrules import ID_MAX_CHARS, RAW_CHARS, REASON_CHARS, cap_text
from liber_features.stream.source import Delivery

__all__ = ["ParsedBatch", "parse_messages", "position_event_id"]

#: plain event logs' rating scale (``events``), which messages share
RATING_RANGE = (0.5, 5.0)
_ALIASES = {"user_id": ("user_id",), "item_id": ("item_id",), "ts": ("timestamp", "ts"),
            "rating": ("rating", "weight"), "event_id": ("event_id",),
            # implicit feedback, as in files (ingest/feedback.py): optional
            "event_type": ("event_type", "event"), "label": ("label",)}
_REQUIRED = ("user_id", "item_id", "ts")
_SKIPPABLE = ("rating", "event_type", "label")  # an empty cell reads as absent (an empty event_id is an error)


@dataclass
class ParsedBatch:
    """``events``: accepted rows (``events.EVENT_COLUMNS`` plus ``broker_us``), in delivery order,
    ``row`` = index of the delivery in the batch; ``quarantine``: rows for the ledger's table."""

    events: pd.DataFrame
    quarantine: list[dict]


def position_event_id(position: str) -> str:
    """The id of a message that brings none: its position, hashed when longer than an id may be."""
    if len(position) <= ID_MAX_CHARS["event_id"]:
        return position
    return "pos:" + hashlib.sha1(position.encode()).hexdigest()


_NOT_DECODED = object()  # a body the batch decode did not reach (decode it alone)


def _decode_all(bodies: list[bytes | None]) -> list[object]:
    """Every body's JSON value, in one ``orjson.loads`` of the batch as an array when every body
    decodes (the common case: one C call instead of one per message). Any other outcome — a body
    missing, one that is not JSON, or one holding several values (``1,2``), which shows as a count
    that does not match — leaves each body to be decoded on its own, so a bad one is named alone."""
    if all(b is not None for b in bodies):
        # orjson: ~3x json's speed here, and stricter (UTF-8 only, no NaN, 64-bit integers), so
        # whatever it refuses goes through json.loads one body at a time, exactly as before.
        try:
            values = orjson.loads(b"[" + b",".join(bodies) + b"]")  # type: ignore[arg-type]
        except orjson.JSONDecodeError:
            values = None
        if isinstance(values, list) and len(values) == len(bodies):
            return values
    return [_NOT_DECODED] * len(bodies)


def _structural(body: bytes | None, obj: object = _NOT_DECODED) -> tuple[dict | None, str, str]:
    """(the message's fields, '', '') or (None, field, reason) when it is not a usable object."""
    if body is None:
        return None, "row", "message has no body (the broker lost it)"
    if obj is _NOT_DECODED:
        try:
            obj = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            return None, "row", f"message is not JSON: {exc}"
    if not isinstance(obj, dict):
        return None, "row", f"message is a JSON {type(obj).__name__}, not an object"
    fields: dict[str, object] = {}
    for field, names in _ALIASES.items():
        value = obj.get(names[0])
        if value is None and len(names) > 1:
            value = obj.get(names[1])
        if value is None:
            if field in _REQUIRED:
                return None, field, f"{names[0]} is missing"
            continue
        kind = type(value)
        if kind is bool and field == "label":  # JSON true / false: a label's natural form
            fields[field] = "true" if value else "false"
            continue
        # bool is an int in Python; JSON true is never an id, a time or a rating
        if kind is not str and kind is not int and kind is not float:
            return None, field, f"{names[0]} must be a string or a number, got JSON {kind.__name__}"
        if kind is float and field in ("user_id", "item_id", "event_id"):
            return None, field, f"{names[0]} must be a string or an integer, got {value!r}"
        fields[field] = value if kind is str else str(value)
    return fields, "", ""


def _quarantine_row(d: Delivery, field: str, reason: str) -> dict:
    raw = cap_text(d.data.decode("utf-8", "replace") if d.data is not None else "", RAW_CHARS)
    return {"key": hashlib.sha1(f"{d.position}\x1f{d.offset}\x1f{raw}".encode()).hexdigest(),
            "source": d.position, "row": d.offset, "field": field,
            "reason": cap_text(reason, REASON_CHARS), "raw": raw}


def parse_messages(deliveries: list[Delivery], config: LoadConfig | None = None,
                   catalog_items: pd.Series | None = None) -> ParsedBatch:
    """Accepted rows and quarantine rows of one fetched batch (module docstring)."""
    config = config or LoadConfig()
    quarantine: list[dict] = []
    index: list[int] = []
    cells: dict[str, list[object]] = {f: [] for f in _ALIASES}
    decoded = _decode_all([d.data for d in deliveries])
    for i, d in enumerate(deliveries):
        fields, field, reason = _structural(d.data, decoded[i])
        if fields is None:
            quarantine.append(_quarantine_row(d, field, reason))
            continue
        fields.setdefault("event_id", position_event_id(d.position))
        index.append(i)
        for f, column in cells.items():
            column.append(fields.get(f, ""))  # no rating: an empty cell, as in a CSV
    raw = pd.DataFrame({f: pd.Series(column, dtype=object) for f, column in cells.items()})
    raw.index = pd.Index(index, dtype="int64")
    # An optional field no message of the batch has is absent, as a file without the column:
    # the same rows and reasons, without the rules running over a column of empty cells.
    columns = {f: None if f in _SKIPPABLE and not any(v != "" for v in cells[f]) else f for f in _ALIASES}
    accepted, checks = check_rows(raw, columns, RATING_RANGE, config, catalog_items)
    bad = checks.reason.notna()
    for i in raw.index[bad]:
        quarantine.append(_quarantine_row(deliveries[i], checks.field[i], checks.reason[i]))
    accepted["broker_us"] = [deliveries[i].broker_us for i in accepted["row"]]
    return ParsedBatch(events=accepted.reset_index(drop=True), quarantine=quarantine)
