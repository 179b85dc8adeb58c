"""What ``liber encode --follow`` pays online per committed batch, against a whole-table sync.

On a copy of an encoded ledger (default: the shared K = 50 ledger of ml-latest-small, 1,715
partitions of 385 users, D = 384), with Redis as the online store under a throwaway Feast project:

- ``write_users_online`` for batches of ``--batch`` random users (what the follower does after each
  committed batch): median and p90 over ``--rounds`` batches;
- ``sync_long_term`` (rebuild the long-term table from the ledger, then write every pending user and
  advance the sync state: what it does when idle, at most once a minute while busy, and what a
  per-batch sync would cost): the first one (every user pending) and a second one (nothing new).

    python bench/bench_follow.py [--ledger /tmp/ml50.db] [--batch 8] [--rounds 20] [--redis redis://127.0.0.1:6379/0]

Needs only Redis (the registry is a file in a temp dir). Runs in well under a minute.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_online_write import make_store  # noqa: E402  (a temp copy of feature_repo/ on Redis)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ledger", default="/tmp/ml50.db", help="an encoded SQLite ledger (copied, never written)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    args = parser.parse_args()

    import redis

    client = redis.Redis.from_url(args.redis)
    client.ping()
    project = f"liber_bench_{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        shutil.copy(args.ledger, root / "ledger.db")
        os.environ["LIBER_DATA_DIR"] = str(root / "data")
        from liber_features.features.sync import sync_long_term, write_users_online
        from liber_features.ledger.store import Ledger
        from liber_features.uil.interest_store import load_partitions

        ledger = Ledger(f"sqlite:///{root / 'ledger.db'}")
        users = sorted({x.user_id for x in load_partitions(ledger, None)})
        store = make_store(root, project, args.redis)
        try:
            rng = random.Random(0)
            publish = []
            for _ in range(args.rounds):
                batch = rng.sample(users, args.batch)
                t0 = time.perf_counter()
                written = write_users_online(store, ledger, batch)
                publish.append(time.perf_counter() - t0)
                assert written == args.batch
            syncs = []
            for _ in range(2):
                t0 = time.perf_counter()
                report = sync_long_term(store, ledger)
                syncs.append((time.perf_counter() - t0, report.users_written))
        finally:
            keys = list(client.scan_iter(match=b"*" + project.encode(), count=5000))
            for i in range(0, len(keys), 5000):
                client.delete(*keys[i:i + 5000])

    publish.sort()
    print(f"ledger: {len(users)} users; batches of {args.batch} users, {args.rounds} rounds")
    print(f"write_users_online (one batch)   : median {statistics.median(publish) * 1e3:7.1f} ms, "
          f"p90 {publish[int(0.9 * (len(publish) - 1))] * 1e3:7.1f} ms")
    for name, (sec, n) in zip(("first: every user pending", "second: nothing new"), syncs):
        print(f"sync_long_term ({name:<25}): {sec * 1e3:7.1f} ms, {n} users written "
              f"(the second: those created within SYNC_OVERLAP of the mark, written again)")


if __name__ == "__main__":
    main()
