"""Online write throughput on Redis: Feast ``write_to_online_store`` vs liber's pipelined writer.

Both write the same long-term memory rows (default 5,000 users, M×D from LiberFeatureConfig, i.e.
LIBER_MEMORY_SLOTS/LIBER_VECTOR_DIM) into an empty Redis under a throwaway Feast project, and the
liber rows are read back through ``get_online_features`` and checked bit for bit. Also prints the
bytes one user's long-term memory costs in Redis (``MEMORY USAGE <key> SAMPLES 0``).

    python bench/bench_online_write.py [--users 5000] [--redis redis://127.0.0.1:6379/0]

Needs only Redis (the registry is a file in a temp dir). Runs in well under 2 minutes.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import statistics
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

from liber_features.features.online import write_online
from liber_features.features.repo import (
    LONG_TERM_SCHEMA,
    LONG_TERM_VIEW,
    LiberFeatureConfig,
    feast_redis_connection,
    open_store,
    sample_long_term,
    write_parquet,
)

REPO = Path(__file__).resolve().parents[1] / "feature_repo"


def make_store(root: Path, project: str, redis_url: str):
    """A temp copy of feature_repo/ whose default yaml points at Redis (file registry)."""
    shutil.copy(REPO / "definitions.py", root)
    yaml = (REPO / "feature_store.yaml").read_text().replace("project: liber\n", f"project: {project}\n")
    yaml = yaml.replace("  type: sqlite\n  path: data/online_store.db\n",
                        f"  type: redis\n  connection_string: \"{feast_redis_connection(redis_url)}\"\n")
    (root / "feature_store.yaml").write_text(yaml)
    spec = importlib.util.spec_from_file_location("bench_defs", root / "definitions.py")
    defs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(defs)
    store = open_store(root, environ={})
    store.apply([defs.user, defs.user_long_term_memory])
    return store


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=5000)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    args = parser.parse_args()

    import redis

    client = redis.Redis.from_url(args.redis)
    client.ping()
    shape = LiberFeatureConfig.from_env()
    project = f"liber_bench_{uuid.uuid4().hex[:8]}"
    pattern = b"*" + project.encode()
    users = [f"user-{i:07d}" for i in range(args.users)]
    rows = sample_long_term(users, datetime.now(UTC) - timedelta(hours=1), partition_count=shape.memory_slots)

    def clear() -> None:
        keys = list(client.scan_iter(match=pattern, count=5000))
        for i in range(0, len(keys), 5000):
            client.delete(*keys[i : i + 5000])

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_parquet(rows.head(1), root / "data/user_long_term_memory.parquet", LONG_TERM_SCHEMA)
        os.environ["LIBER_DATA_DIR"] = "data"  # the sample table is written to <root>/data
        store = make_store(root, project, args.redis)
        try:
            t0 = time.perf_counter()
            store.write_to_online_store(LONG_TERM_VIEW, rows)
            feast_s = time.perf_counter() - t0
            clear()
            t0 = time.perf_counter()
            written = write_online(store, LONG_TERM_VIEW, rows)
            liber_s = time.perf_counter() - t0
            assert written == len(users)

            check = rows.sample(n=min(200, len(rows)), random_state=0)
            got = store.get_online_features(
                features=[f"{LONG_TERM_VIEW}:summary_vectors", f"{LONG_TERM_VIEW}:shift_vectors"],
                entity_rows=[{"user_id": u} for u in check.user_id],
            ).to_dict()
            for name in ("summary_vectors", "shift_vectors"):
                for mine, want in zip(got[name], check[name]):
                    assert np.array_equal(np.asarray(mine, np.float32).view(np.uint32), want.view(np.uint32))

            keys = [k for _, k in zip(range(200), client.scan_iter(match=pattern, count=1000))]
            per_user = statistics.mean(client.memory_usage(k, samples=0) for k in keys)
        finally:
            clear()

    payload = 2 * shape.vector_length * 4
    print(f"users={len(users)}  M={shape.memory_slots}  D={shape.vector_dim}  "
          f"vector payload/user={payload} B")
    print(f"feast write_to_online_store : {len(users) / feast_s:10.0f} rows/s  ({feast_s:.2f} s)")
    print(f"liber write_online (Redis)  : {len(users) / liber_s:10.0f} rows/s  ({liber_s:.2f} s)  "
          f"x{feast_s / liber_s:.1f}")
    print(f"redis MEMORY USAGE per user : {per_user:10.0f} B  ({per_user / payload:.2f}x the vector payload)")
    print("read-back via get_online_features: 200 users, vectors bit-exact")


if __name__ == "__main__":
    main()
