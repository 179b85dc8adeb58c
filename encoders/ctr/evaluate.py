"""The evaluation grid and its report: backbones × LIBER variants × seeds, measured as it falls.

Variants: ``none`` (the backbone alone), ``both`` (UIF over summary + shift vectors), ``summary``
(summary vectors only) and ``nollm`` (the same fusion over vectors of each partition's own item
titles and genres through the same text encoder — no generation). Every model selects its epoch on
validation AUC; the test split is scored once per model. The report gives mean ± std over seeds of
test AUC, GAUC and LogLoss, the relative AUC change against the backbone alone, and AUC by how
many partitions the user had at the sample's time (the evidence for *where* LIBER can help).
"""

from __future__ import annotations

import json
import platform
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from sklearn.metrics import roc_auc_score

from encoders.ctr.items import partition_item_vectors
from encoders.ctr.train import Batches, TrainConfig, predict, train
from liber_features.training.samples import TrainingSet

__all__ = ["PARTITION_BUCKETS", "GridConfig", "run_grid", "write_reports"]

PARTITION_BUCKETS = [(0, 0), (1, 2), (3, 7), (8, 10**9)]
VARIANT_LABEL = {"none": "backbone alone", "both": "LIBER summary + shift",
                 "summary": "LIBER summary only", "nollm": "no LLM (item-text partitions)"}


class GridConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    backbones: list[str] = Field(default_factory=lambda: ["din", "dcnv2"])
    variants: list[str] = Field(default_factory=lambda: ["none", "both", "summary", "nollm"])
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2])
    epochs: int = 10
    max_train_samples: int | None = None
    device: str | None = None


def _bucket(counts: np.ndarray) -> list[tuple[str, np.ndarray]]:
    return [(f"{lo}" if lo == hi else (f"{lo}+" if hi > 10**6 else f"{lo}-{hi}"),
             (counts >= lo) & (counts <= hi)) for lo, hi in PARTITION_BUCKETS]


def run_grid(ts: TrainingSet, item_text: np.ndarray, grid: GridConfig, log=print) -> dict[str, Any]:
    nollm = partition_item_vectors(ts.part_items, ts.item_vocab, item_text, ts.part_users) \
        if "nollm" in grid.variants else None
    test = np.flatnonzero(ts.mask("test"))
    rows = []
    for backbone in grid.backbones:
        for variant in grid.variants:
            for seed in grid.seeds:
                cfg = TrainConfig(backbone=backbone, liber=variant, seed=seed, epochs=grid.epochs,
                                  max_train_samples=grid.max_train_samples, device=grid.device)
                log(f"{backbone} / {variant} / seed {seed}")
                tables = nollm if variant == "nollm" else None
                r = train(ts, item_text, cfg, tables=tables, log=log)
                p = predict(r.model, Batches(ts, tables or (ts.summary_table, ts.shift_table),
                                             next(r.model.parameters()).device), test)
                by_parts = {}
                for name, m in _bucket(ts.partition_count[test]):
                    y = ts.label[test][m]
                    by_parts[name] = {"samples": int(m.sum()),
                                      "auc": float(roc_auc_score(y, p[m])) if 0 < y.sum() < len(y) else None}
                rows.append({"backbone": backbone, "variant": variant, "seed": seed,
                             **{k: v for k, v in r.as_dict().items() if k != "config"},
                             "test_by_partitions": by_parts})
                log(f"  test AUC {r.test['auc']:.4f}  GAUC {r.test['gauc']:.4f}  "
                    f"LogLoss {r.test['logloss']:.4f}  ({r.seconds:.0f} s)")
    return {"rows": rows}


def _summary(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    keys = sorted({(r["backbone"], r["variant"]) for r in rows},
                  key=lambda k: (k[0], list(VARIANT_LABEL).index(k[1])))
    base = {}
    for b, v in keys:
        sel = [r for r in rows if r["backbone"] == b and r["variant"] == v]
        agg = {m: (float(np.mean([r["test"][m] for r in sel])), float(np.std([r["test"][m] for r in sel])))
               for m in ("auc", "gauc", "logloss")}
        if v == "none":
            base[b] = agg["auc"][0]
        buckets = {}
        for name in sel[0]["test_by_partitions"]:
            vals = [r["test_by_partitions"][name]["auc"] for r in sel if r["test_by_partitions"][name]["auc"]]
            buckets[name] = {"samples": sel[0]["test_by_partitions"][name]["samples"],
                             "auc": float(np.mean(vals)) if vals else None}
        out.append({"backbone": b, "variant": v, "seeds": len(sel), **{f"{m}_mean": a for m, (a, _) in agg.items()},
                    **{f"{m}_std": s for m, (_, s) in agg.items()},
                    "epochs": [r["best_epoch"] for r in sel], "seconds": [r["seconds"] for r in sel],
                    "by_partitions": buckets})
    for row in out:
        row["auc_rel_change_pct"] = (100 * (row["auc_mean"] / base[row["backbone"]] - 1)
                                     if row["backbone"] in base else None)
    return out


def write_reports(results: dict[str, Any], ts: TrainingSet, facts: dict[str, Any], versions,
                  grid: GridConfig, out_dir: str | Path) -> dict[str, Path]:
    """``facts``: what made the vectors (``liber_features.training.prepare.ledger_facts``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = _summary(results["rows"])
    header = {
        "dataset": "MovieLens ml-latest-small (GroupLens; Harper & Konstan 2015)"
        if ts.counts["samples"] == 100836 else f"ledger {facts['ledger']}",
        "k": facts["k"], "m": ts.shape.memory_slots, "l": ts.shape.history_length,
        "d": ts.shape.vector_dim,
        "split": "per user in (time, event id) order: first 80 % train, next 10 % validation, last 10 % test",
        # The set's own label rule; a set saved before label rules existed was labelled by rating.
        "label": ts.counts.get("label_rule", "rating >= 4"), "prompt_version": versions[0], "llm": versions[1],
        "text_encoder": versions[2], "encode": facts, "samples": ts.counts,
        "grid": grid.model_dump(), "machine": f"{platform.machine()}, {platform.system()}",
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    doc = {"header": header, "summary": summary, "runs": results["rows"]}
    (out / "evaluation.json").write_text(json.dumps(doc, indent=1, default=str))

    # Bar chart: test AUC mean ± std per backbone × variant.
    backbones = sorted({s["backbone"] for s in summary})
    variants = [v for v in VARIANT_LABEL if any(s["variant"] == v for s in summary)]
    fig, ax = plt.subplots(figsize=(8, 4.2))
    width = 0.8 / max(len(variants), 1)
    for j, v in enumerate(variants):
        xs, ys, es = [], [], []
        for i, b in enumerate(backbones):
            s = next((s for s in summary if s["backbone"] == b and s["variant"] == v), None)
            if s:
                xs.append(i + (j - (len(variants) - 1) / 2) * width)
                ys.append(s["auc_mean"])
                es.append(s["auc_std"])
        ax.bar(xs, ys, width, yerr=es, capsize=3, label=VARIANT_LABEL[v], color=f"C{list(VARIANT_LABEL).index(v)}")
    lo = min(s["auc_mean"] - s["auc_std"] for s in summary)
    hi = max(s["auc_mean"] + s["auc_std"] for s in summary)
    ax.set_ylim(lo - 0.01, hi + 0.006)
    ax.set_xticks(range(len(backbones)), [b.upper() if b == "din" else "DCNv2" for b in backbones])
    ax.set_ylabel("test AUC (mean ± std over seeds)")
    ax.set_title(f"Test AUC by backbone and LIBER variant (K={header['k']}, M={header['m']}, "
                 f"{len(grid.seeds)} seeds)")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(out / "evaluation.png", dpi=110)
    plt.close(fig)

    # AUC by partitions the user had at the sample's time.
    fig, ax = plt.subplots(figsize=(8, 4.2))
    names = list(summary[0]["by_partitions"])
    colors = {v: f"C{i}" for i, v in enumerate(VARIANT_LABEL)}  # same colours as the bar chart
    for s in summary:
        ys = [s["by_partitions"][n]["auc"] for n in names]
        ax.plot(range(len(names)), ys, marker="o" if s["backbone"] == "din" else "s",
                color=colors[s["variant"]], linestyle="-" if s["backbone"] == "dcnv2" else "--",
                label=f"{'DCNv2' if s['backbone'] == 'dcnv2' else 'DIN'}: {VARIANT_LABEL[s['variant']]}")
    ax.set_xticks(range(len(names)), [f"{n}\n({summary[0]['by_partitions'][n]['samples']} test samples)"
                                      for n in names], fontsize=8)
    ax.set_xlabel("partitions sealed before the sample (LIBER memory slots filled, capped at M)")
    ax.set_ylabel("test AUC (mean over seeds)")
    ax.set_title("Test AUC by the user's number of partitions")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(out / "evaluation_by_partitions.png", dpi=110)
    plt.close(fig)

    (out / "evaluation.md").write_text(_markdown(header, summary))
    return {"json": out / "evaluation.json", "markdown": out / "evaluation.md",
            "chart": out / "evaluation.png", "by_partitions": out / "evaluation_by_partitions.png"}


def _markdown(h: dict[str, Any], summary: list[dict[str, Any]]) -> str:
    lines = [
        "# LIBER evaluation", "",
        f"- Data: {h['dataset']}; {h['samples']['samples']} samples, label {h['label']}.",
        f"- Split: {h['split']}; model selection and early stopping on validation AUC, "
        "test scored once per model.",
        f"- UBSP K = {h['k']}; memory slots M = {h['m']}; history L = {h['l']}; vectors D = {h['d']}.",
        f"- LLM `{h['llm']}`, prompt version `{h['prompt_version']}`, text encoder `{h['text_encoder']}`.",
        f"- Encoding cost recorded in the ledger: {h['encode']['encode_llm_calls']} LLM calls over "
        f"{h['encode']['encode_runs']} runs, {h['encode']['encode_seconds']} s of run time.",
        f"- Grid: {', '.join(h['grid']['backbones'])} × {', '.join(h['grid']['variants'])} × seeds "
        f"{h['grid']['seeds']}, up to {h['grid']['epochs']} epochs.", "",
        "| backbone | variant | test AUC | GAUC | LogLoss | ΔAUC vs backbone | best epochs |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for s in summary:
        rel = "—" if s["variant"] == "none" or s["auc_rel_change_pct"] is None else f"{s['auc_rel_change_pct']:+.2f} %"
        lines.append(f"| {s['backbone']} | {VARIANT_LABEL[s['variant']]} | {s['auc_mean']:.4f} ± {s['auc_std']:.4f} "
                     f"| {s['gauc_mean']:.4f} ± {s['gauc_std']:.4f} | {s['logloss_mean']:.4f} ± {s['logloss_std']:.4f} "
                     f"| {rel} | {s['epochs']} |")
    names = list(summary[0]["by_partitions"])
    lines += ["", "Test AUC by partitions sealed before the sample (mean over seeds):", "",
              "| backbone | variant | "
              + " | ".join(f"{n} ({summary[0]['by_partitions'][n]['samples']})" for n in names) + " |",
              "| --- | --- | " + " | ".join("---" for _ in names) + " |"]
    for s in summary:
        cells = [f"{s['by_partitions'][n]['auc']:.4f}" if s["by_partitions"][n]["auc"] else "—" for n in names]
        lines.append(f"| {s['backbone']} | {VARIANT_LABEL[s['variant']]} | " + " | ".join(cells) + " |")
    lines += ["", "![test AUC](evaluation.png)", "", "![AUC by partitions](evaluation_by_partitions.png)", "",
              "## Reproduce", "",
              f"The vectors: `liber ingest` (K = {h['k']}) then `liber encode` (prompt, LLM and encoder above; "
              f"{h['encode']['encode_llm_calls']} LLM calls, {h['encode']['encode_seconds']} s of encode-run "
              "time recorded in the ledger on a 2-core CPU). The grid: `liber evaluate` (device: "
              f"{h['grid'].get('device') or 'cuda when available, else cpu'}).", "", "```bash",
              f"liber ingest --events ../shared/data/ml-latest-small --k {h['k']} --ledger sqlite:///.liber/ml50.db",
              "liber encode --ledger sqlite:///.liber/ml50.db --batch-size 16",
              "LIBER_DATA_DIR=$PWD/.liber/ml50-data liber evaluate --ledger sqlite:///.liber/ml50.db --out docs",
              "# or: build the set here (--save-set set.npz) and train elsewhere: "
              "liber evaluate --training-set set.npz --device cuda", "```", ""]
    return "\n".join(lines)
