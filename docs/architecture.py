"""Draw docs/architecture.png, the README's picture of the data flow (matplotlib only).

Run from the repository root: ``python docs/architecture.py``. The boxes and arrows follow
the data flow of docs/architecture.md; edit the lists below, not the picture.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch  # noqa: E402

W, H = 2.0, 1.0  # box size in axis units
# name: (x, y, title, detail, colour)
BOXES = {
    "events": (0.0, 2.2, "events + catalog",
               "user_id, item_id, ts, rating\nMovieLens or any CSV / Parquet", "#e8eef7"),
    "ingest": (2.75, 2.2, "liber ingest (UBSP)",
               "validate, dedupe, quarantine\nseal a partition every K events", "#e8eef7"),
    "ledger": (5.5, 2.2, "SQL ledger",
               "SQLite or PostgreSQL: events,\npartitions, caches, interests, runs", "#f3ece0"),
    "encode": (8.25, 2.2, "liber encode (UIL)",
               "LLM: summary → shift, once per\npartition; text encoder → vectors", "#eaf4e4"),
    "parquet": (8.25, 0.0, "Parquet tables",
                "long-term memory (last M vectors)\n+ short-term cache history", "#f3ece0"),
    "feast": (5.5, 0.0, "Feast",
              "offline: DuckDB point-in-time joins\nonline: SQLite, or Redis in production", "#efe6f5"),
    "train": (2.75, 0.0, "liber train (UIF)", "fusion + DIN / DCNv2 on the\nleak-free training set", "#eaf4e4"),
    "serve": (0.0, 0.0, "ONNX → scorer", "liber export, liber score,\nliber serve: one read per request", "#fbe9e7"),
}
# (from, to, label, from side, to side)
ARROWS = [
    ("events", "ingest", "", "r", "l"),
    ("ingest", "ledger", "", "r", "l"),
    ("ledger", "encode", "sealed\npartitions", "r", "l"),
    ("encode", "parquet", "texts + vectors", "b", "t"),
    ("parquet", "feast", "materi-\nalize", "l", "r"),
    ("feast", "train", "historical\nfeatures", "l", "r"),
    ("train", "serve", "model.onnx\n+ card", "l", "r"),
]


def anchor(name: str, side: str) -> tuple[float, float]:
    x, y = BOXES[name][:2]
    return {"l": (x, y + H / 2), "r": (x + W, y + H / 2), "t": (x + W / 2, y + H), "b": (x + W / 2, y)}[side]


OUT = Path(__file__).with_name("architecture.png")


def main(out: Path = OUT) -> Path:
    fig, ax = plt.subplots(figsize=(11.0, 4.1))
    ax.set_xlim(-0.1, 10.35)
    ax.set_ylim(-0.85, 3.55)
    ax.axis("off")
    for x, y, title, detail, colour in BOXES.values():
        ax.add_patch(FancyBboxPatch((x, y), W, H, boxstyle="round,pad=0.02,rounding_size=0.08",
                                    facecolor=colour, edgecolor="#555", linewidth=1))
        ax.text(x + W / 2, y + H - 0.2, title, ha="center", va="center", fontsize=10, weight="bold")
        ax.text(x + W / 2, y + 0.36, detail, ha="center", va="center", fontsize=7.5, linespacing=1.3)
    for a, b, label, sa, sb in ARROWS:
        (x0, y0), (x1, y1) = anchor(a, sa), anchor(b, sb)
        ax.add_patch(FancyArrowPatch((x0, y0), (x1, y1), arrowstyle="-|>", mutation_scale=12, color="#333"))
        if label:
            ax.text((x0 + x1) / 2 + (0.08 if x0 == x1 else 0), (y0 + y1) / 2 + (0 if x0 == x1 else 0.1),
                    label, ha="left" if x0 == x1 else "center", va="center" if x0 == x1 else "bottom",
                    fontsize=7, style="italic", linespacing=1.1)
    # The two online paths that skip the batch route: cache pushes at ingest, reads at serving time.
    (x0, y0), (x1, y1) = anchor("ingest", "b"), anchor("feast", "t")
    ax.add_patch(FancyArrowPatch((x0 + 0.5, y0), (x1 - 0.5, y1), arrowstyle="-|>", mutation_scale=12,
                                 color="#8a5fb0", linestyle="--", connectionstyle="arc3,rad=0.15"))
    ax.text(4.3, 1.5, "push short-term\ncaches online", fontsize=7.5, color="#8a5fb0", ha="right")
    (x0, y0), (x1, y1) = anchor("feast", "b"), anchor("serve", "b")
    ax.add_patch(FancyArrowPatch((x0, y0), (x1, y1), arrowstyle="-|>", mutation_scale=12, color="#8a5fb0",
                                 linestyle="--", connectionstyle="arc3,rad=-0.18"))
    ax.text(3.8, -0.75, "online features by user_id (Redis HMGET fast path)", fontsize=7.5, color="#8a5fb0",
            ha="center")
    ax.text(10.25, 3.5, "liber report reads the ledger, Feast, the model card and bench/ results",
            fontsize=7.5, ha="right", va="top", color="#555")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    return out


if __name__ == "__main__":
    print(main())
