"""Ingest throughput and peak memory on ml-latest-small, SQLite and PostgreSQL, in one run.

    python bench/bench_ingest.py [--data PATH] [--k 20]

Each backend runs in a fresh child process so its peak RSS is its own (load + partition +
ledger writes), measured with resource.getrusage(RUSAGE_CHILDREN).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PG_URL = os.environ.get("LIBER_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")

CHILD = r"""
import json, resource, sys, time
from liber_features.ingest.events import load_events
from liber_features.ingest.job import ingest
from liber_features.ledger.store import Ledger
from liber_features.ingest.partition import PartitionRule
data, url, schema, k = sys.argv[1], sys.argv[2], sys.argv[3] or None, int(sys.argv[4])
t0 = time.perf_counter()
loaded = load_events(data)
t1 = time.perf_counter()
ledger = Ledger(url, schema=schema)
s = ingest(loaded, ledger, PartitionRule(k=k), progress=False)
t2 = time.perf_counter()
again = ingest(loaded, ledger, PartitionRule(k=k), progress=False)
t3 = time.perf_counter()
ledger.drop_schema()
print(json.dumps({"load_s": t1 - t0, "ingest_s": t2 - t1, "rerun_s": t3 - t2,
                  "accepted": s.accepted, "partitions": s.partitions_sealed,
                  "cached": s.cached_events, "rerun_accepted": again.accepted,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=os.environ.get(
        "LIBER_ML_LATEST_SMALL", str(REPO.parent / "shared/data/ml-latest-small")))
    ap.add_argument("--k", type=int, default=20)
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="liber-bench-")
    backends = {"sqlite": (f"sqlite:///{tmp}/ledger.db", ""),
                "postgresql": (PG_URL, f"bench_{uuid.uuid4().hex[:8]}")}
    print(f"ml-latest-small at {args.data}, K={args.k}")
    print(f"{'backend':<11} {'events':>8} {'load s':>7} {'ingest s':>9} {'events/s':>9} "
          f"{'rerun s':>8} {'peak MB':>8}  partitions/cached")
    for name, (url, schema) in backends.items():
        out = subprocess.run([sys.executable, "-c", CHILD, args.data, url, schema, str(args.k)],
                             capture_output=True, text=True, cwd=REPO)
        if out.returncode != 0:
            sys.exit(f"{name} failed:\n{out.stderr}")
        r = json.loads(out.stdout.strip().splitlines()[-1])
        total = r["load_s"] + r["ingest_s"]
        print(f"{name:<11} {r['accepted']:>8} {r['load_s']:>7.2f} {r['ingest_s']:>9.2f} "
              f"{r['accepted'] / total:>9.0f} {r['rerun_s']:>8.2f} {r['peak_rss_mb']:>8.0f}  "
              f"{r['partitions']}/{r['cached']} (rerun accepted {r['rerun_accepted']})")
    print("events/s = accepted / (load + ingest); rerun = same input again (adds nothing)")


if __name__ == "__main__":
    main()
