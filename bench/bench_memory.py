"""Bytes the long-term memory costs: Redis per user online, Parquet per partition offline.

Two layouts measured in one run on the same rows:
- ``padded``: every user's two vector fields hold M×D floats, zero-padded (release 0.1's layout);
- ``filled``: only the filled slots, min(partition_count, M)×D floats (the layout written now).

Users: those of a real encoded ledger (default: the shared K = 50 ledger of ml-latest-small,
copied to a temp file) and ``--synthetic`` users whose partition counts are drawn from that
ledger's own spread. Online: each user's newest row written with ``write_online`` into Redis
under a throwaway Feast project, then ``MEMORY USAGE <key> SAMPLES 0`` per key. Offline: the long-
term Parquet table's bytes per partition (one row per partition). Then the 10-million-user
projection: Redis GB at the measured mean, offline TB at 50 partitions per user.

    python bench/bench_memory.py [--ledger sqlite:///.liber/ml50.db] [--synthetic 10000]
        [--redis redis://127.0.0.1:6379/0]
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import shutil
import statistics
import sys
import tempfile
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


def synthetic(df: pd.DataFrame, n: int, counts: np.ndarray, rng) -> pd.DataFrame:
    """``n`` users like the ledger's: partition counts drawn from ``counts``, random unit-scale vectors."""
    drawn = rng.choice(counts, size=n)
    template = df.iloc[0]

    def vec(c: int) -> np.ndarray:
        return rng.standard_normal(min(int(c), M) * D).astype(np.float32)

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
                    help="SQLite/PostgreSQL URL of an encoded ledger (default: a copy of the shared K=50 one)")
    ap.add_argument("--synthetic", type=int, default=10_000)
    ap.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    args = ap.parse_args()

    import redis

    from liber_features.features.memory import memory_table
    from liber_features.features.repo import LONG_TERM_SCHEMA, write_parquet
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
        every = memory_table(ledger, memory_slots=M, vector_dim=D, history_length=L)
        from liber_features.features.memory import to_frame

        all_rows = to_frame(every)
        real = newest_rows(every)
        counts = real.partition_count.to_numpy()
        sets = {"ledger users": real,
                f"{args.synthetic:,} synthetic users": synthetic(real, args.synthetic, counts, rng)}

        store_root = root / "repo"
        store_root.mkdir()
        write_parquet(real.head(1), store_root / "data/user_long_term_memory.parquet", LONG_TERM_SCHEMA)
        project = f"liber_bench_{uuid.uuid4().hex[:8]}"
        store = _bench_online_write().make_store(store_root, project, args.redis)

        print(f"bench_memory {datetime.now(UTC):%Y-%m-%d %H:%M} UTC  M={M} D={D}  ledger {ledger.safe_url()}")
        print(f"ledger: {len(real)} users with partitions, {len(all_rows)} partitions, "
              f"median {int(np.median(counts))} partitions per user, {int((counts >= M).sum())} users with ≥ M")
        print()
        print("| users | layout | Redis bytes/user mean | median | p99 | 10M users (GB) |")
        print("| --- | --- | ---: | ---: | ---: | ---: |")
        means: dict[tuple[str, str], float] = {}
        for name, df in sets.items():
            for layout, rows in (("padded (0.1)", padded(df)), ("filled", df)):
                sizes = redis_bytes(store, client, project, rows)
                mean = statistics.mean(sizes)
                means[(name, layout)] = mean
                print(f"| {name} | {layout} | {mean:,.0f} | {statistics.median(sizes):,.0f} | "
                      f"{np.percentile(sizes, 99):,.0f} | {mean * USERS_10M / 1e9:,.1f} |")
        print()
        for name in sets:
            print(f"{name}: filled / padded = {means[(name, 'filled')] / means[(name, 'padded (0.1)')]:.3f} "
                  f"(goal ≤ 0.100)")
        print()
        print("| offline table | bytes/partition | 10M users × 50 partitions (TB) |")
        print("| --- | ---: | ---: |")
        offline = {}
        for layout, rows, how in (("padded, snappy (0.1)", padded(all_rows), "0.1"),
                                  ("filled, zstd (now)", all_rows, "now")):
            offline[how] = per = parquet_bytes_per_row(rows, root / f"{how}.parquet", how=how)
            print(f"| {layout}: M-slot window per partition row | {per:,.0f} | "
                  f"{per * USERS_10M * PARTS_PER_USER / 1e12:,.2f} |")
        one = parquet_bytes_per_row(all_rows.assign(
            summary_vectors=[v[:D] for v in all_rows.summary_vectors],
            shift_vectors=[v[:D] for v in all_rows.shift_vectors]), root / "one.parquet", how="now")
        print(f"| reference, not built: one vector pair per partition row, zstd | {one:,.0f} | "
              f"{one * USERS_10M * PARTS_PER_USER / 1e12:,.2f} |")
        print()
        print(f"offline now / 0.1 = {offline['now'] / offline['0.1']:.3f} (goal ≤ 1/M = {1 / M:.3f})")


if __name__ == "__main__":
    main()
