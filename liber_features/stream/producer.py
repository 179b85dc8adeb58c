"""Publish an event file's rows to a broker (``liber produce``): for demos, benchmarks and tests.

Rows go out in event-time order (ties by user, then event id), so each user's events keep the order
file ingest partitions them in; one JSON message per event (``messages`` reads it back) with the
event's id (NATS: also its ``Nats-Msg-Id``, so a re-run within the server's duplicate window stores
nothing twice). ``rate`` paces publishing to that many events per second (in batches of up to 1/20 s
of events); ``shards`` spreads users over ``SUBJECT.<n>`` (NATS) / ``KEY.<n>`` (Redis) by a stable
hash of the user id, for one consumer per shard.
"""

from __future__ import annotations

import json
import time
import zlib
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from liber_features.ingest.events import LoadedEvents
from liber_features.stream.connect import Publisher

__all__ = ["ProduceSummary", "encode_events", "produce", "shard_of"]

_CHUNK = 1_000  # messages per publish call when not rate-limited


@dataclass
class ProduceSummary:
    published: int = 0
    seconds: float = 0.0
    events_per_s: float = 0.0

    def as_dict(self) -> dict:
        return asdict(self)


def shard_of(user_id: str, shards: int) -> int:
    """A user's shard: crc32 of the id (stable across processes, unlike ``hash``)."""
    return zlib.crc32(user_id.encode()) % shards


def _time_text(ts_us: int) -> int | str:
    """Whole seconds as an epoch number, else ISO-8601 with microseconds (exact, unlike a float)."""
    if ts_us % 1_000_000 == 0:
        return ts_us // 1_000_000
    return pd.Timestamp(ts_us, unit="us", tz="UTC").isoformat()


def encode_events(events: pd.DataFrame, shards: int = 1) -> list[tuple[str, str, bytes]]:
    """(shard suffix or '', event id, JSON body) per event, in publishing order (module docstring)."""
    order = events.sort_values(["ts", "user_id", "event_id"], kind="stable")
    ts_us = ((order["ts"] - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(microseconds=1)).to_numpy()
    ratings = order["rating"].to_numpy(dtype="float64")
    # Implicit feedback (ingest/feedback.py) travels when the log has it: without it a typed,
    # labelled log would reach the ledger untyped and unlabelled, unlike its file ingest.
    kinds = order["event_type"].to_numpy() if "event_type" in order else None
    labels = order["label"].to_numpy(dtype="float64") if "label" in order else None
    out = []
    for i, (eid, user, item) in enumerate(zip(order["event_id"], order["user_id"], order["item_id"])):
        body = {"event_id": eid, "user_id": user, "item_id": item, "timestamp": _time_text(int(ts_us[i])),
                "rating": None if np.isnan(ratings[i]) else float(ratings[i])}
        if kinds is not None and not pd.isna(kinds[i]):
            body["event_type"] = str(kinds[i])
        if labels is not None and not np.isnan(labels[i]):
            body["label"] = int(labels[i])
        suffix = str(shard_of(user, shards)) if shards > 1 else ""
        out.append((suffix, eid, json.dumps(body, separators=(",", ":")).encode()))
    return out


def produce(loaded: LoadedEvents, publisher: Publisher, *, rate: float | None = None,
            limit: int | None = None, skip: int = 0, shards: int = 1) -> ProduceSummary:
    """Publish ``loaded``'s events (after the first ``skip``, at most ``limit``) at ``rate`` ev/s."""
    messages = encode_events(loaded.events, shards)[skip:]
    if limit is not None:
        messages = messages[:limit]
    chunk = max(1, int(rate / 20)) if rate else _CHUNK
    started = time.monotonic()
    for n in range(0, len(messages), chunk):
        if rate:  # pace: message n is due at n / rate seconds after the start
            ahead = started + n / rate - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
        publisher.publish(messages[n:n + chunk])
    seconds = time.monotonic() - started
    return ProduceSummary(len(messages), round(seconds, 3), round(len(messages) / seconds, 1) if seconds else 0.0)
