"""Online latency by ``user_id`` against the real Redis: Feast's read vs the liber fast path and scorer.

10,000 users are written in the LIBER layout (M=8, D=384, caches of 0-49 items) through the liber
writer into a throwaway Feast project on the production yaml (Redis online store, PostgreSQL SQL
registry). Then, round by round in a fresh random order (the machine is noisy), one request of each
variant, 1 user x 100 candidates:

  a  Feast get_online_features, FeatureService looked up once      a0 ... looked up per request
  b  liber fast fetch alone (one HMGET)                             c  fast fetch + ONNX score
  d  Feast fetch + ONNX score                                       e  POST /score via uvicorn (keep-alive)
  f  ONNX alone, 100 and 1,000 candidates (1 and 2 threads)         g  16 users in one pipeline, per user

p50 / p99 and the ratio to (a). Also: the 60 s registry refresh landing on a request, with the SQL
registry's cache_mode sync vs thread (ttl shortened to 2 s to see it), and two FeatureStores in one
process. Needs a model exported by ``liber export`` (bench/bench_train.py writes models/liber-din).

    .venv/bin/python bench/bench_online.py --model models/liber-din
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
REDIS_URL = os.environ.get("LIBER_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
PG_URL = os.environ.get("LIBER_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def make_repo(root: Path, ttl: int | None = None, cache_mode: str | None = None) -> tuple[str, dict[str, str]]:
    project = f"liber_bench_{uuid.uuid4().hex[:8]}"
    shutil.copy(REPO / "feature_repo/definitions.py", root)
    text = (REPO / "feature_repo/feature_store.redis.yaml").read_text()
    text = text.replace("project: liber\n", f"project: {project}\n")
    if ttl is not None:
        text = text.replace("cache_ttl_seconds: 60", f"cache_ttl_seconds: {ttl}")
    if cache_mode is not None:
        text = text.replace("cache_mode: thread", f"cache_mode: {cache_mode}")
    (root / "feature_store.redis.yaml").write_text(text)
    env = {"FEAST_FS_YAML_FILE_PATH": str(root / "feature_store.redis.yaml"), "LIBER_REDIS_URL": REDIS_URL,
           "LIBER_REGISTRY_URL": PG_URL, "LIBER_DATA_DIR": str(root / "data")}
    return project, env


def pct(xs: list[float]) -> tuple[float, float]:
    a = np.asarray(xs)
    return float(np.percentile(a, 50)), float(np.percentile(a, 99))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_users(store, card, n: int, seed: int = 0) -> list[str]:
    from liber_features.features.online import push_short_term_cache, write_online
    from liber_features.features.repo import LONG_TERM_VIEW

    rng = np.random.default_rng(seed)
    M, D, L = card.memory_slots, card.vector_dim, card.history_length
    items = np.array(list(card.item_vocab))
    users = [f"bench-u{i}" for i in range(n)]
    now = pd.Timestamp(datetime.now(UTC))

    def vectors(counts) -> list[np.ndarray]:  # min(count, M) x D per user: only filled slots are stored
        return [rng.standard_normal((min(int(c), M), D)).astype(np.float32).ravel() for c in counts]

    for lo in range(0, n, 1000):
        chunk = users[lo:lo + 1000]
        counts = rng.integers(0, 20, len(chunk))
        write_online(store, LONG_TERM_VIEW, pd.DataFrame({
            "user_id": chunk, "sealed_at": now, "created_at": now, "partition_count": counts,
            "summary_vectors": vectors(counts), "shift_vectors": vectors(counts),
            "recent_item_ids": [list(rng.choice(items, L)) if c else [] for c in counts],
            "latest_summary": "bench", "latest_shift": "bench", "encoder_version": card.encoder_version}))
        lens = rng.integers(0, 50, len(chunk))
        push_short_term_cache(store, pd.DataFrame({
            "user_id": chunk, "event_timestamp": now, "created_at": now,
            "cache_item_ids": [list(rng.choice(items, k)) for k in lens], "cache_length": lens,
            "cache_event_types": [["view"] * k for k in lens],
            "cache_oldest_at": now, "cache_newest_at": now}))
    return users


def registry_refresh(root: Path, users: list[str], seconds: float) -> dict[str, dict[str, float]]:
    """Request latencies over ``seconds`` with a 2 s registry ttl: does the refresh land on requests?"""
    from liber_features.features.repo import RANKER_SERVICE, open_store

    out = {}
    for mode in ("sync", "thread"):
        sub = root / f"reg-{mode}"
        sub.mkdir()
        project, env = make_repo(sub, ttl=2, cache_mode=mode)
        store = open_store(sub, environ={**os.environ, **env})
        from liber_features.features.repo import apply_repo

        apply_repo(store, sub)
        store = open_store(sub, environ={**os.environ, **env})
        service = store.get_feature_service(RANKER_SERVICE)
        lat, t_end = [], time.perf_counter() + seconds
        while time.perf_counter() < t_end:
            t0 = time.perf_counter()
            store.get_online_features(features=service, entity_rows=[{"user_id": random.choice(users)}])
            lat.append((time.perf_counter() - t0) * 1000)
        p50, p99 = pct(lat)
        out[mode] = {"requests": len(lat), "p50_ms": p50, "p99_ms": p99, "max_ms": float(max(lat)),
                     "over_10ms": int(sum(x > 10 for x in lat))}
        store.registry.delete_project(project)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="models/liber-din")
    ap.add_argument("--users", type=int, default=10_000)
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--refresh-seconds", type=float, default=8.0)
    ap.add_argument("--only", default=None, metavar="a,b,...",
                    help="run only these variants (still interleaved; always includes a)")
    ap.add_argument("--out", default="bench/results/bench_online.json")
    args = ap.parse_args()

    import httpx
    import onnxruntime as ort
    import redis

    from liber_features.features.repo import RANKER_SERVICE, apply_repo, open_store
    from liber_features.model.card import ModelCard
    from liber_features.serving.fetch import RedisFetcher
    from liber_features.serving.scorer import LiberScorer, ScorerConfig, onnx_session

    card = ModelCard.load(args.model)
    root = Path(tempfile.mkdtemp(prefix="liber-bench-online-"))
    project, env = make_repo(root)
    os.environ.update(env)
    store = open_store(root)
    apply_repo(store, root)
    store = open_store(root)  # a fresh store, as a ranker process would have
    server = None
    try:
        t0 = time.perf_counter()
        users = write_users(store, card, args.users)
        print(f"wrote {len(users)} users (M={card.memory_slots}, D={card.vector_dim}, caches 0-49) "
              f"in {time.perf_counter() - t0:.1f} s; Redis {REDIS_URL}, registry PostgreSQL, project {project}")
        fast = LiberScorer.load(args.model, root, store=store, config=ScorerConfig(fetch="redis"))
        slow = LiberScorer.load(args.model, root, store=store, config=ScorerConfig(fetch="feast"))
        rfetch = RedisFetcher(store)
        service = store.get_feature_service(RANKER_SERVICE)
        items_all = list(card.item_vocab)
        cands = [random.sample(items_all, 100) for _ in range(64)]
        feeds = fast.user_side(users[0], rfetch.fetch([users[0]])[0])
        big = {**feeds, "item_idx": card.item_vocabulary().index(random.sample(items_all, 1000))}
        small = {**feeds, "item_idx": big["item_idx"][:100]}
        two = onnx_session(Path(args.model) / "model.onnx", 2)
        port = free_port()
        server = subprocess.Popen([sys.executable, "-c", "from liber_features.cli.main import main; main()", "serve",
                                   "--model", args.model, "--repo", str(root), "--port", str(port),
                                   "--no-access-log"],  # stderr is a pipe nobody reads until the end
                                  env={**os.environ}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10)
        for _ in range(300):
            try:
                if http.get("/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        else:
            raise SystemExit(f"liber serve did not start: {server.stderr.read().decode()[-2000:]}")

        def u():
            return random.choice(users)

        variants = {
            "a  Feast get_online_features (service looked up once)": lambda: store.get_online_features(
                features=service, entity_rows=[{"user_id": u()}], full_feature_names=True).to_dict(),
            "a0 Feast, service looked up per request (reference)": lambda: store.get_online_features(
                features=store.get_feature_service(RANKER_SERVICE), entity_rows=[{"user_id": u()}],
                full_feature_names=True).to_dict(),
            "b  liber fast fetch alone (one HMGET)": lambda: rfetch.fetch([u()]),
            "c  fast fetch + ONNX score, 100 candidates": lambda: fast.score(u(), random.choice(cands)),
            "d  Feast fetch + ONNX score, 100 candidates": lambda: slow.score(u(), random.choice(cands)),
            "e  POST /score via uvicorn, keep-alive, 100 candidates": lambda: http.post(
                "/score", json={"user_id": u(), "item_ids": random.choice(cands)}).raise_for_status(),
            "f1 ONNX alone, 100 candidates, 1 thread": lambda: fast.session.run(None, small),
            "f2 ONNX alone, 1,000 candidates, 1 thread": lambda: fast.session.run(None, big),
            "f3 ONNX alone, 100 candidates, 2 threads": lambda: two.run(None, small),
            "g  fast fetch, 16 users in one pipeline (per user)": lambda: rfetch.fetch(random.sample(users, 16)),
            "g2 fetch + score, 16 users (score_many, per user)": lambda: fast.score_many(
                [(x, random.choice(cands)) for x in random.sample(users, 16)]),
        }
        if args.only:
            wanted = {"a", *args.only.split(",")}
            variants = {k: fn for k, fn in variants.items() if k[:2].strip() in wanted}
        per_user = {k: 16 if k.startswith("g") else 1 for k in variants}
        for fn in variants.values():  # warm every path once
            fn()
        # As `liber serve` does after start-up: the long-lived heap (Feast, registry, onnxruntime)
        # leaves the collector's generations, so no request pays a full collection over it.
        gc.collect()
        gc.freeze()
        lat = {k: [] for k in variants}
        keys = list(variants)
        for _ in range(args.requests):
            random.shuffle(keys)
            for k in keys:
                t0 = time.perf_counter()
                variants[k]()
                lat[k].append((time.perf_counter() - t0) * 1000 / per_user[k])
        a50, a99 = pct(lat[keys[0]] if keys[0].startswith("a ") else lat[next(k for k in lat if k.startswith("a "))])
        rows = []
        print(f"\n{args.requests} requests per variant, interleaved; ms; ratio = (a) / variant (higher is faster)")
        print("| variant | p50 ms | p99 ms | (a) p50 / p50 | (a) p99 / p99 |")
        print("| --- | --- | --- | --- | --- |")
        for k in variants:
            p50, p99 = pct(lat[k])
            rows.append({"variant": k, "p50_ms": p50, "p99_ms": p99,
                         "speedup_p50": a50 / p50, "speedup_p99": a99 / p99})
            print(f"| {k} | {p50:.3f} | {p99:.3f} | {a50 / p50:.2f}x | {a99 / p99:.2f}x |")
        res = {r["variant"][:2].strip(): r for r in rows}
        goals = {}
        if "b" in res:
            b = res["b"]
            goals["b >= 4x faster than a at p50 and p99"] = b["speedup_p50"] >= 4 and b["speedup_p99"] >= 4
        if "c" in res:
            goals["c p99 <= a p99"] = res["c"]["p99_ms"] <= a99
        if "e" in res:
            goals["e p99 < 10 ms"] = res["e"]["p99_ms"] < 10
        for g, ok in goals.items():
            print(f"goal {g}: {'met' if ok else 'NOT met'}")
        print(f"\nregistry refresh ({args.refresh_seconds:.0f} s of Feast requests each, cache_ttl_seconds=2):")
        refresh = registry_refresh(root, users, args.refresh_seconds)
        for mode, r in refresh.items():
            print(f"  cache_mode {mode:6}: {r['requests']} requests, p50 {r['p50_ms']:.3f} ms, "
                  f"p99 {r['p99_ms']:.3f} ms, max {r['max_ms']:.1f} ms, {r['over_10ms']} over 10 ms")
        # Two FeatureStores in one process: alternate requests between them.
        other = open_store(root)
        other_service = other.get_feature_service(RANKER_SERVICE)
        one, both = [], []
        for i in range(600):
            s, svc = (store, service) if i % 2 else (other, other_service)
            t0 = time.perf_counter()
            store.get_online_features(features=service, entity_rows=[{"user_id": u()}])
            one.append((time.perf_counter() - t0) * 1000)
            t0 = time.perf_counter()
            s.get_online_features(features=svc, entity_rows=[{"user_id": u()}])
            both.append((time.perf_counter() - t0) * 1000)
        two_stores = {"one_store_p50_ms": pct(one)[0], "alternating_two_stores_p50_ms": pct(both)[0]}
        print(f"two FeatureStores in one process: p50 {two_stores['one_store_p50_ms']:.3f} ms with one "
              f"vs {two_stores['alternating_two_stores_p50_ms']:.3f} ms alternating between two")
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"), "users": args.users,
            "requests": args.requests, "model": card.backbone, "onnxruntime": ort.__version__,
            "providers": fast.providers, "rows": rows, "goals": goals, "registry_refresh": refresh,
            "two_stores": two_stores}, indent=1))
    finally:
        if server is not None:
            server.terminate()
            server.wait()
        client = redis.Redis.from_url(REDIS_URL)
        keys = list(client.scan_iter(match=b"*" + project.encode(), count=10_000))
        for lo in range(0, len(keys), 5000):
            client.delete(*keys[lo:lo + 5000])
        store.registry.delete_project(project)
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
