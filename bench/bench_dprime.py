"""Ranking quality at each stored dimension D′: does a PCA projection of the LIBER vectors keep AUC?

For each D′ in ``--dims`` (384 = no projection, the reference): fit the projection on training-period
partitions (``liber project``'s fit, stored in a copy of the ledger), build the leak-free training
set through Feast at ``LIBER_VECTOR_DIM = D′``, train each backbone + LIBER (summary + shift) on the
CPU with the same seed, and score the test split. The intervals are the evaluation grid's paired
bootstrap over test *users* (``encoders/ctr/intervals.py``, ``--boot`` resamples): the same
resampled users score every D′, so the interval of ``AUC(D′) - AUC(384)`` carries the test set's
noise once instead of twice.

    .venv/bin/python bench/bench_dprime.py [--ledger sqlite:///.liber/ml50.db] [--dims 384,128,64,32]
        [--backbones din,dcnv2] [--epochs 10] [--seeds 0] [--boot 1000]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SHARED = HERE.parents[1] / "shared" / "data" / "liber-ledgers" / "ml-latest-small-k50.db.gz"


def compare(y: np.ndarray, users: np.ndarray, preds: dict[int, list[np.ndarray]], n: int) -> dict[int, dict]:
    """{D′: AUC, GAUC, LogLoss (means over seeds), and ΔAUC / ΔGAUC against the first D′ with paired
    user-bootstrap 95 % intervals (``encoders/ctr/intervals.py``, the evaluation grid's own)."""
    from encoders.ctr.intervals import paired_user_bootstrap
    from encoders.ctr.metrics import metrics

    ref = next(iter(preds))
    named = {str(d): p for d, p in preds.items()}
    ivs = paired_user_bootstrap(y, users, named, [(str(d), str(ref)) for d in preds if d != ref], n=n)
    out = {}
    for d, seeds in preds.items():
        ms = [metrics(y, p, users) for p in seeds]
        m = {k: float(np.mean([x[k] for x in ms])) for k in ("auc", "gauc", "logloss")}
        out[d] = {**m, "seeds": len(seeds),
                  **({"vs_ref": ivs[f"{d} - {ref}"]} if d != ref else {})}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ledger", help="encoded ledger URL (default: a copy of the shared K=50 one); "
                                     "the projections fitted are stored in it")
    ap.add_argument("--dims", default="384,128,64,32", help="D′ values, the first is the reference")
    ap.add_argument("--backbones", default="din,dcnv2")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--seeds", default="0", help="training seeds per cell, e.g. 0,1,2 (metrics: means over seeds)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--boot", type=int, default=1000)
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from encoders.ctr.items import item_vectors
    from encoders.ctr.side import side_rows
    from encoders.ctr.train import Batches, TrainConfig, predict, train
    from encoders.uil.text import TextEncoder
    from liber_features.ledger.store import Ledger
    from liber_features.training.fit_projection import fit_projection
    from liber_features.training.prepare import prepare_training_set
    from liber_features.uil.projection import project_new, save_projection

    stamp = f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC"
    dims = [int(d) for d in args.dims.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        url = args.ledger
        if url is None:
            with gzip.open(SHARED) as src, open(root / "ledger.db", "wb") as dst:
                shutil.copyfileobj(src, dst)
            url = f"sqlite:///{root / 'ledger.db'}"
        ledger = Ledger(url)
        seeds = [int(x) for x in args.seeds.split(",")]
        preds: dict[str, dict[int, list[np.ndarray]]] = {b: {} for b in args.backbones.split(",")}
        runs: list[dict] = []
        item_text = y = users = None
        for dim in dims:
            fitted = {}
            if dim < dims[0]:
                p = fit_projection(ledger, dim)
                save_projection(ledger, p)
                project_new(ledger)
                fitted = p.fitted_on
            os.environ["LIBER_VECTOR_DIM"] = str(dim)
            os.environ["LIBER_DATA_DIR"] = str(root / f"data-{dim}")
            repo = root / f"repo-{dim}"
            shutil.copytree(HERE.parent / "feature_repo", repo, ignore=shutil.ignore_patterns("data", "*.db"))
            t0 = time.perf_counter()
            _, ts, _ = prepare_training_set(url, None, str(repo), say=lambda _m: None)
            t_set = time.perf_counter() - t0
            if item_text is None:
                item_text = item_vectors(ts.item_vocab, ts.catalog, TextEncoder(device="cpu"))
            test = np.flatnonzero(ts.mask("test"))
            if y is None:
                y, users = ts.label[test], ts.user_ids[test]
            assert np.array_equal(ts.label[test], y)  # one split, every D′: paired comparisons
            side = side_rows(ts, item_text)  # the same side row at every D′: only the memory changes
            for backbone, seed in ((b, s) for b in preds for s in seeds):
                r = train(ts, item_text, TrainConfig(backbone=backbone, liber="both", epochs=args.epochs,
                                                     device="cpu", seed=seed), log=lambda _m: None, side=side)
                data = Batches(ts, (ts.summary_table, ts.shift_table), torch.device("cpu"), side)
                preds[backbone].setdefault(dim, []).append(predict(r.model, data, test))
                run = {"dim": dim, "backbone": backbone, "seed": seed, "epochs_run": r.epochs_run,
                       "best_epoch": r.best_epoch,
                       "seconds": round(r.seconds, 1), "training_set_s": round(t_set, 1),
                       "encoder_version": ts.encoder_version,
                       "explained_variance": fitted.get("explained_variance"),
                       "fit_partitions": fitted.get("partitions"), "test_auc": r.test["auc"]}
                runs.append(run)
                print(json.dumps(run), flush=True)
    print(f"\nbench_dprime {stamp}: test split {len(y):,} samples, {len(set(users))} users; seeds {args.seeds} "
          f"(means); {args.boot} user-bootstrap resamples, 95 % intervals\n")
    print("| backbone + LIBER | D′ | test AUC | GAUC | LogLoss | ΔAUC vs 384 [95 % CI] | ΔGAUC vs 384 [95 % CI] |")
    print("| --- | ---: | ---: | ---: | ---: | --- | --- |")
    results = {}
    for backbone, by_dim in preds.items():
        res = compare(y, users, by_dim, args.boot)
        results[backbone] = {str(d): v for d, v in res.items()}
        for d, v in res.items():
            iv = v.get("vs_ref")
            cells = [f"{iv[k]['delta']:+.4f} [{iv[k]['lo']:+.4f}, {iv[k]['hi']:+.4f}]" for k in ("auc", "gauc")] \
                if iv else ["–", "–"]
            print(f"| {backbone} | {d} | {v['auc']:.4f} | {v['gauc']:.4f} | {v['logloss']:.4f} | "
                  + " | ".join(cells) + " |")
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "bench_dprime.json").write_text(json.dumps(
        {"measured_at": stamp, "dims": dims, "seeds": seeds, "boot": args.boot, "runs": runs, "results": results},
        indent=1))


if __name__ == "__main__":
    main()
