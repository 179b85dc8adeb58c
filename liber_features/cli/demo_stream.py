"""``liber demo --stream URL``: the newest events of the demo's data arrive through a real broker.

The demo ingests everything but the newest ``held`` events from the file; this step publishes those
through the broker (``liber produce``'s producer, paced, in its own thread) while ``liber stream``'s
consumer takes them into the same ledger (UBSP, exactly once) and its flusher writes the changed
short-term caches online. Then the LLM encodes the partitions that the stream sealed for one user,
and that user's long-term memory is written online. It prints event → online freshness (the
broker's store time to the end of the online write), the partitions sealed and those encoded.

A rerun publishes the same events again (same event ids): NATS drops them itself inside JetStream's
duplicate window (the producer sets ``Nats-Msg-Id``), else the consumer counts them as duplicates;
either way nothing is sealed twice and no LLM is called — the exactly-once guarantee, shown.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import func, select

from liber_features.errors import ConfigError
from liber_features.ingest.events import LoadedEvents

__all__ = ["HELD", "demo_broker_url", "split_tail", "stream_tail"]

HELD = 2_000  # the newest events, streamed instead of ingested
RATE = 1_000.0  # events per second published: a steady stream, not one burst


def split_tail(loaded: LoadedEvents, held: int) -> tuple[LoadedEvents, LoadedEvents]:
    """(all but the newest ``held`` events, those ``held``), in the producer's order (time, user, id)."""
    order = loaded.events.sort_values(["ts", "user_id", "event_id"], kind="stable").reset_index(drop=True)
    head, tail = order.iloc[:-held], order.iloc[-held:].reset_index(drop=True)
    return (dataclasses.replace(loaded, events=head, read=len(head), duplicates=0),
            dataclasses.replace(loaded, events=tail, read=len(tail), duplicates=0))


def demo_broker_url(url: str, ledger_id: str) -> str:
    """A broker URL as given (``nats://HOST:PORT``, ``redis://HOST:PORT[/DB]``) with the demo's own
    stream and durable/group filled in when it names none, one per demo ledger."""
    parts = urlsplit(url)
    tag = f"liber_demo_{ledger_id[:8]}"
    if parts.scheme == "nats" and parts.path.strip("/") == "":
        return f"nats://{parts.netloc}/{tag.upper()}?subject={tag}&durable=liber_demo"
    if parts.scheme == "redis" and not parts.query:
        return f"redis://{parts.netloc}{parts.path or '/0'}?stream={tag}&group=liber_demo"
    if parts.scheme in ("nats", "redis", "kafka"):
        return url
    raise ConfigError(f"--stream takes a nats://, redis:// or kafka:// URL, not {url!r}")


def stream_tail(url: str, tail: LoadedEvents, ledger, repo, *, k: int, llm, enc, encode_limit: int = 2,
                say: Callable[[str], None]) -> dict[str, Any]:
    """Publish ``tail`` to ``url`` while consuming it into ``ledger`` with caches flushed online; then
    encode up to ``encode_limit`` partitions the stream sealed (one user's) and write them online."""
    from liber_features.features.memory import refresh_memory_table
    from liber_features.features.online import push_short_term_cache
    from liber_features.features.repo import LONG_TERM_VIEW, LiberFeatureConfig, data_file, open_store
    from liber_features.features.sync import sync_view
    from liber_features.ingest.partition import PartitionRule
    from liber_features.ledger.store import partitions
    from liber_features.stream.brokers import parse_broker_url
    from liber_features.stream.connect import open_publisher, open_source
    from liber_features.stream.consumer import Consumer, StreamConfig
    from liber_features.stream.flusher import Flusher
    from liber_features.stream.freshness import Freshness
    from liber_features.stream.producer import produce
    from liber_features.uil.interest import EncodeConfig, run_encode

    safe = parse_broker_url(url).safe_url
    with ledger.engine.connect() as conn:
        before = conn.execute(select(func.max(partitions.c.id))).scalar() or 0
    store = open_store(repo)
    fresh = Freshness()
    flusher = Flusher(lambda df: push_short_term_cache(store, df), 0.2, on_flush=fresh.on_flush, say=say)
    publisher = open_publisher(url)  # the stream exists before the consumer subscribes
    source = open_source(url, 500)
    published: dict[str, Any] = {}
    producer = threading.Thread(target=lambda: published.update(
        s=produce(tail, publisher, rate=RATE)), name="demo-producer", daemon=True)
    try:
        producer.start()
        s = Consumer(source, ledger, PartitionRule(k=k), StreamConfig(batch=500, until_idle_s=2.0),
                     flusher=flusher, on_commit=fresh.on_commit, say=say).run()
        producer.join(timeout=60)
    finally:
        source.close()
        publisher.close()
    out: dict[str, Any] = {"broker": safe, "published": published["s"].published if "s" in published else 0,
                           **{key: getattr(s, key) for key in ("fetched", "accepted", "duplicates", "quarantined",
                                                               "partitions_sealed", "users_flushed")},
                           **fresh.summary()}
    say(f"    {out['published']} events published at {RATE:,.0f}/s, {s.accepted} accepted, {s.duplicates} "
        f"duplicates, {s.partitions_sealed} partitions sealed, {s.users_flushed} cache writes online")
    on = out["online_ms"]
    if on["n"]:
        say(f"    event → online (short-term cache): p50 {on['p50']:.0f} ms, p99 {on['p99']:.0f} ms, "
            f"max {on['max']:.0f} ms over {on['n']} events")

    with ledger.engine.connect() as conn:  # the user the stream sealed most for
        row = conn.execute(select(partitions.c.user_id, func.count()).where(partitions.c.id > before)
                           .group_by(partitions.c.user_id).order_by(func.count().desc(), partitions.c.user_id)
                           .limit(1)).first()
    if row is None:
        out["encoded"] = {"user_id": None, "partitions": 0, "llm_calls": 0}
        say("    no partition sealed by the stream: nothing to encode")
        return out
    e = run_encode(ledger, llm, enc, EncodeConfig(users=[row.user_id], limit=encode_limit), progress=False)
    shape = LiberFeatureConfig.from_env()
    refresh_memory_table(ledger, data_file(f"{LONG_TERM_VIEW}.parquet", repo_dir=repo),
                         memory_slots=shape.memory_slots, vector_dim=shape.vector_dim,
                         history_length=shape.history_length)
    synced = sync_view(store, ledger, LONG_TERM_VIEW)
    out["encoded"] = {"user_id": row.user_id, "partitions": e.partitions_done, "llm_calls": e.llm_calls,
                      "users_written_online": synced.users_written}
    say(f"    user {row.user_id}: {e.partitions_done} of the stream's partitions encoded with {e.llm_calls} "
        f"LLM calls, long-term memory online ({synced.users_written} user(s) written)")
    return out
