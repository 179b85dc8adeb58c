"""onnxruntime alone, exported graphs side by side: p50 / p99 per call, interleaved round by round.

Each graph gets the scorer's own session settings (``liber_features.serving.scorer.onnx_session``: 1 intra-op
thread, workers that sleep) and the same inputs: one user with 5 of M slots filled and a full
history, against 100 and 1,000 random candidates. Used to compare two exports of one checkpoint
(e.g. before and after a change to the graph), which the online bench cannot: it times one model.

    .venv/bin/python bench/bench_onnx.py models/liber-din/model.onnx /tmp/old/model.onnx
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+", type=Path, help="model.onnx files (each beside its model_card.json)")
    ap.add_argument("--rounds", type=int, default=2000)
    ap.add_argument("--candidates", default="100,1000")
    ap.add_argument("--out", default=None, help="write the figures here as JSON")
    args = ap.parse_args()

    from liber_features.model.card import ModelCard
    from liber_features.serving.scorer import onnx_session

    card = ModelCard.load(args.models[0].parent)
    M, D, L, V = card.memory_slots, card.vector_dim, card.history_length, card.item_vocabulary().size
    rng = np.random.default_rng(0)
    user = {"user_idx": np.array([1]), "summary": rng.standard_normal((1, M, D)).astype(np.float32),
            "shift": rng.standard_normal((1, M, D)).astype(np.float32), "partition_count": np.array([5]),
            "hist_idx": rng.integers(2, V, (1, L))}
    sessions = {str(p): onnx_session(p, 1) for p in args.models}
    rows = []
    for n in (int(x) for x in args.candidates.split(",")):
        feeds = {**user, "item_idx": rng.integers(2, V, n)}
        outs = {k: s.run(None, feeds)[0] for k, s in sessions.items()}
        first = next(iter(outs.values()))
        lat = {k: [] for k in sessions}
        keys = list(sessions)
        for _ in range(args.rounds):
            random.shuffle(keys)
            for k in keys:
                t0 = time.perf_counter()
                sessions[k].run(None, feeds)
                lat[k].append((time.perf_counter() - t0) * 1000)
        for k in sessions:
            p50, p99 = np.percentile(lat[k], [50, 99])
            diff = float(np.abs(outs[k] - first).max())
            rows.append({"model": k, "candidates": n, "p50_ms": float(p50), "p99_ms": float(p99),
                         "max_abs_diff_vs_first": diff})
            print(f"{n:5d} candidates  {k}: p50 {p50:.3f} ms  p99 {p99:.3f} ms  max |score - first's| {diff:.2e}")
    if args.out:
        Path(args.out).write_text(json.dumps({"rounds": args.rounds, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
