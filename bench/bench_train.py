"""Training cost on this machine: one LIBER model per backbone on the full ml-latest-small K=50 ledger.

Builds the leak-free training set through Feast (timed), then trains DIN + LIBER and DCNv2 + LIBER
(summary + shift) on the CPU with 2 threads, printing epochs, samples/s, wall time and peak memory
per model (goal: <= 10 minutes per model on 2 cores). The trained models are saved and exported to
``models/liber-<backbone>/`` (the latency benchmark and ``liber score`` use them).

    LIBER_DATA_DIR=$PWD/.liber/ml50-data .venv/bin/python bench/bench_train.py --ledger sqlite:///.liber/ml50.db
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ledger", default="sqlite:///.liber/ml50.db")
    ap.add_argument("--repo", default="feature_repo")
    ap.add_argument("--backbones", default="din,dcnv2")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="models")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from encoders.ctr.export import export_onnx, save_checkpoint
    from encoders.ctr.items import item_vectors
    from encoders.ctr.train import TrainConfig, train
    from encoders.uil.text import TextEncoder
    from liber_features.training.prepare import checkpoint_meta, prepare_training_set

    t0 = time.perf_counter()
    ledger, ts, versions = prepare_training_set(args.ledger, None, args.repo)
    t_set = time.perf_counter() - t0
    t0 = time.perf_counter()
    item_text = item_vectors(ts.item_vocab, ts.catalog, TextEncoder(device="cpu"))
    t_items = time.perf_counter() - t0
    print(f"training set through Feast: {t_set:.1f} s; item text vectors: {t_items:.1f} s "
          f"({len(ts.item_vocab)} items, cached after the first run)")
    rows = []
    for backbone in args.backbones.split(","):
        print(f"{backbone} + LIBER (summary + shift), CPU, {args.threads} threads")
        r = train(ts, item_text, TrainConfig(backbone=backbone, liber="both", epochs=args.epochs, device="cpu"))
        out = Path(args.out) / f"liber-{backbone}"
        meta = checkpoint_meta(ts, r, versions, ledger)
        save_checkpoint(r.model, meta, out)
        export_onnx(r.model, meta, out)
        row = {"backbone": backbone, "epochs_run": r.epochs_run, "best_epoch": r.best_epoch,
               "seconds": round(r.seconds, 1), "seconds_per_epoch": round(r.seconds / r.epochs_run, 1),
               "samples_per_s": round(r.samples_per_s), "peak_rss_mb": round(r.peak_rss_mb),
               "test_auc": round(r.test["auc"], 4), "validation_auc": round(r.validation["auc"], 4),
               "params": sum(p.numel() for p in r.model.parameters() if p.requires_grad), "model_dir": str(out)}
        rows.append(row)
        print(json.dumps(row))
    print("\n| model | epochs (best) | time | s/epoch | samples/s | peak RSS | test AUC |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['backbone']} + LIBER | {r['epochs_run']} ({r['best_epoch']}) | {r['seconds']} s | "
              f"{r['seconds_per_epoch']} | {r['samples_per_s']} | {r['peak_rss_mb']} MB | {r['test_auc']} |")
    Path("bench/results").mkdir(parents=True, exist_ok=True)
    Path("bench/results/bench_train.json").write_text(json.dumps(
        {"training_set_s": round(t_set, 1), "item_vectors_s": round(t_items, 1), "models": rows,
         "max_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}, indent=1))


if __name__ == "__main__":
    main()
