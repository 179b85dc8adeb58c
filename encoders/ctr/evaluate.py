"""The evaluation grid and its report: backbones × LIBER variants × seeds, measured as it falls.

Variants: ``none`` (the backbone alone), ``both`` (UIF over summary + shift vectors), ``summary``
(summary vectors only), ``nollm`` (the same fusion over vectors of each partition's own item
titles and genres through the same text encoder — no generation), and two placebos of the same
shape (``shuffled``: another user's vectors; ``random``: random unit vectors; ``placebo.py``).
Every model selects its epoch on validation AUC; the test split is scored once per model. The
report gives mean ± std over seeds of test AUC, GAUC and LogLoss; ΔAUC and ΔGAUC of each variant
against its backbone alone, and of each LIBER variant against each placebo, with paired bootstrap
95 % intervals over test users (``intervals.py``); a lift is claimed only where LIBER is above the
backbone *and* both placebos. Also AUC by how many partitions the user had at the sample's time.
"""

from __future__ import annotations

import json
import platform
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from sklearn.metrics import roc_auc_score

from encoders.ctr.intervals import paired_user_bootstrap, verdict
from encoders.ctr.items import partition_item_vectors
from encoders.ctr.placebo import random_tables, shuffled_tables
from encoders.ctr.side import side_rows
from encoders.ctr.train import Batches, TrainConfig, Variant, predict, train
from liber_features.training.samples import TrainingSet

__all__ = ["PARTITION_BUCKETS", "GridConfig", "run_grid", "write_reports"]

PARTITION_BUCKETS = [(0, 0), (1, 2), (3, 7), (8, 10**9)]
VARIANT_LABEL = {"none": "backbone alone", "both": "LIBER summary + shift",
                 "summary": "LIBER summary only", "nollm": "no LLM (item-text partitions)",
                 "shuffled": "placebo: another user's vectors", "random": "placebo: random vectors"}
LLM_VARIANTS, PLACEBOS = ("both", "summary"), ("shuffled", "random")
BACKBONE_LABEL = {"din": "DIN", "dcnv2": "DCNv2", "lgbm": "LightGBM"}
_STYLE = {"din": ("o", "--"), "dcnv2": ("s", "-"), "lgbm": ("^", ":")}


class GridConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    backbones: list[Literal["din", "dcnv2", "lgbm"]] = Field(default_factory=lambda: ["din", "dcnv2", "lgbm"])
    variants: list[Variant] = Field(default_factory=lambda: list(VARIANT_LABEL))
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2, 3, 4])
    bootstrap: int = Field(1000, ge=0, description="user resamples per interval; 0: no intervals")
    epochs: int = 10
    max_train_samples: int | None = None
    device: str | None = None


def _bucket(counts: np.ndarray) -> list[tuple[str, np.ndarray]]:
    return [(f"{lo}" if lo == hi else (f"{lo}+" if hi > 10**6 else f"{lo}-{hi}"),
             (counts >= lo) & (counts <= hi)) for lo, hi in PARTITION_BUCKETS]


def _tables(ts: TrainingSet, item_text: np.ndarray, variants: list[str]) -> dict[str, tuple]:
    """The memory tables each variant trains on (the LLM's own for none / both / summary)."""
    out: dict[str, tuple] = {}
    if "nollm" in variants:
        out["nollm"] = partition_item_vectors(ts.part_items, ts.item_vocab, item_text, ts.part_users)
    if "shuffled" in variants:
        out["shuffled"] = shuffled_tables((ts.summary_table, ts.shift_table), ts.part_users)
    if "random" in variants:
        out["random"] = random_tables(ts.summary_table.shape)
    return out


def run_grid(ts: TrainingSet, item_text: np.ndarray, grid: GridConfig, log=print) -> dict[str, Any]:
    alt = _tables(ts, item_text, grid.variants)
    test = np.flatnonzero(ts.mask("test"))
    side = None  # the side rows: built once, the same for every neural model of the grid
    rows = []
    preds: dict[str, dict[str, list[np.ndarray]]] = {}
    for backbone in grid.backbones:
        for variant in grid.variants:
            for seed in grid.seeds:
                log(f"{backbone} / {variant} / seed {seed}")
                tables = alt.get(variant)
                if backbone == "lgbm":
                    res, p = _boosted(ts, item_text, variant, tables, seed)
                else:
                    cfg = TrainConfig(backbone=backbone, liber=variant, seed=seed, epochs=grid.epochs,
                                      max_train_samples=grid.max_train_samples, device=grid.device)
                    side = side or side_rows(ts, item_text)
                    r = train(ts, item_text, cfg, tables=tables, log=log, side=side)
                    p = predict(r.model, Batches(ts, tables or (ts.summary_table, ts.shift_table),
                                                 next(r.model.parameters()).device, side), test)
                    res = {k: v for k, v in r.as_dict().items() if k != "config"}
                preds.setdefault(backbone, {}).setdefault(variant, []).append(p)
                by_parts = {}
                for name, m in _bucket(ts.partition_count[test]):
                    y = ts.label[test][m]
                    by_parts[name] = {"samples": int(m.sum()),
                                      "auc": float(roc_auc_score(y, p[m])) if 0 < y.sum() < len(y) else None}
                rows.append({"backbone": backbone, "variant": variant, "seed": seed, **res,
                             "test_by_partitions": by_parts})
                log(f"  test AUC {res['test']['auc']:.4f}  GAUC {res['test']['gauc']:.4f}  "
                    f"LogLoss {res['test']['logloss']:.4f}  ({res['seconds']:.0f} s)")
    return {"rows": rows, "intervals": _intervals(ts, test, preds, grid, log)}


def _boosted(ts: TrainingSet, item_text: np.ndarray, variant: str, tables, seed: int):
    """The LightGBM backbone (``gbdt.py``): LIBER as affinity features of the variant's tables."""
    from encoders.ctr.gbdt import train_gbdt

    if variant in ("both", "summary"):
        own = (ts.summary_table, ts.shift_table)
        tables = own if variant == "both" else (own[0], np.zeros_like(own[1]))
    return train_gbdt(ts, item_text, None if variant == "none" else tables, seed=seed)


def _intervals(ts: TrainingSet, test: np.ndarray, preds: dict, grid: GridConfig, log) -> dict[str, Any]:
    """backbone → "a - b" → ΔAUC / ΔGAUC with intervals: each variant against the backbone alone,
    each LIBER variant against each placebo."""
    if not grid.bootstrap or "none" not in grid.variants:
        return {}
    out = {}
    for backbone, by_variant in preds.items():
        pairs = [(v, "none") for v in by_variant if v != "none"]
        pairs += [(v, p) for v in LLM_VARIANTS for p in PLACEBOS if v in by_variant and p in by_variant]
        log(f"{backbone}: paired bootstrap over test users, {grid.bootstrap} resamples, {len(pairs)} comparisons")
        out[backbone] = paired_user_bootstrap(ts.label[test], ts.user_ids[test], by_variant, pairs,
                                              n=grid.bootstrap)
    return out


def lift_verdict(intervals: dict[str, Any], variant: str) -> str:
    """A LIBER variant's lift in words: claimed only above the backbone and both placebos."""
    vs_none = intervals.get(f"{variant} - none")
    if vs_none is None:
        return "—"
    base = verdict(vs_none["auc"])
    if base != "higher":
        return f"AUC {base} vs the backbone alone"
    beaten = [p for p in PLACEBOS if f"{variant} - {p}" in intervals
              and verdict(intervals[f"{variant} - {p}"]["auc"]) == "higher"]
    missing = [p for p in PLACEBOS if f"{variant} - {p}" not in intervals]
    if missing:
        return f"above the backbone; placebo {', '.join(missing)} not run: no lift claimed"
    if len(beaten) == len(PLACEBOS):
        return "lift: above the backbone and both placebos"
    return "above the backbone, but not above every placebo: no lift claimed"


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
    intervals = results.get("intervals", {})
    doc = {"header": header, "summary": summary, "intervals": intervals, "runs": results["rows"]}
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
    ax.set_xticks(range(len(backbones)), [BACKBONE_LABEL[b] for b in backbones])
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
        marker, line = _STYLE[s["backbone"]]
        ax.plot(range(len(names)), ys, marker=marker, color=colors[s["variant"]], linestyle=line,
                label=f"{BACKBONE_LABEL[s['backbone']]}: {VARIANT_LABEL[s['variant']]}")
    ax.set_xticks(range(len(names)), [f"{n}\n({summary[0]['by_partitions'][n]['samples']} test samples)"
                                      for n in names], fontsize=8)
    ax.set_xlabel("partitions sealed before the sample (LIBER memory slots filled, capped at M)")
    ax.set_ylabel("test AUC (mean over seeds)")
    ax.set_title("Test AUC by the user's number of partitions")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(out / "evaluation_by_partitions.png", dpi=110)
    plt.close(fig)

    (out / "evaluation.md").write_text(_markdown(header, summary) + _interval_markdown(intervals, grid))
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


def _interval_markdown(intervals: dict[str, Any], grid: GridConfig) -> str:
    if not intervals:
        return ""
    lines = ["", "## Is the difference more than noise?", "",
             f"Differences of the means over seeds, with paired bootstrap 95 % intervals over test users "
             f"({grid.bootstrap} resamples; every model scored on the same resampled users). A LIBER lift is "
             "claimed only where it is above the backbone alone *and* above both placebos (another user's "
             "vectors; random vectors) — otherwise an extra vector of any content would explain it.", "",
             "| backbone | comparison | ΔAUC [95 % CI] | ΔGAUC [95 % CI] | in words (AUC) |",
             "| --- | --- | --- | --- | --- |"]
    for backbone, pairs in intervals.items():
        for key, iv in pairs.items():
            a, b = key.split(" - ")
            words = verdict(iv["auc"])
            lines.append(f"| {backbone} | {VARIANT_LABEL[a]} − {VARIANT_LABEL[b]} | "
                         f"{iv['auc']['delta']:+.4f} [{iv['auc']['lo']:+.4f}, {iv['auc']['hi']:+.4f}] | "
                         f"{iv['gauc']['delta']:+.4f} [{iv['gauc']['lo']:+.4f}, {iv['gauc']['hi']:+.4f}] | {words} |")
    lines += ["", "Verdicts:", ""]
    for backbone, pairs in intervals.items():
        for v in LLM_VARIANTS:
            if f"{v} - none" in pairs:
                lines.append(f"- {backbone}, {VARIANT_LABEL[v]}: {lift_verdict(pairs, v)}.")
    return "\n".join(lines) + "\n"
