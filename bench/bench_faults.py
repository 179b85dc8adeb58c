"""Faults the pipeline must survive: concurrent encoder workers, some SIGKILLed while holding a
lease, on SQLite and PostgreSQL; then the online store down during a sync, and wiped.

    python bench/bench_faults.py [--users 20] [--workers 4] [--kills 2] [--backends sqlite,postgres]
        [--pg postgresql+psycopg://postgres@127.0.0.1:5432/test]

Workers are real processes (tests/encode_worker.py) driving the deterministic counting LLM of
liber_features.testing; Redis is this script's own redis-server on a free port. Prints, per
backend: kills survived, concurrent workers, LLM calls made vs necessary (a killed worker may
cost at most its one batch), rows lost and orphan rows (both must be 0), then users missing
online after Redis came back and after a wipe + rebuild (must be 0). About a minute.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
os.environ.update({"LIBER_MEMORY_SLOTS": "2", "LIBER_VECTOR_DIM": "4",  # HashEncoder's D
                   "LIBER_DATA_DIR": "data"})  # the tables below are written to <repo>/data

from sqlalchemy import func, select  # noqa: E402

from liber_features.features.caches import append_cache_history, current_caches  # noqa: E402
from liber_features.features.memory import refresh_memory_table  # noqa: E402
from liber_features.ingest.job import ingest  # noqa: E402
from liber_features.ingest.partition import PartitionRule  # noqa: E402
from liber_features.ledger.store import Ledger, interests, partitions, vectors  # noqa: E402

PER_USER, K, BATCH = 7, 2, 3


def spawn(ledger: Ledger, calls: Path, *extra: str) -> subprocess.Popen:
    from test_concurrency import spawn as spawn_worker

    return spawn_worker(ledger, calls, "--batch-size", str(BATCH), *extra)


def fleet(ledger: Ledger, workdir: Path, users: int, workers: int, kills: int) -> dict:
    from test_concurrency import call_lines, events

    ingest(events(users=users, per_user=PER_USER), ledger, PartitionRule(k=K), progress=False)
    parts = users * (PER_USER // K)
    needed = parts + users * (PER_USER // K - 1)
    calls = workdir / f"calls-{uuid.uuid4().hex[:6]}.txt"
    start = f"{time.time() + 3:.3f}"
    procs = [spawn(ledger, calls, "--start-at", start, "--lease", "1.5", "--delay", "0.02")
             for _ in range(workers)]
    victims = procs[:kills]
    for v in victims:  # kill each as soon as it has made a call: it holds a lease mid-batch
        while not any(int(x[0]) == v.pid for x in call_lines(calls)) and v.poll() is None:
            time.sleep(0.01)
        v.send_signal(signal.SIGKILL)
    exit_codes = [p.wait(timeout=300) for p in procs[kills:]]
    lines = call_lines(calls)
    with ledger.engine.connect() as conn:
        one = lambda q: conn.execute(q).scalar()  # noqa: E731
        encoded = one(select(func.count(func.distinct(interests.c.partition_id)))
                      .select_from(interests.join(vectors, vectors.c.interest_id == interests.c.id))
                      .where(interests.c.status == "done"))
        orphans = one(select(func.count()).select_from(
            vectors.outerjoin(interests, interests.c.id == vectors.c.interest_id)).where(interests.c.id.is_(None)))
        orphans += one(select(func.count()).select_from(
            interests.outerjoin(vectors, vectors.c.interest_id == interests.c.id)).where(vectors.c.id.is_(None)))
        duplicates = one(select(func.count()).select_from(interests)) - one(
            select(func.count(func.distinct(interests.c.partition_id))))
        total_parts = one(select(func.count()).select_from(partitions))
    return {
        "kills survived": f"{kills} of {kills}" if total_parts == encoded else f"0 of {kills}",
        "concurrent workers": workers,
        "surviving workers exit 0": all(c == 0 for c in exit_codes),
        "LLM calls made": len(lines),
        "LLM calls necessary": needed,
        "LLM calls lost to kills": len(lines) - needed,
        "allowed (one batch per kill)": kills * 2 * BATCH,
        "rows lost": total_parts - encoded,
        "duplicate rows": duplicates,
        "orphan rows": orphans,
    }


class OwnRedis:
    def __init__(self, root: Path) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.args = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(root),
                     "--save", "", "--appendonly", "no"]
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        import redis

        self.proc = subprocess.Popen(self.args, stdout=subprocess.DEVNULL)
        for _ in range(100):
            try:
                redis.Redis(port=self.port).ping()
                return
            except redis.ConnectionError:
                time.sleep(0.05)

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


def online_recovery(ledger: Ledger, workdir: Path) -> dict:
    """Sync with Redis down (fails, nothing advanced), back up: one plain sync; then a wipe and
    --rebuild. Counts users of the offline table that are missing online after each."""
    import redis

    from liber_features.errors import FeatureStoreError
    from liber_features.features.repo import (
        LONG_TERM_VIEW,
        SHORT_TERM_VIEW,
        apply_repo,
        feast_redis_connection,
        open_store,
    )
    from liber_features.features.sync import sync_view

    repo = workdir / "repo"
    repo.mkdir()
    shutil.copy(ROOT / "feature_repo" / "definitions.py", repo)
    own = OwnRedis(workdir)
    yaml = (ROOT / "feature_repo" / "feature_store.yaml").read_text()
    connection = feast_redis_connection(f"redis://127.0.0.1:{own.port}/0")
    yaml = yaml.replace("  type: sqlite\n  path: data/online_store.db\n",
                        f"  type: redis\n  connection_string: \"{connection}\"\n")
    project = f"project: bench_{uuid.uuid4().hex[:8]}\n"
    (repo / "feature_store.yaml").write_text(yaml.replace("project: liber\n", project))
    table = refresh_memory_table(ledger, repo / "data" / f"{LONG_TERM_VIEW}.parquet", memory_slots=2, vector_dim=4)
    append_cache_history(current_caches(ledger), repo / "data" / f"{SHORT_TERM_VIEW}.parquet")
    users = sorted(set(table.column("user_id").to_pylist()))
    store = open_store(repo, environ={})
    apply_repo(store, repo)

    def missing() -> int:
        features = [f"{LONG_TERM_VIEW}:partition_count", f"{SHORT_TERM_VIEW}:cache_length"]
        got = store.get_online_features(features=features, entity_rows=[{"user_id": u} for u in users]).to_dict()
        return sum(1 for a, b in zip(got["partition_count"], got["cache_length"]) if a is None or b is None)

    def sync_all(rebuild: bool = False) -> None:
        for view in (LONG_TERM_VIEW, SHORT_TERM_VIEW):
            sync_view(store, ledger, view, rebuild=rebuild)

    failed_syncs = 0
    for _ in range(2):  # the scheduled run while Redis is down
        try:
            sync_all()
        except FeatureStoreError:
            failed_syncs += 1
    own.start()
    try:
        sync_all()
        after_outage = missing()
        redis.Redis(port=own.port).flushall()
        wiped = missing()
        sync_all(rebuild=True)
        after_rebuild = missing()
    finally:
        own.stop()
    return {"online users": len(users), "syncs failed while Redis was down": failed_syncs,
            "users missing online after Redis came back": after_outage,
            "users missing online after wipe (before rebuild)": wiped,
            "users missing online after --rebuild": after_rebuild}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=20)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--kills", type=int, default=2)
    ap.add_argument("--backends", default="sqlite,postgres")
    ap.add_argument("--pg", default=os.environ.get("LIBER_TEST_PG_URL",
                                                   "postgresql+psycopg://postgres@127.0.0.1:5432/test"))
    args = ap.parse_args()
    for backend in args.backends.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            workdir = Path(tmp)
            ledger = (Ledger(f"sqlite:///{workdir / 'ledger.db'}") if backend == "sqlite"
                      else Ledger(args.pg, schema=f"bench_faults_{uuid.uuid4().hex[:8]}"))
            try:
                t0 = time.perf_counter()
                result = fleet(ledger, workdir, args.users, args.workers, args.kills)
                if backend == "sqlite":
                    result |= online_recovery(ledger, workdir)
                result["seconds"] = round(time.perf_counter() - t0, 1)
            finally:
                ledger.drop_schema()
            print(f"{backend}:")
            for key, value in result.items():
                print(f"  {key:<50} {value}")


if __name__ == "__main__":
    main()
