"""Regularisation sweep of the neural backbones (issue 19), chosen on validation only.

Builds the leak-free training set and the side rows once, then trains one model per
(variant, backbone, dropout, embedding L2, seed) with epochs 10 and patience 3, so the per-epoch
validation AUC shows whether it still falls after the best epoch. Each finished model is appended
to ``--out`` (JSON, rewritten after every model: a partial sweep is still a result). The test
split is scored by ``train()`` but this script neither prints nor uses it to choose.

    LIBER_DATA_DIR=/tmp/reg-data nice -n 19 .venv/bin/python bench/bench_regularise.py \\
        --ledger sqlite:////tmp/reg-ml50.db --variants none --seeds 0 \\
        --dropouts 0.1,0.3,0.5 --l2s 0,1e-6,1e-5,1e-4 --out bench/results/bench_regularise.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch


def floats(s: str) -> list[float]:
    return [float(x) for x in s.split(",") if x]


def print_table(rows: list[dict]) -> None:
    """One line per model: validation AUC per epoch, the best, and whether it falls after epoch 4."""
    print("| backbone | LIBER | seed | dropout | embedding L2 | validation AUC by epoch | best epoch | "
          "val AUC / GAUC / LogLoss | falls after epoch 4 | s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['backbone']} | {r['liber']} | {r['seed']} | {r['dropout']:g} | {r['embedding_l2']:g} | "
              f"{' '.join(f'{a:.4f}' for a in r['val_auc_history'])} | {r['best_epoch']} | "
              f"{r['val_auc']:.4f} / {r['val_gauc']:.4f} / {r['val_logloss']:.4f} | "
              f"{'yes' if r['falls_after_4'] else 'no'} | {r['seconds']:.0f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ledger", default="sqlite:///.liber/ml50.db")
    ap.add_argument("--repo", default="feature_repo")
    ap.add_argument("--backbones", default="din,dcnv2")
    ap.add_argument("--dropouts", type=floats, default=[0.1, 0.3, 0.5])
    ap.add_argument("--l2s", type=floats, default=[0.0, 1e-6, 1e-5, 1e-4])
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--variants", default="none", help="liber variants, comma-separated (none, both, ...)")
    ap.add_argument("--configs", default="", help="explicit backbone:dropout:l2 triples (;-separated) "
                    "instead of the --backbones x --dropouts x --l2s grid")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--patience", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="bench/results/bench_regularise.json")
    ap.add_argument("--table", action="store_true", help="only print --out as the markdown table of docs/model.md")
    args = ap.parse_args()
    if args.table:
        print_table(json.loads(Path(args.out).read_text()))
        return
    torch.set_num_threads(args.threads)

    from encoders.ctr.items import item_vectors
    from encoders.ctr.side import side_rows
    from encoders.ctr.train import TrainConfig, train
    from encoders.uil.text import TextEncoder
    from liber_features.training.prepare import prepare_training_set

    t0 = time.perf_counter()
    _ledger, ts, _versions = prepare_training_set(args.ledger, None, args.repo)
    item_text = item_vectors(ts.item_vocab, ts.catalog, TextEncoder(device="cpu"))
    side = side_rows(ts, item_text)
    print(f"training set, item vectors and side rows: {time.perf_counter() - t0:.1f} s", flush=True)

    if args.configs:
        grid = [(b, float(d), float(l2)) for b, d, l2 in (c.split(":") for c in args.configs.split(";"))]
    else:
        grid = [(b, d, l2) for b in args.backbones.split(",") for d in args.dropouts for l2 in args.l2s]
    out = Path(args.out)
    rows = json.loads(out.read_text()) if out.exists() else []
    for variant in args.variants.split(","):
        for seed in (int(s) for s in args.seeds.split(",")):
            for backbone, dropout, l2 in grid:
                cfg = TrainConfig(backbone=backbone, liber=variant, seed=seed, dropout=dropout,
                                  embedding_l2=l2, epochs=args.epochs, patience=args.patience, device="cpu")
                print(f"{backbone} liber={variant} seed={seed} dropout={dropout} embedding_l2={l2}", flush=True)
                r = train(ts, item_text, cfg, side=side, log=lambda m: print(m, flush=True))
                auc = [round(h["val_auc"], 4) for h in r.history]
                rows.append({"backbone": backbone, "liber": variant, "seed": seed, "dropout": dropout,
                             "embedding_l2": l2, "val_auc_history": auc,
                             "train_loss_history": [round(h["train_loss"], 4) for h in r.history],
                             "best_epoch": r.best_epoch, "epochs_run": r.epochs_run,
                             "val_auc": round(r.validation["auc"], 4), "val_gauc": round(r.validation["gauc"], 4),
                             "val_logloss": round(r.validation["logloss"], 4),
                             # after epoch 4: does validation AUC fall below its best of epochs 1-4?
                             "falls_after_4": bool(len(auc) > 4 and min(auc[4:]) < max(auc[:4])),
                             "seconds": round(r.seconds, 1), "config": cfg.model_dump(),
                             "finished_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())})
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_text(json.dumps(rows, indent=1))
                print(json.dumps({k: rows[-1][k] for k in ("backbone", "liber", "seed", "dropout", "embedding_l2",
                                                          "best_epoch", "val_auc", "val_auc_history")}), flush=True)


if __name__ == "__main__":
    main()
