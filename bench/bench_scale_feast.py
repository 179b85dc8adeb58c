"""Feast materialization at scale: the Ray compute engine vs the local engine, in one run.

Both materialize the same long-term memory table (default 100,000 synthetic users, M=8, D=64:
4 KB of vectors per user) from Parquet into the same Redis Cluster (3 masters on free local
ports, started here and stopped after; flushed between runs, or Feast's Redis store would skip
rows that are not newer than what the previous run wrote):

- ``local``: the default configuration's DuckDB offline store + Feast's local engine;
- ``ray``: ``feature_repo/feature_store.ray.yaml`` as shipped — Ray offline store + Ray engine
  (local Ray, one worker per core, started by Feast in the child).

Each engine runs in its own child process. Peak memory is the peak, over samples every 0.25 s, of
the summed PSS of the child and all its descendants — Ray's raylet, GCS and workers included;
PSS splits shared pages (Ray's object store in /dev/shm) between their users instead of counting
them once per process. Times: the ``materialize`` call, and the child's whole life (imports,
Ray start). Afterwards 1,000 random users are read back through the fast path and compared with
the Parquet row, bit for bit.

    python bench/bench_scale_feast.py [--users 100000] [--dim 64]

Needs redis-server/redis-cli and the 'scale' extra (ray[data], which brings psutil); the registry
is a SQLite file (Feast's SQL registry) in a temp dir. Writes bench/results/bench_scale_feast.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import numpy as np  # noqa: E402

from liber_features.features.repo import (  # noqa: E402
    LONG_TERM_SCHEMA,
    LONG_TERM_VIEW,
    SHORT_TERM_SCHEMA,
    LiberFeatureConfig,
    apply_repo,
    open_store,
    sample_long_term,
    sample_short_term,
    write_parquet,
)

SEALED_AT = datetime(2026, 1, 1, tzinfo=UTC)
CHUNK = 10_000  # users per generated Parquet chunk: bounded generator memory


def make_repo(root: Path, users: int, shape: LiberFeatureConfig) -> None:
    """definitions.py + both yamls (unique project) + the Parquet tables, in ``root``."""
    project = f"liber_bench_{uuid.uuid4().hex[:8]}"
    shutil.copy(ROOT / "feature_repo" / "definitions.py", root)
    for name in ("feature_store.yaml", "feature_store.ray.yaml"):
        text = (ROOT / "feature_repo" / name).read_text().replace("project: liber\n", f"project: {project}\n")
        (root / name).write_text(text)
    import pyarrow as pa
    import pyarrow.parquet as pq

    ids = [f"user-{i}" for i in range(users)]
    path = root / "data" / f"{LONG_TERM_VIEW}.parquet"
    path.parent.mkdir(parents=True)
    with pq.ParquetWriter(path, LONG_TERM_SCHEMA) as out:
        for lo in range(0, users, CHUNK):
            df = sample_long_term(ids[lo:lo + CHUNK], SEALED_AT, partition_count=shape.memory_slots,
                                  shape=shape, seed=lo)
            out.write_table(pa.Table.from_pandas(df[LONG_TERM_SCHEMA.names], schema=LONG_TERM_SCHEMA,
                                                 preserve_index=False))
    write_parquet(sample_short_term(ids[:1], SEALED_AT), root / "data" / "user_short_term_cache.parquet",
                  SHORT_TERM_SCHEMA)


def engine_env(root: Path, engine: str, cluster: str) -> dict[str, str]:
    """The environment a shell would export for ``engine``: both yamls share registry and cluster."""
    env = {"LIBER_REGISTRY_URL": f"sqlite:///{root / 'registry.db'}",
           "LIBER_REDIS_CLUSTER_CONNECTION": cluster, "LIBER_RAY_STORAGE_PATH": str(root / "ray-staging"),
           "FEAST_FS_YAML_FILE_PATH": str(root / "feature_store.ray.yaml")}
    if engine == "local":  # the ray yaml with the default's offline store and engine
        text = (root / "feature_store.ray.yaml").read_text()
        head, _, tail = text.partition("offline_store:")
        local = head + "offline_store:\n  type: duckdb\nentity_key_serialization_version: 3\n"
        assert "batch_engine" in tail and "ray" not in local.split("online_store:")[1]
        (root / "feature_store.local.yaml").write_text(local)
        env["FEAST_FS_YAML_FILE_PATH"] = str(root / "feature_store.local.yaml")
    return env


def child(root: Path) -> None:
    """Runs in the child: apply, materialize the long-term view, print timings as JSON."""
    store = open_store(root)
    apply_repo(store, root)
    t = time.perf_counter()
    store.materialize(start_date=SEALED_AT - timedelta(days=1), end_date=SEALED_AT + timedelta(days=1),
                      feature_views=[LONG_TERM_VIEW])
    print(json.dumps({"materialize_s": time.perf_counter() - t,
                      "batch_engine": store.config.batch_engine_config,  # the yaml's: str or dict
                      "offline_store": store.config.offline_store.type}))


def tree_pss(proc) -> int:
    """Summed PSS (bytes) of ``proc`` and its descendants; processes that exit mid-scan count 0."""
    import psutil

    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            total += p.memory_full_info().pss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return total


def run_engine(root: Path, engine: str, cluster: str) -> dict:
    import psutil

    env = {**os.environ, **engine_env(root, engine, cluster), "PYTHONPATH": str(ROOT)}
    t = time.perf_counter()
    proc = subprocess.Popen([sys.executable, __file__, "--child", str(root)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ps, peak = psutil.Process(proc.pid), 0
    while proc.poll() is None:
        try:
            peak = max(peak, tree_pss(ps))
        except psutil.NoSuchProcess:
            break
        time.sleep(0.25)
    out, err = proc.communicate()
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"{engine} child failed ({proc.returncode}):\n{err[-4000:]}")
    result = json.loads(out.strip().splitlines()[-1])
    return {"engine": engine, **result, "process_wall_s": wall, "peak_tree_pss_mib": peak / 2**20}


def verify(root: Path, cluster: str, shape: LiberFeatureConfig, users: int) -> int:
    """1,000 random users read back through the fast path equal their Parquet rows, bit for bit."""
    import pyarrow.parquet as pq

    from liber_features.serving.fetch import RedisFetcher

    store = open_store(root, environ={**os.environ, **engine_env(root, "local", cluster)})
    table = pq.read_table(root / "data" / f"{LONG_TERM_VIEW}.parquet",
                          columns=["user_id", "summary_vectors", "shift_vectors"])
    pick = np.random.default_rng(0).choice(users, size=min(1000, users), replace=False)
    got = RedisFetcher(store, timeout_ms=2000).fetch([f"user-{i}" for i in pick])
    for i, row in zip(pick, got):
        for col in ("summary_vectors", "shift_vectors"):
            want = np.asarray(table[col][int(i)].as_py(), np.float32)
            if row is None or not np.array_equal(row[col].view(np.uint32), want.view(np.uint32)):
                raise SystemExit(f"user-{i}: {col} online differs from the Parquet row")
    return len(pick)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--slots", type=int, default=8)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child)
    from rediscluster import redis_cluster

    shape = LiberFeatureConfig(memory_slots=args.slots, vector_dim=args.dim)
    os.environ |= {"LIBER_MEMORY_SLOTS": str(args.slots), "LIBER_VECTOR_DIM": str(args.dim),
                   "LIBER_DATA_DIR": "data"}  # the tables are written to <root>/data
    rows = []
    with tempfile.TemporaryDirectory() as tmp, redis_cluster(Path(tmp)) as cluster:
        root = Path(tmp) / "repo"
        root.mkdir()
        t = time.perf_counter()
        make_repo(root, args.users, shape)
        print(f"{args.users:,} users, M={args.slots}, D={args.dim}: Parquet "
              f"{(root / 'data' / f'{LONG_TERM_VIEW}.parquet').stat().st_size / 2**20:.0f} MiB "
              f"in {time.perf_counter() - t:.1f} s")
        client = cluster.client()
        for engine in ("local", "ray"):
            client.flushall(target_nodes=client.PRIMARIES)  # fresh online store for each engine
            row = run_engine(root, engine, cluster.connection)
            keys = client.dbsize(target_nodes=client.PRIMARIES)  # summed over the masters
            if keys != args.users:
                raise SystemExit(f"{engine}: {keys} keys online, expected {args.users}")
            row["users_per_s"] = args.users / row["materialize_s"]
            row["verified_users"] = verify(root, cluster.connection, shape, args.users)
            rows.append(row)
            print(f"  {engine:<6} done: {row['materialize_s']:.1f} s", flush=True)
    print(f"\n{'engine':<8}{'offline':<9}{'materialize s':>14}{'users/s':>10}{'process s':>11}{'peak MiB':>10}")
    for r in rows:
        print(f"{r['engine']:<8}{r['offline_store']:<9}{r['materialize_s']:>14.1f}{r['users_per_s']:>10.0f}"
              f"{r['process_wall_s']:>11.1f}{r['peak_tree_pss_mib']:>10.0f}")
    out = ROOT / "bench" / "results" / "bench_scale_feast.json"
    out.write_text(json.dumps({
        "users": args.users, "memory_slots": args.slots, "vector_dim": args.dim, "cpus": os.cpu_count(),
        "machine": platform.platform(), "online_store": "redis_cluster (3 masters, local)",
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"), "runs": rows,
    }, indent=2) + "\n")
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
