"""The report's figures (matplotlib, Agg, PNG): one small function per figure.

matplotlib is imported inside :func:`_plt` only, so ``import liber_features`` stays light and a
missing matplotlib is a ``MissingDependency`` naming the extra, not an ImportError at import.
Each function returns the file name it wrote, or ``None`` when its data is absent (the page then
shows the section's note instead of an image).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from liber_features.errors import MissingDependency
from liber_features.report.data import ReportData

__all__ = ["draw_all", "age_unit"]

_SMALL = (6.4, 3.4)
_DPI = 100


def _plt():
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only: no display, no GUI toolkit
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise MissingDependency("matplotlib", "report") from exc
    return plt


def _integer_axes(ax, *, x: bool = False, y: bool = True) -> None:
    """Counts get whole-number ticks (a tiny ledger otherwise shows 0.5 partitions)."""
    from matplotlib.ticker import MaxNLocator

    if x:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if y:
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))


def _save(fig, out: Path, name: str) -> str:
    fig.tight_layout()
    fig.savefig(out / name, dpi=_DPI)
    _plt().close(fig)
    return name


def age_unit(seconds: np.ndarray) -> tuple[float, str]:
    """A readable unit for ages: the largest of s / min / h / days that keeps the median ≥ 1."""
    med = float(np.median(seconds)) if len(seconds) else 0.0
    for div, unit in ((86400.0, "days"), (3600.0, "hours"), (60.0, "minutes")):
        if med >= div:
            return div, unit
    return 1.0, "seconds"


def partitions_hist(rd: ReportData, out: Path) -> str | None:
    ppu = rd.partitions_per_user
    if not len(ppu):
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=_SMALL)
    top = int(ppu.max())
    step = max(1, -(-(top + 1) // 60))  # whole partitions per bin, at most ~60 bins
    bins = np.arange(0, top + step + 1, step) - 0.5
    ax.hist(ppu, bins=bins, color="#4c72b0", edgecolor="white")
    ax.set_xlabel("partitions sealed per user" + (f" (bins of {step})" if step > 1 else ""))
    ax.set_ylabel("users")
    _integer_axes(ax, x=True)
    ax.set_title(f"{len(ppu)} users; median {np.median(ppu):g}, max {top} partitions per user")
    return _save(fig, out, "partitions_per_user.png")


def seal_times(rd: ReportData, out: Path) -> str | None:
    ts = rd.seal_times_us
    if not len(ts):
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=_SMALL)
    when = ts.astype("datetime64[us]")
    ax.step(when, np.arange(1, len(ts) + 1), where="post", color="#4c72b0")
    ax.set_xlabel("seal time (event time of the sealing behaviour, UTC)")
    ax.set_ylabel("partitions sealed (cumulative)")
    _integer_axes(ax)
    ax.set_title("partitions sealed over calendar time")
    fig.autofmt_xdate()
    return _save(fig, out, "seal_times.png")


def llm_calls(rd: ReportData, out: Path) -> str | None:
    c = rd.cost
    if not c["naive_calls"]:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 2.6))
    labels = ["naive: re-summarise\nthe history per event", "LIBER: summary +\nshift per partition"]
    values = [c["naive_calls"], c["summaries"] + c["shifts"]]
    bars = ax.barh(labels, values, color=["#c44e52", "#55a868"])
    ax.set_xscale("log")
    ax.set_xlim(1, max(values) * 20)
    ax.bar_label(bars, labels=[f"{v:,}" for v in values], padding=4)
    ax.set_xlabel("LLM calls (log scale)")
    return _save(fig, out, "llm_calls.png")


def coverage(rd: ReportData, out: Path) -> str | None:
    cov = rd.coverage
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 2.8))
    names = ["sealed", "encoded", "online"]
    values = [cov["sealed"] or 0, cov["encoded"] or 0, cov["online"] or 0]
    bars = ax.bar(names, values, color=["#4c72b0", "#55a868", "#8172b2"])
    ax.bar_label(bars, labels=[f"{v:,}" if n != "online" or cov["online"] is not None else "n/a"
                               for n, v in zip(names, values)], padding=2)
    ax.set_ylabel("partitions")
    _integer_axes(ax)
    ax.set_ylim(0, max(max(values), 1) * 1.2)
    ax.set_title("partitions sealed → encoded → online")
    return _save(fig, out, "coverage.png")


def age_cdf(rd: ReportData, out: Path) -> str | None:
    curves = [("newest encoded vector (ledger)", rd.encoded_age_s)]
    if rd.online_age_s is not None:
        curves.append(("newest online vector (Feast)", rd.online_age_s))
    curves = [(name, a) for name, a in curves if len(a)]
    if not curves:
        return None
    div, unit = age_unit(np.concatenate([a for _, a in curves]))
    plt = _plt()
    fig, ax = plt.subplots(figsize=_SMALL)
    for (name, a), style in zip(curves, ("-", "--")):
        x = np.sort(a) / div
        ax.step(x, np.arange(1, len(x) + 1) / len(x), where="post", linestyle=style,
                label=f"{name}, {len(x)} users")
    ax.set_xlabel(f"age at report time ({unit} since the text encoder wrote it)")
    ax.set_ylabel("fraction of users (CDF)")
    ax.set_ylim(0, 1.02)
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, out, "vector_age_cdf.png")


def evaluation_bars(rd: ReportData, out: Path) -> str | None:
    rows = (rd.evaluation or {}).get("summary") or []
    if not rows:
        return None
    plt = _plt()
    backbones = sorted({r["backbone"] for r in rows})
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    fig, ax = plt.subplots(figsize=_SMALL)
    width = 0.8 / len(variants)
    by = {(r["backbone"], r["variant"]): r for r in rows}
    lo = min(r["auc_mean"] - r.get("auc_std", 0) for r in rows)
    for j, v in enumerate(variants):
        xs = [i + (j - (len(variants) - 1) / 2) * width for i, b in enumerate(backbones) if (b, v) in by]
        rs = [by[(b, v)] for b in backbones if (b, v) in by]
        ax.bar(xs, [r["auc_mean"] for r in rs], width, yerr=[r.get("auc_std", 0) for r in rs],
               capsize=3, label=v)
    ax.set_xticks(range(len(backbones)), backbones)
    ax.set_ylim(max(lo - 0.02, 0), None)
    ax.set_ylabel("test AUC (mean ± std over seeds)")
    ax.set_xlabel("backbone")
    ax.legend(title="LIBER variant", fontsize=8, ncols=2)
    return _save(fig, out, "evaluation_auc.png")


def auc_by_partitions(rd: ReportData, out: Path) -> str | None:
    rows = [r for r in (rd.evaluation or {}).get("summary") or [] if r.get("by_partitions")]
    if not rows:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.6, 3.6))
    buckets = list(rows[0]["by_partitions"])
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    backbones = list(dict.fromkeys(r["backbone"] for r in rows))
    for r in rows:  # colour = variant, line style = backbone: the LIBER effect reads per backbone
        ax.plot(range(len(buckets)), [r["by_partitions"].get(b, {}).get("auc", np.nan) for b in buckets],
                marker="o", color=f"C{variants.index(r['variant'])}",
                linestyle=("-", "--", ":", "-.")[backbones.index(r["backbone"]) % 4],
                label=f"{r['backbone']} / {r['variant']}")
    n = rows[0]["by_partitions"]
    ax.set_xticks(range(len(buckets)), [f"{b}\n({n[b].get('samples', '?')} samples)" for b in buckets])
    ax.set_xlabel("partitions sealed before the test sample")
    ax.set_ylabel("test AUC (mean over seeds)")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), title="backbone / variant",
              title_fontsize=8)
    return _save(fig, out, "auc_by_partitions.png")


def serving_latency(rd: ReportData, out: Path) -> str | None:
    rows = (rd.bench_online or {}).get("rows") or []
    if not rows:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8.0, 0.45 * len(rows) + 1.4))
    y = np.arange(len(rows))
    ax.barh(y - 0.2, [r["p50_ms"] for r in rows], 0.4, label="p50", color="#4c72b0")
    ax.barh(y + 0.2, [r["p99_ms"] for r in rows], 0.4, label="p99", color="#dd8452")
    ax.set_yticks(y, [str(r["variant"])[:60] for r in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("latency per call (ms, log scale)")
    ax.legend(loc="best")
    return _save(fig, out, "serving_latency.png")


FIGURES = (partitions_hist, seal_times, llm_calls, coverage, age_cdf, evaluation_bars,
           auc_by_partitions, serving_latency)


def draw_all(rd: ReportData, out: Path) -> dict[str, str]:
    """Every figure whose data exists: {figure function name: file name}."""
    return {f.__name__: name for f in FIGURES if (name := f(rd, out)) is not None}
