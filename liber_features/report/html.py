"""``index.html`` of ``liber report``: one static page, no JavaScript, no network.

The page is written by the Jinja2 templates in ``templates/`` (one per section, shared macros in
``macros.html.j2``), rendered with autoescape on. Summaries and shifts are LLM output and titles
are catalog data, so either may hold ``<script>``: Jinja escapes every value that reaches the page
(the page shows such text, never runs it), and nothing here or in the templates marks a value
safe. A template cannot forget to escape, as a hand-called ``esc()`` could.

``StrictUndefined`` makes a misspelt name in a template an error instead of a silently blank
cell, and ``finalize`` prints a missing value as nothing, never as the word ``None``. A missing
*time* is stated: the ``when`` filter writes :data:`NO_TIME`. This module holds only what needs a
decision (number formats, the LIBER-vs-naive ratio, whether the model card matches the online
store); each section opens with one caption that says what to look for.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from liber_features.report.data import ReportData

__all__ = ["NO_TIME", "card_metrics", "fmt", "intake_rows", "render", "when"]

NO_TIME = "—"  # what the page shows where a time was not recorded (it once read "None")


def fmt(v: Any) -> str:
    """A table cell: thousands separators, 3 decimals below 100, 1 above; ``n/a`` for no value."""
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:,.3f}" if abs(v) < 100 else f"{v:,.1f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def when(v: int | str | None) -> str:
    """A time: epoch microseconds as ``YYYY-MM-DD HH:MM`` (UTC), a string as written, else NO_TIME."""
    if v is None or v == "":
        return NO_TIME
    if isinstance(v, str):  # ISO text from the model card, evaluate's header or bench_online.json
        return v
    return datetime.fromtimestamp(v / 1e6, tz=UTC).strftime("%Y-%m-%d %H:%M")


def liber_vs_naive(cost: dict[str, Any]) -> str:
    """How many times fewer LLM calls LIBER made than re-summarising the history per event."""
    calls = cost["summaries"] + cost["shifts"]
    return f"{cost['naive_calls'] / calls:,.1f}× fewer" if calls else "n/a"


def card_against_online(rd: ReportData) -> tuple[str, str]:
    """(encoder versions online with their users, whether they are exactly the card's version)."""
    online = ", ".join(f"{v} ({n} users)" for v, n in rd.online_versions.items()) or \
        "n/a (online store not read)"
    if not rd.online_versions:
        return online, "n/a"
    same = set(rd.online_versions) == {rd.card.encoder_version}
    return online, "yes" if same else "NO: re-export or re-materialize"


def card_metrics(card: Any) -> list[tuple[str, Any, Any, Any, Any]]:
    """(split, AUC, GAUC, LogLoss, samples) of each split the model card scored, as ``liber train``
    wrote them (``metrics.validation`` / ``metrics.test``); a split the card lacks is not shown."""
    metrics = card.metrics if card is not None else {}
    return [(split, m.get("auc"), m.get("gauc"), m.get("logloss"), m.get("samples"))
            for split in ("validation", "test") if isinstance(m := metrics.get(split), dict)]


def intake_rows(rd: ReportData) -> list[tuple[Any, ...]]:
    """Section 1's per-run table: each ingest / stream run and the duplicates it skipped."""
    return [(r["run_id"], r["kind"], r["status"], when(r["started_us"]), r["source"], r["read"],
             r["accepted"], r["duplicates"], r["quarantined"]) for r in rd.intake_runs]


_ENV = Environment(
    loader=PackageLoader("liber_features.report", "templates"),
    autoescape=select_autoescape(enabled_extensions=("html.j2",), default=True),
    undefined=StrictUndefined,
    finalize=lambda v: "" if v is None else v,
    trim_blocks=True,
    lstrip_blocks=True,
    keep_trailing_newline=True,
)
_ENV.filters.update(fmt=fmt, when=when)


def render(rd: ReportData, images: dict[str, str]) -> str:
    """The page; ``images`` maps figure names to the PNG files drawn beside it (plots.draw_all)."""
    online, match = card_against_online(rd) if rd.card is not None else ("", "")
    return _ENV.get_template("page.html.j2").render(
        rd=rd, images=images, ratio=liber_vs_naive(rd.cost), card_online=online, card_match=match,
        card_metrics=card_metrics(rd.card), intake_rows=intake_rows(rd),
        evaluation=rd.evaluation or {}, bench=rd.bench_online or {})
