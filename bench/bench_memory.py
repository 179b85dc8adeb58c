"""Bytes the long-term memory costs: Redis per user online, Parquet per partition offline.

Layouts measured in one run on the same rows:
- ``padded``: every user's two vector fields hold M×D floats, zero-padded (release 0.1's layout);
- ``filled``: only the filled slots, min(partition_count, M)×D′ floats (the layout written now), at
  D′ ∈ {384, 128, 64, 32}: D′ < 384 is a PCA projection fitted on training-period partitions
  (``liber project``), stored in the (copied) ledger like a user's would be.

Per D′ also the online read latency of one user through both fetch paths (``RedisFetcher``: one
HMGET; ``FeastFetcher``: Feast's ``get_online_features``), interleaved, on the ledger's users.

Users: those of a real encoded ledger (default: the shared K = 50 ledger of ml-latest-small,
copied to a temp file) and ``--synthetic`` users whose partition counts are drawn from that
ledger's own spread. Online: each user's newest row written with ``write_online`` into Redis
under a throwaway Feast project, then ``MEMORY USAGE <key> SAMPLES 0`` per key. Offline: the long-
term Parquet table's bytes per partition (one row per partition). Then the 10-million-user
projection: Redis GB at the measured mean, offline TB at 50 partitions per user.

    python bench/bench_memory.py [--ledger sqlite:///.liber/ml50.db] [--synthetic 10000]
        [--redis redis://127.0.0.1:6379/0] [--dims 384,128,64,32] [--reads 2000]
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
SHARED = HERE.parents[1] / "shared" / "data" / "liber-ledgers" / "ml-latest-small-k50.db.gz"
M, D, L = 8, 384, 50
USERS_10M, PARTS_PER_USER = 10_000_000, 50


def _bench_online_write():
    spec = importlib.util.spec_from_file_location("bench_online_write", HERE / "bench_online_write.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def newest_rows(table) -> pd.DataFrame:
    from liber_features.features.memory import to_frame

    df = to_frame(table).sort_values(["user_id", "sealed_at"])
    return df.drop_duplicates("user_id", keep="last").reset_index(drop=True)


def padded(df: pd.DataFrame) -> pd.DataFrame:
    """The same rows in the 0.1 layout: M×D floats, zeros after the filled slots."""
    out = df.copy()
    for col in ("summary_vectors", "shift_vectors"):
        def pad(v: np.ndarray) -> np.ndarray:
            p = np.zeros(M * D, dtype=np.float32)
            p[:v.size] = v
            return p
        out[col] = [pad(v) for v in df[col]]
    return out


def full_store(root: Path, project: str, redis_url: str, dim: int):
    """A temp Feast repo on Redis with the whole ranker service applied at D = ``dim`` (the
    views' tag and the fetchers' shape come from LIBER_VECTOR_DIM, as in a user's repo)."""
    from liber_features.features.repo import LONG_TERM_SCHEMA, SHORT_TERM_VIEW, write_parquet

    os.environ["LIBER_VECTOR_DIM"] = str(dim)
    root.mkdir()
    write_parquet(_template.head(1), root / "data/user_long_term_memory.parquet", LONG_TERM_SCHEMA)
    store = _bench_online_write().make_store(root, project, redis_url)
    spec = importlib.util.spec_from_file_location(f"bench_defs_{dim}", root / "definitions.py")
    defs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(defs)
    store.apply([defs.user, defs.user_long_term_memory, defs.short_term_push, defs.user_short_term_cache,
                 defs.liber_ranker_v1])
    assert store.get_feature_view(SHORT_TERM_VIEW)
    return store


_template: pd.DataFrame  # one real row, the seed of each repo's sample table (set in main)


def read_latency(targets: dict[str, tuple], n: int, rng) -> dict[str, dict[str, dict[str, float]]]:
    """p50 / p99 ms of a one-user fetch for every (layout, D′) target and both paths, all
    interleaved on the same random users: a busy neighbour slows every target alike, so the
    ratios between them hold even when the absolute figures move."""
    from liber_features.serving.fetch import FeastFetcher, RedisFetcher

    paths = {label: {"fast path (HMGET)": RedisFetcher(store), "Feast get_online_features": FeastFetcher(store)}
             for label, (store, _) in targets.items()}
    users = next(iter(targets.values()))[1]
    for fetchers in paths.values():  # warm: connections, Feast's registry cache, the allocator
        for f in fetchers.values():
            for u in users[:200]:
                f.fetch([u])
    took = {label: {k: [] for k in fetchers} for label, fetchers in paths.items()}
    for u in rng.choice(users, size=n):
        for label, fetchers in paths.items():
            for name, f in fetchers.items():
                t0 = time.perf_counter()
                f.fetch([str(u)])
                took[label][name].append((time.perf_counter() - t0) * 1e3)
    return {label: {k: {"p50_ms": float(np.percentile(v, 50)), "p99_ms": float(np.percentile(v, 99))}
                    for k, v in per.items()} for label, per in took.items()}


def synthetic(df: pd.DataFrame, n: int, counts: np.ndarray, rng, dim: int = D) -> pd.DataFrame:
    """``n`` users like the ledger's: partition counts drawn from ``counts``, random unit-scale vectors."""
    drawn = rng.choice(counts, size=n)
    template = df.iloc[0]

    def vec(c: int) -> np.ndarray:
        return rng.standard_normal(min(int(c), M) * dim).astype(np.float32)

    return pd.DataFrame({
        "user_id": [f"synthetic-{i:06d}" for i in range(n)],
        "sealed_at": template.sealed_at, "created_at": template.created_at,
        "partition_count": drawn.astype(np.int64),
        "summary_vectors": [vec(c) for c in drawn], "shift_vectors": [vec(c) for c in drawn],
        "recent_item_ids": [list(template.recent_item_ids)] * n,
        "latest_summary": template.latest_summary, "latest_shift": template.latest_shift,
        "encoder_version": template.encoder_version,
    })  # fmt: skip


def redis_bytes(store, client, project: str, df: pd.DataFrame) -> list[int]:
    from liber_features.features.online import write_online
    from liber_features.features.repo import LONG_TERM_VIEW

    pattern = b"*" + project.encode()
    write_online(store, LONG_TERM_VIEW, df)
    keys = list(client.scan_iter(match=pattern, count=5000))
    sizes = [int(client.memory_usage(k, samples=0)) for k in keys]
    for i in range(0, len(keys), 5000):
        client.delete(*keys[i:i + 5000])
    assert len(sizes) == len(df), (len(sizes), len(df))
    return sizes


def parquet_bytes_per_row(df: pd.DataFrame, path: Path, *, how: str) -> float:
    """``how``: "0.1" writes as release 0.1 did (pyarrow's defaults: snappy, dictionaries),
    "now" as ``write_memory_table`` writes (zstd, no dictionary on the vectors)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from liber_features.features.memory import write_memory_table

    table = pa.Table.from_pandas(df, preserve_index=False)
    if how == "0.1":
        pq.write_table(table, path)
    else:
        write_memory_table(table, path)
    return path.stat().st_size / len(df)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ledger",
                    help="SQLite/PostgreSQL URL of an encoded ledger (default: a copy of the shared K=50 one); "
                         "the D′ projections fitted are stored in it")
    ap.add_argument("--synthetic", type=int, default=10_000)
    ap.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    ap.add_argument("--dims", default="384,128,64,32", help="D′ values; the first must be 384 (the reference)")
    ap.add_argument("--reads", type=int, default=2000, help="one-user fetches per path and D′")
    args = ap.parse_args()

    import redis

    from liber_features.ledger.store import Ledger

    client = redis.Redis.from_url(args.redis)
    client.ping()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        url = args.ledger
        if url is None:
            if not SHARED.exists():
                sys.exit(f"error: no --ledger and no shared ledger at {SHARED}")
            with gzip.open(SHARED) as src, open(root / "ledger.db", "wb") as dst:
                shutil.copyfileobj(src, dst)
            url = f"sqlite:///{root / 'ledger.db'}"
        ledger = Ledger(url)
        run(args, ledger, client, root, rng)


def run(args, ledger, client, root: Path, rng) -> None:
    global _template
    from liber_features.features.memory import memory_table, to_frame
    from liber_features.features.online import write_online
    from liber_features.features.repo import LONG_TERM_VIEW
    from liber_features.training.fit_projection import fit_projection
    from liber_features.uil.projection import project_new, save_projection

    dims = [int(d) for d in args.dims.split(",")]
    every = memory_table(ledger, memory_slots=M, vector_dim=D, history_length=L)
    all_rows = to_frame(every)
    real = newest_rows(every)
    _template = real
    counts = real.partition_count.to_numpy()
    stamp = f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC"
    print(f"bench_memory {stamp}  M={M} D={D}  ledger {ledger.safe_url()}")
    print(f"ledger: {len(real)} users with partitions, {len(all_rows)} partitions, "
          f"median {int(np.median(counts))} partitions per user, {int((counts >= M).sum())} users with ≥ M")
    out: dict = {"measured_at": stamp, "M": M, "D": D, "users": len(real), "partitions": len(all_rows),
                 "synthetic_users": args.synthetic, "rows": []}
    targets: dict[str, tuple] = {}
    projects: list[str] = []
    for dim in dims:
        fitted = None
        if dim < D:
            p = fit_projection(ledger, dim)
            save_projection(ledger, p)
            project_new(ledger)
            fitted = p.fitted_on
        table = memory_table(ledger, memory_slots=M, vector_dim=dim, history_length=L)
        rows_d, newest = to_frame(table), newest_rows(table)
        sets = {"ledger": newest, "synthetic": synthetic(newest, args.synthetic, counts, rng, dim)}
        layouts = [("filled", sets)]
        if dim == D:  # release 0.1's layout, the reference every ratio is taken against
            layouts.insert(0, ("padded (0.1)", {k: padded(v) for k, v in sets.items()}))
        for layout, frames in layouts:
            # One Feast project per target: their rows stay online for the latency run below.
            project = f"liber_bench_{uuid.uuid4().hex[:8]}"
            store = full_store(root / f"repo-{dim}-{project}", project, args.redis, dim)
            row = {"dim": dim, "layout": layout, "explained_variance": (fitted or {}).get("explained_variance")}
            for name, df in frames.items():
                sizes = redis_bytes(store, client, project, df)
                row[f"redis_{name}"] = {"mean": statistics.mean(sizes), "median": statistics.median(sizes),
                                        "p99": float(np.percentile(sizes, 99))}
            src = padded(all_rows) if layout.startswith("padded") else rows_d
            how = "0.1" if layout.startswith("padded") else "now"
            row["offline_bytes_per_partition"] = parquet_bytes_per_row(src, root / f"{dim}-{how}.parquet", how=how)
            # The padded rows too: "not slower than release 0.1" is measured, not assumed.
            write_online(store, LONG_TERM_VIEW, frames["ledger"])
            targets[f"{dim} {layout}"] = (store, [str(u) for u in newest.user_id])
            projects.append(project)
            out["rows"].append(row)
            print(json.dumps(row))
    try:
        latency = read_latency(targets, args.reads, rng)
    finally:
        for project in projects:
            keys = list(client.scan_iter(match=b"*" + project.encode(), count=5000))
            for i in range(0, len(keys), 5000):
                client.delete(*keys[i:i + 5000])
    for r in out["rows"]:
        r["latency"] = latency[f"{r['dim']} {r['layout']}"]
    ref = out["rows"][0]
    print()
    print("| D′ | layout | Redis B/user, ledger users: mean (median, p99) | 10M users GB | ratio | "
          "synthetic mean | offline B/partition | 10M×50 TB | ratio | fast p50 / p99 ms | Feast p50 / p99 ms |")
    print("| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in out["rows"]:
        led, syn, off = r["redis_ledger"], r["redis_synthetic"], r["offline_bytes_per_partition"]
        lat = r["latency"]
        fast = f"{lat['fast path (HMGET)']['p50_ms']:.2f} / {lat['fast path (HMGET)']['p99_ms']:.2f}"
        feast = f"{lat['Feast get_online_features']['p50_ms']:.2f} / {lat['Feast get_online_features']['p99_ms']:.2f}"
        print(f"| {r['dim']} | {r['layout']} | {led['mean']:,.0f} ({led['median']:,.0f}, {led['p99']:,.0f}) | "
              f"{led['mean'] * USERS_10M / 1e9:,.1f} | {led['mean'] / ref['redis_ledger']['mean']:.3f} | "
              f"{syn['mean']:,.0f} | {off:,.0f} | {off * USERS_10M * PARTS_PER_USER / 1e12:,.2f} | "
              f"{off / ref['offline_bytes_per_partition']:.3f} | {fast} | {feast} |")
    one = parquet_bytes_per_row(all_rows.assign(
        summary_vectors=[v[:D] for v in all_rows.summary_vectors],
        shift_vectors=[v[:D] for v in all_rows.shift_vectors]), root / "one.parquet", how="now")
    out["one_pair_per_partition_bytes"] = one
    print(f"\nreference: one D = {D} vector pair per partition row, zstd: {one:,.0f} B/partition "
          f"(the M-slot window costs {rows_d_ratio(out, one):.2f}× that at D′ = {D})")
    print(f"goals: Redis ≤ 0.100 of padded, offline ≤ 1/M = {1 / M:.3f} of padded")
    Path(HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "bench_memory.json").write_text(json.dumps(out, indent=1))


def rows_d_ratio(out: dict, one: float) -> float:
    filled = [r for r in out["rows"] if r["dim"] == D and r["layout"] == "filled"]
    return filled[0]["offline_bytes_per_partition"] / one if filled else float("nan")

if __name__ == "__main__":
    main()
