"""LIBER's affinity features for one request of 100 candidates: Feast's on-demand view vs the fast path.

A throwaway Feast project on the production yaml (Redis online store, PostgreSQL SQL registry)
holds, at the production shape (M = 8, D = 384), 1,000 users' long-term memory (1–12 partitions)
and 10,000 items' unit text vectors (``item_text``), written by liber's writers. Then, round by
round in a fresh random order (the machine is noisy), one request of each variant for one random
user and 100 random candidates, each ending in the same ``(100, 7)`` float32 array (``LIBER``
order):

  odfv  ``get_online_features`` through ``liber_affinities_v1`` (service looked up once,
        ``full_feature_names=False``): Feast reads the user's memory and the 100 items' vectors
        from Redis and runs the python-mode view (``model/affinity.py``)
  fast  ``serving.fetch.RedisFetcher`` (one HMGET of the user's hash, what ``LiberScorer`` reads)
        + ``inputs.user_inputs`` + ``ranker_features.affinities`` in numpy, the candidates' text
        vectors from an in-memory table (a boosted ranker's item table, as the scorer holds it)

Both answers are checked equal before timing. Prints p50 / p99 in ms and writes
bench/results/bench_affinities.json.

    LIBER_TEST_REDIS_URL=redis://127.0.0.1:6379/0 .venv/bin/python bench/bench_affinities.py
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import subprocess
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
M, D, N = 8, 384, 100


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--users", type=int, default=1_000)
    ap.add_argument("--items", type=int, default=10_000)
    ap.add_argument("--rounds", type=int, default=300)
    args = ap.parse_args()
    redis_url = os.environ.get("LIBER_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
    pg_url = os.environ.get("LIBER_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
    tmp = Path(tempfile.mkdtemp(prefix="bench-affinities-"))
    project = f"bench_af_{uuid.uuid4().hex[:8]}"
    shutil.copy(REPO / "feature_repo" / "definitions.py", tmp)
    text = (REPO / "feature_repo" / "feature_store.redis.yaml").read_text()
    (tmp / "feature_store.redis.yaml").write_text(text.replace("project: liber\n", f"project: {project}\n"))
    os.environ.update({"FEAST_FS_YAML_FILE_PATH": str(tmp / "feature_store.redis.yaml"), "LIBER_REDIS_URL": redis_url,
                       "LIBER_REGISTRY_URL": pg_url, "LIBER_DATA_DIR": str(tmp),
                       "LIBER_MEMORY_SLOTS": str(M), "LIBER_VECTOR_DIM": str(D)})

    import pandas as pd

    from liber_features.features.item_text import sample_item_text, write_item_text
    from liber_features.features.online import write_online
    from liber_features.features.repo import AFFINITY_SERVICE, LONG_TERM_VIEW, apply_repo, open_store, sample_long_term
    from liber_features.model.affinity import AFFINITY_FEATURES
    from liber_features.model.inputs import user_inputs
    from liber_features.model.ranker_features import affinities
    from liber_features.model.vocab import ItemVocab, UserVocab
    from liber_features.serving.fetch import RedisFetcher

    rng = np.random.default_rng(0)
    users = [f"u{k}" for k in range(args.users)]
    items = [f"i{k}" for k in range(args.items)]
    sealed = datetime.now(UTC) - timedelta(days=1)
    store = open_store(tmp)
    try:
        apply_repo(store, tmp)
        counts = rng.integers(1, 13, len(users))
        memory = pd.concat([sample_long_term([u], sealed, partition_count=int(c), seed=k)
                            for k, (u, c) in enumerate(zip(users, counts))], ignore_index=True)
        write_online(store, LONG_TERM_VIEW, memory)
        vectors = sample_item_text(items, D, seed=1)
        write_item_text(store, vectors)
        vocab = ItemVocab.build(items)
        table = np.zeros((vocab.size, D), np.float32)  # the ranker's in-memory item table
        table[vocab.index(items)] = np.stack(vectors.text_vector)
        service = store.get_feature_service(AFFINITY_SERVICE)
        fetcher = RedisFetcher(store, timeout_ms=1000)
        nobody = UserVocab.build([])

        def odfv(user, cand):
            got = store.get_online_features(features=service, entity_rows=[{"user_id": user, "item_id": i}
                                                                          for i in cand]).to_dict()
            return np.column_stack([np.asarray(got[f], np.float32) for f in AFFINITY_FEATURES])

        def fast(user, cand):
            row = fetcher.fetch([user])[0] or {}
            feeds = user_inputs(user_id=user, user_vocab=nobody, item_vocab=vocab, memory_slots=M, vector_dim=D,
                                history_length=1, summary_vectors=row.get("summary_vectors"),
                                shift_vectors=row.get("shift_vectors"), partition_count=row.get("partition_count"),
                                recent_item_ids=None, cache_item_ids=None)
            count = feeds["partition_count"]
            used = np.arange(M)[None, :] < np.minimum(count, M)[:, None]
            aff = affinities(feeds["summary"], feeds["shift"], used, table[vocab.index(cand)])
            return np.column_stack([np.broadcast_to(count, (len(cand),)).astype(np.float32),
                                    *(aff[f].astype(np.float32) for f in AFFINITY_FEATURES[1:])])

        variants = {"odfv": odfv, "fast": fast}
        for u in users[:20]:  # same answers before any timing
            cand = list(rng.choice(items, N, replace=False))
            assert np.array_equal(odfv(u, cand), fast(u, cand)), u
        times: dict[str, list[float]] = {k: [] for k in variants}
        for _ in range(args.rounds):
            u, cand = users[rng.integers(len(users))], list(rng.choice(items, N, replace=False))
            order = list(variants)
            random.shuffle(order)
            for k in order:
                t0 = time.perf_counter()
                variants[k](u, cand)
                times[k].append((time.perf_counter() - t0) * 1e3)
    finally:
        import redis

        client = redis.Redis.from_url(redis_url)
        doomed = list(client.scan_iter(match=b"*" + project.encode(), count=1000))
        for lo in range(0, len(doomed), 1000):
            client.delete(*doomed[lo:lo + 1000])
        store.registry.delete_project(project)
        shutil.rmtree(tmp, ignore_errors=True)

    figures = {k: {"p50_ms": round(float(np.percentile(v, 50)), 3), "p99_ms": round(float(np.percentile(v, 99)), 3)}
               for k, v in times.items()}
    for k, f in figures.items():
        print(f"N={N} {k:5s} p50 {f['p50_ms']:8.3f} ms  p99 {f['p99_ms']:8.3f} ms")
    print(f"odfv / fast at p50: {figures['odfv']['p50_ms'] / figures['fast']['p50_ms']:.1f}x")
    out = {"date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), "candidates": N, "memory_slots": M, "dim": D,
           "users": args.users, "items": args.items, "rounds": args.rounds, "figures": figures,
           "machine": f"{platform.machine()} {os.cpu_count()} cores", "commit": _commit(),
           "load": subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()}
    path = REPO / "bench" / "results" / "bench_affinities.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {path}")


def _commit() -> str:
    done = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                          check=False)
    return done.stdout.strip()


if __name__ == "__main__":
    main()
