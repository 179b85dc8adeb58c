"""The LightGBM ranker (and DIN / DCNv2 with or without the side row) end to end on a real ledger:
quality, ONNX parity, and the online cost.

On a copy of an encoded ledger (default: the shared K = 50 ml-latest-small ledger), in a throwaway
Feast project on the production yaml (Redis online store, PostgreSQL SQL registry): build the
leak-free training set, train LightGBM (+ LIBER affinities) under each categorical setting, export
each to ONNX, write the online store as ``liber materialize`` does, then score random users x 100
random candidates through ``LiberScorer`` (one HMGET of memory + cache + user statistics, the item
statistics table, the feature rows, one onnxruntime call), the models interleaved in a fresh random
order each round. A neural setting (``din``, ``din+side``, ``dcnv2+side``: LIBER summary + shift,
the side row or not, ``encoders/ctr/side.py``) is trained, exported and served the same way: its
request adds the side rows (the same item statistics table and row code as the booster's) to the
graph's inputs. Prints and writes: test AUC / GAUC / LogLoss, training seconds, the largest
|onnxruntime - LightGBM| over the test split (boosted settings; the neural graphs' parity is
tests/test_side.py), and p50 / p99 of a request and of its parts.

    .venv/bin/python bench/bench_ranker.py            # ~4 min on the 2-core box
    .venv/bin/python bench/bench_ranker.py --settings user/4,din,din+side   # the side row's online cost
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_online import make_repo, pct  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
LEDGER = REPO.parent / "shared/data/liber-ledgers/ml-latest-small-k50.db.gz"
SETTINGS = {"user/4": (["user"], 4), "user+item/32": (["user", "item"], 32), "none": ([], 4)}
NEURAL = {"din": ("din", False), "din+side": ("din", True), "dcnv2": ("dcnv2", False),
          "dcnv2+side": ("dcnv2", True)}


def train_neural(name: str, root: Path, ts, text, versions, ledger) -> dict:
    """One DIN / DCNv2 + LIBER model, saved and exported as `liber train` + `liber export` do."""
    from encoders.ctr.export import export_onnx, save_checkpoint
    from encoders.ctr.train import TrainConfig, train
    from liber_features.training.prepare import checkpoint_meta

    backbone, side = NEURAL[name]
    r = train(ts, text, TrainConfig(backbone=backbone, liber="both", side=side, device="cpu"), log=lambda _m: None)
    model_dir = root / "models" / name.replace("+", "-")
    meta = checkpoint_meta(ts, r, versions, ledger)
    save_checkpoint(r.model, meta, model_dir)
    export_onnx(r.model, meta, model_dir)
    return {"dir": model_dir, "test": {k: round(v, 4) for k, v in r.test.items() if k != "samples"},
            "validation_auc": round(r.validation["auc"], 4), "trees": r.best_epoch,
            "train_seconds": round(r.seconds, 1), "onnx_mb": round((model_dir / "model.onnx").stat().st_size / 1e6, 1),
            "parity_max_abs": float("nan")}


def train_all(root: Path, ledger_url: str, settings: list[str]) -> tuple[dict, object]:
    from encoders.ctr.gbdt import GbdtConfig, GbdtResult, fit_gbdt, gbdt_features
    from encoders.ctr.gbdt_export import export_gbdt, save_gbdt
    from encoders.ctr.items import item_vectors
    from encoders.uil.text import TextEncoder
    from liber_features.model.ranker_features import RankerItems
    from liber_features.serving.scorer import onnx_session
    from liber_features.training.prepare import checkpoint_meta, prepare_training_set

    ledger, ts, versions = prepare_training_set(ledger_url, None, str(root), say=lambda _m: None)
    text = item_vectors(ts.item_vocab, ts.catalog, TextEncoder(device="cpu"))
    items = RankerItems.from_catalog(ts.item_vocab, ts.catalog, text)
    tables = (ts.summary_table, ts.shift_table)
    x, _ = gbdt_features(ts, text, tables, items)
    test = np.flatnonzero(ts.split == 2)
    out = {}
    for name in settings:
        if name in NEURAL:
            out[name] = train_neural(name, root, ts, text, versions, ledger)
            print(f"  {name}: test {out[name]['test']}, best epoch {out[name]['trees']}, "
                  f"{out[name]['train_seconds']} s", flush=True)
            continue
        cat, mct = SETTINGS[name]
        cfg = GbdtConfig(liber="both", categorical=cat, max_cat_threshold=mct)
        booster, res, p_test = fit_gbdt(ts, text, tables, cfg, items=items)
        g = GbdtResult.of(res, cfg, len(ts.label))
        model_dir = root / "models" / name.replace("/", "-").replace("+", "-")
        save_gbdt(booster, checkpoint_meta(ts, g, versions, ledger) | {"features": res["features"]}, items, model_dir)
        export_gbdt(model_dir)
        onnx = onnx_session(model_dir / "model.onnx", 1).run(None, {"features": x[test]})[0]
        out[name] = {"dir": model_dir, "test": {k: round(v, 4) for k, v in g.test.items() if k != "samples"},
                     "validation_auc": round(g.validation["auc"], 4), "trees": g.best_epoch,
                     "train_seconds": g.seconds, "onnx_mb": round((model_dir / "model.onnx").stat().st_size / 1e6, 1),
                     "parity_max_abs": float(np.abs(onnx - p_test).max())}
        print(f"  {name}: test {out[name]['test']}, {g.best_epoch} trees, {g.seconds} s, "
              f"|onnx - lightgbm| <= {out[name]['parity_max_abs']:.2e}", flush=True)
    return out, ts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ledger", default=str(LEDGER), help="a ledger file (.db or .db.gz), copied first")
    ap.add_argument("--settings", default="user/4,user+item/32,none")
    ap.add_argument("--requests", type=int, default=1000, help="per model")
    ap.add_argument("--candidates", type=int, default=100)
    ap.add_argument("--out", default="bench/results/bench_ranker.json")
    args = ap.parse_args()
    settings = args.settings.split(",")
    root = Path(tempfile.mkdtemp(prefix="bench-ranker-"))
    project, env = make_repo(root)
    os.environ.update(env)
    db = root / "ledger.db"
    opener = gzip.open if args.ledger.endswith(".gz") else open
    with opener(args.ledger, "rb") as src, open(db, "wb") as dst:
        shutil.copyfileobj(src, dst)
    ledger_url = f"sqlite:///{db}"
    os.environ["LIBER_LEDGER_URL"] = ledger_url
    load0 = os.getloadavg()[0]
    started = datetime.now(UTC).isoformat(timespec="seconds")
    try:
        print(f"training {settings} on {args.ledger}", flush=True)
        models, ts = train_all(root, ledger_url, settings)
        subprocess.run([sys.executable, "-m", "liber_features.cli", "materialize", "--repo", str(root), "--json"],
                       check=True, env=os.environ, stdout=subprocess.DEVNULL)
        from liber_features.features.repo import open_store
        from liber_features.serving.scorer import LiberScorer

        store = open_store(root)
        scorers = {n: LiberScorer.load(m["dir"], root, store=store) for n, m in models.items()}
        users, items = sorted(set(ts.user_ids)), list(ts.item_vocab)
        rng = random.Random(0)
        lat = {n: {"total": [], "fetch": [], "score": []} for n in scorers}
        for _ in range(args.requests):
            u, cand = rng.choice(users), rng.sample(items, args.candidates)
            for n in rng.sample(list(scorers), len(scorers)):
                t0 = time.perf_counter()
                r = scorers[n].score(u, cand)
                lat[n]["total"].append((time.perf_counter() - t0) * 1000)
                lat[n]["fetch"].append(r.fetch_ms)
                lat[n]["score"].append(r.score_ms)
        for n, parts in lat.items():
            models[n]["latency_ms"] = {k: dict(zip(("p50", "p99"), (round(v, 2) for v in pct(xs))))
                                       for k, xs in parts.items()}
            models[n]["dir"] = str(models[n]["dir"])
        print("\n| setting | test AUC / GAUC / LogLoss | val AUC | trees (epoch) | train s | ONNX MB | max abs diff | "
              "request p50 / p99 ms | fetch p50 | rows + ONNX p50 / p99 ms |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        for n, m in models.items():
            t, L = m["test"], m["latency_ms"]
            print(f"| {n} | {t['auc']} / {t['gauc']} / {t['logloss']} | {m['validation_auc']} | {m['trees']} | "
                  f"{m['train_seconds']} | {m['onnx_mb']} | {m['parity_max_abs']:.1e} | {L['total']['p50']} / "
                  f"{L['total']['p99']} | {L['fetch']['p50']} | {L['score']['p50']} / {L['score']['p99']} |")
        result = {"started": started, "command": "python " + " ".join(sys.argv), "machine": platform.machine(),
                  "cpus": os.cpu_count(), "load_1min_start": load0, "load_1min_end": os.getloadavg()[0],
                  "requests_per_model": args.requests, "candidates": args.candidates, "models": models}
        Path(args.out).write_text(json.dumps(result, indent=1))
        print(f"\nload {load0:.2f} -> {os.getloadavg()[0]:.2f}; written {args.out}")
    finally:
        try:
            from liber_features.features.repo import open_store

            open_store(root).registry.delete_project(project)
        except Exception as exc:  # noqa: BLE001 - cleanup of a throwaway project must not hide the result
            print(f"note: could not delete Feast project {project}: {exc}")
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
