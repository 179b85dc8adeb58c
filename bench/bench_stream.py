"""Streaming: `liber stream` from real NATS JetStream and Redis Streams into SQLite and PostgreSQL
ledgers, against file ingest of the same events in the same run.

Per broker × ledger backend:
- drain rate: ml-latest-small (100,836 events) published first, then consumed (batch 2,000) until
  idle: the most events/s one consumer commits, with its partitions checked equal to file ingest's;
- latency at each --rates value: `liber produce --rate R` (its own process) for --seconds, one
  consumer (batch 500) with the online flusher writing the short-term caches into a real Redis
  online store (Feast's layout, through the existing writer): event → ledger commit and event →
  online cache, p50 / p99 / max, from the broker's own store time of each event. A consumer that
  cannot keep up shows as latencies that grow with the run.

    python bench/bench_stream.py [--rates 1000,5000] [--seconds 8] [--brokers nats,redis] [--backends sqlite,postgres]

Needs NATS (4222), Redis (6379) and PostgreSQL (LIBER_TEST_PG_URL). Writes bench/results/bench_stream.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

from liber_features.features.online import push_short_term_cache
from liber_features.features.repo import feast_redis_connection, open_store
from liber_features.ingest.events import load_events
from liber_features.ingest.job import ingest
from liber_features.ingest.partition import PartitionRule
from liber_features.ledger.store import Ledger, partitions
from liber_features.stream.connect import open_publisher, open_source
from liber_features.stream.consumer import Consumer, StreamConfig
from liber_features.stream.flusher import Flusher
from liber_features.stream.freshness import Freshness
from liber_features.stream.producer import produce

ROOT = Path(__file__).resolve().parents[1]

MACHINE = "2-core x86_64 CPU box (python-svc), no GPU"
GOAL_ONLINE_P99_MS, GOAL_EVENTS_PER_S = 250.0, 20_000.0
PG = os.environ.get("LIBER_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def make_store(root: Path, project: str, redis_url: str):
    """A temp copy of feature_repo/ whose online store is Redis (file registry), with the
    short-term cache view applied: what `liber stream --repo` writes."""
    import importlib.util
    import shutil

    repo = ROOT / "feature_repo"
    shutil.copy(repo / "definitions.py", root)
    yaml = (repo / "feature_store.yaml").read_text().replace("project: liber\n", f"project: {project}\n")
    yaml = yaml.replace("  type: sqlite\n  path: data/online_store.db\n",
                        f"  type: redis\n  connection_string: \"{feast_redis_connection(redis_url)}\"\n")
    (root / "feature_store.yaml").write_text(yaml)
    os.environ["LIBER_DATA_DIR"] = "data"
    spec = importlib.util.spec_from_file_location("bench_stream_defs", root / "definitions.py")
    defs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(defs)
    store = open_store(root, environ={})
    store.apply([defs.user, defs.short_term_push, defs.user_short_term_cache])
    return store


def url_for(broker: str, tag: str, args) -> str:
    if broker == "nats":
        return f"{args.nats}/B_{tag}?subject=b_{tag}&durable=bench"
    return f"{args.redis}?stream=b_{tag}&group=bench"


def drop(broker: str, tag: str, args) -> None:
    if broker == "redis":
        import redis

        redis.Redis.from_url(args.redis).delete(f"b_{tag}")
        return
    import asyncio

    import nats

    async def go() -> None:
        nc = await nats.connect(args.nats)
        await nc.jetstream().delete_stream(f"B_{tag}")
        await nc.close()

    asyncio.run(go())


def new_ledger(backend: str, root: Path) -> Ledger:
    if backend == "sqlite":
        return Ledger(f"sqlite:///{root / f'{uuid.uuid4().hex}.db'}")
    return Ledger(PG, schema=f"bench_{uuid.uuid4().hex[:10]}")


def partition_hashes(ledger: Ledger) -> list[tuple]:
    from sqlalchemy import select

    with ledger.engine.connect() as conn:
        return [tuple(r) for r in conn.execute(select(partitions.c.user_id, partitions.c.seq,
                                                      partitions.c.content_hash, partitions.c.sealed_at_us)
                                               .order_by(partitions.c.user_id, partitions.c.seq))]


def drain(broker: str, backend: str, loaded, reference: list[tuple], args, root: Path) -> dict:
    tag = uuid.uuid4().hex[:8]
    url = url_for(broker, tag, args)
    pub = open_publisher(url)
    t = time.perf_counter()
    produce(loaded, pub)
    publish_s = time.perf_counter() - t
    pub.close()
    ledger = new_ledger(backend, root)
    source = open_source(url, 2000)
    idle = 1.0
    try:
        s = Consumer(source, ledger, PartitionRule(k=20), StreamConfig(batch=2000, until_idle_s=idle),
                     say=lambda _l: None).run()
    finally:
        source.close()
    busy = s.seconds - idle
    equal = partition_hashes(ledger) == reference
    ledger.drop_schema()
    drop(broker, tag, args)
    return {"events": s.accepted, "partitions": s.partitions_sealed, "seconds": round(busy, 2),
            "events_per_s": round(s.accepted / busy, 1),
            "publish_events_per_s": round(len(loaded.events) / publish_s, 1),
            "partitions_equal_file_ingest": equal}


def latency(broker: str, backend: str, rate: int, store, args, root: Path) -> dict:
    tag = uuid.uuid4().hex[:8]
    url = url_for(broker, tag, args)
    n = int(rate * args.seconds)
    open_publisher(url).close()  # the stream exists before the consumer subscribes
    ledger = new_ledger(backend, root)
    fresh = Freshness()
    flusher = Flusher(lambda df: push_short_term_cache(store, df), 0.2, on_flush=fresh.on_flush)
    source = open_source(url, args.batch)
    producer = subprocess.Popen(
        [sys.executable, "-m", "liber_features.cli", "produce", "--events", str(args.data), "--to", url,
         "--rate", str(rate), "--limit", str(n), "--json"],
        env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        s = Consumer(source, ledger, PartitionRule(k=20), StreamConfig(batch=args.batch, until_idle_s=3.0),
                     flusher=flusher, on_commit=fresh.on_commit, say=lambda _l: None).run()
    finally:
        source.close()
    out, err = producer.communicate(timeout=120)
    produced = json.loads(out.strip().splitlines()[-1]) if producer.returncode == 0 else {"error": err[-500:]}
    ledger.drop_schema()
    drop(broker, tag, args)
    return {"rate": rate, "events": s.accepted, "produced_events_per_s": produced.get("events_per_s"),
            **fresh.summary(), "batches": s.batches}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=Path(os.environ.get("LIBER_ML_LATEST_SMALL",
                                                                    "/work/shared/data/ml-latest-small")))
    p.add_argument("--nats", default="nats://127.0.0.1:4222")
    p.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    p.add_argument("--rates", default="1000,5000")
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--batch", type=int, default=500, help="the latency runs' consumer batch (most per fetch)")
    p.add_argument("--brokers", default="nats,redis")
    p.add_argument("--backends", default="sqlite,postgres")
    p.add_argument("--out", type=Path, default=ROOT / "bench/results/bench_stream.json")
    args = p.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-stream-"))
    loaded = load_events(args.data)
    result = {"date": datetime.now(UTC).isoformat(timespec="seconds"),
              "command": "python bench/bench_stream.py " + " ".join(sys.argv[1:]),
              "machine": MACHINE, "python": platform.python_version(), "load_avg_1m": os.getloadavg()[0],
              "file_ingest": {}, "drain": {}, "latency": {}}
    backends = args.backends.split(",")
    reference = None
    for backend in backends:
        ledger = new_ledger(backend, root)
        s = ingest(loaded, ledger, PartitionRule(k=20), progress=False)
        result["file_ingest"][backend] = {"events": s.accepted, "events_per_s": s.events_per_s,
                                          "partitions": s.partitions_sealed}
        print(f"file ingest  {backend:<9} {s.events_per_s:>10,.0f} ev/s  ({s.partitions_sealed} partitions)")
        reference = reference or partition_hashes(ledger)
        ledger.drop_schema()
    store_root = root / "repo"
    store_root.mkdir()
    store = make_store(store_root, f"bench_stream_{uuid.uuid4().hex[:8]}", args.redis)
    for broker in args.brokers.split(","):
        for backend in backends:
            key = f"{broker}/{backend}"
            d = drain(broker, backend, loaded, reference, args, root)
            result["drain"][key] = d
            print(f"drain        {key:<16} {d['events_per_s']:>10,.0f} ev/s  partitions equal: "
                  f"{d['partitions_equal_file_ingest']}  (publish {d['publish_events_per_s']:,.0f} ev/s)")
            for rate in (int(r) for r in args.rates.split(",") if r):  # --rates "": drains only
                lat = latency(broker, backend, rate, store, args, root)
                result["latency"][f"{key}@{rate}"] = lat
                c, o = lat["commit_ms"], lat["online_ms"]
                print(f"latency      {key:<16} @{rate:>5} ev/s  commit p50/p99/max {c.get('p50')}/{c.get('p99')}/"
                      f"{c.get('max')} ms   online p50/p99/max {o.get('p50')}/{o.get('p99')}/{o.get('max')} ms")
    goals = {}
    for broker in args.brokers.split(","):
        pg_drain = result["drain"].get(f"{broker}/postgres")
        pg_lat = result["latency"].get(f"{broker}/postgres@5000")
        if pg_drain:
            goals[f"{broker} events/s into PostgreSQL >= {GOAL_EVENTS_PER_S:,.0f}"] = {
                "got": pg_drain["events_per_s"], "met": pg_drain["events_per_s"] >= GOAL_EVENTS_PER_S,
                "short_by_pct": round(max(0.0, 1 - pg_drain["events_per_s"] / GOAL_EVENTS_PER_S) * 100, 1)}
        if pg_lat and pg_lat["online_ms"].get("p99") is not None:
            p99 = pg_lat["online_ms"]["p99"]
            goals[f"{broker} event->online p99 <= {GOAL_ONLINE_P99_MS:.0f} ms at 5,000 ev/s on PostgreSQL"] = {
                "got": p99, "met": p99 <= GOAL_ONLINE_P99_MS,
                "over_by_ms": round(max(0.0, p99 - GOAL_ONLINE_P99_MS), 1)}
    result["goals"] = goals
    for name, g in goals.items():
        print(f"goal  {name}: {'met' if g['met'] else 'NOT met'} (got {g['got']}"
              + (f", short by {g['short_by_pct']} %" if "short_by_pct" in g and not g["met"] else "")
              + (f", over by {g['over_by_ms']} ms" if "over_by_ms" in g and not g["met"] else "") + ")")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
