"""``liber stream`` under faults: 20 random SIGKILLs of the consumer and one broker restart in one run.

A private ``nats-server`` (never the machine's shared one: it is restarted here) holds the first
``--events`` events of ml-latest-small (all 100,836 by default) in producer order. ``liber stream``
runs in its own process and is SIGKILLed at a random moment ``--kills`` times, each time restarted; during the run after
the middle kill the broker itself is stopped and started again under the running consumer. A last
run drains what is left. Then the ledger is checked against ``liber ingest`` of the same events:

  lost          events the broker held that no partition or cache of the ledger holds
  counted twice events held by more than one partition/cache slot
  partitions    every partition (user, seq, content hash, seal time, events) and cache equal to
                file ingest's

    .venv/bin/python bench/bench_stream_faults.py [--events N] [--kills 20] [--backend postgres] [--batch 100]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import signal
import sys
import tempfile
import time
import uuid
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
from conftest import PG_URL, ml_latest_small  # noqa: E402  (the tests' service URLs and data path)
from streamkit import K, OwnNats, ledger_rows, start  # noqa: E402

from liber_features.ingest.events import load_events  # noqa: E402
from liber_features.ingest.job import ingest  # noqa: E402
from liber_features.ingest.partition import PartitionRule  # noqa: E402
from liber_features.ledger.store import Ledger, partitions, user_cache  # noqa: E402
from liber_features.stream.connect import open_publisher  # noqa: E402
from liber_features.stream.producer import encode_events, produce  # noqa: E402


def held_ids(ledger: Ledger) -> Counter:
    """Each event id, counted once per partition or cache slot that holds it."""
    from sqlalchemy import select

    with ledger.engine.connect() as conn:
        sealed = [e[0] for (j,) in conn.execute(select(partitions.c.events_json)) for e in json.loads(j)]
        cached = [e[0] for (j,) in conn.execute(select(user_cache.c.cache_json)) for e in json.loads(j)]
    return Counter(sealed + cached)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=None, help="the first N events of ml-latest-small (default: all)")
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--backend", choices=["sqlite", "postgres"], default="postgres")
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--seed", type=int, default=18)
    ap.add_argument("--out", default=str(HERE / "results" / "bench_stream_faults.json"))
    args = ap.parse_args()
    rng = random.Random(args.seed)
    root = Path(tempfile.mkdtemp(prefix="bench-stream-faults-"))
    full = load_events(ml_latest_small())
    ids = [json.loads(body)["event_id"] for _, _, body in encode_events(full.events)[:args.events]]
    part = dataclasses.replace(full, events=full.events[full.events["event_id"].isin(set(ids))].reset_index(drop=True))
    ref = Ledger(f"sqlite:///{root / 'ref.db'}")
    ingest(part, ref, PartitionRule(k=K), progress=False)

    own = OwnNats(root / "nats")
    own.start()
    tag = uuid.uuid4().hex[:8]
    url = f"{own.url}/F_{tag}?subject=f_{tag}&durable=d&ack_wait=2"
    ledger = (Ledger(f"sqlite:///{root / 'ledger.db'}") if args.backend == "sqlite"
              else Ledger(PG_URL, schema=f"bench_faults_{tag}"))
    t0 = time.perf_counter()
    kills: list[dict] = []
    restart_at = args.kills // 2
    try:
        pub = open_publisher(url)
        published = produce(part, pub).published
        pub.close()
        for i in range(args.kills):
            proc = start(url, ledger, "--batch", str(args.batch), "--until-idle", "30")
            wait = rng.uniform(1.5, 3.0)  # a Python start-up takes ~1.3 s here: most kills land mid-stream
            if i == restart_at:  # the broker goes away under the running consumer, then comes back
                time.sleep(wait / 2)
                own.stop()
                time.sleep(1.0)
                own.start()
                time.sleep(wait / 2)
            else:
                time.sleep(wait)
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
            kills.append({"kill": i + 1, "after_s": round(wait + (1.0 if i == restart_at else 0), 2),
                          "broker_restarted": i == restart_at, "committed": ledger.counts()["ledger_events"]})
            print(json.dumps(kills[-1]), flush=True)
        last = start(url, ledger, "--batch", str(args.batch), "--until-idle", "4")
        out, err = last.communicate(timeout=600)
        final = json.loads(out.strip().splitlines()[-1]) if last.returncode == 0 else {"error": err[-800:]}
        held = held_ids(ledger)
        result = {
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "command": "python bench/bench_stream_faults.py " + " ".join(sys.argv[1:]),
            "machine": "2-core x86_64 CPU box (python-svc), no GPU",
            "backend": args.backend, "events": published, "kills": kills, "final_run": final,
            "stored": ledger.counts()["ledger_events"],
            "lost": len(set(ids) - set(held)), "counted_twice": sum(1 for n in held.values() if n > 1),
            "partitions_equal_file_ingest": ledger_rows(ledger) == ledger_rows(ref),
            "seconds": round(time.perf_counter() - t0, 1),
        }
    finally:
        own.stop()
        if args.backend == "postgres":
            ledger.drop_schema()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    progressed = sum(1 for a, b in zip([{"committed": 0}, *kills], kills) if b["committed"] > a["committed"])
    print(f"\nbench_stream_faults {result['date']} ({args.backend} ledger, {published:,} events, "
          f"batch {args.batch}): {len(kills)} SIGKILLs ({progressed} after progress), broker restarted once "
          f"(during run {restart_at + 1})")
    print(f"  stored {result['stored']:,}  lost {result['lost']}  counted twice {result['counted_twice']}  "
          f"partitions equal to file ingest: {result['partitions_equal_file_ingest']}  "
          f"final run: {final.get('accepted', final)} accepted, {final.get('duplicates', '-')} duplicates  "
          f"({result['seconds']} s)")


if __name__ == "__main__":
    main()
