"""``index.html`` of ``liber report``: one static page, no JavaScript, no network.

Every value that reaches the page goes through :func:`esc` — summaries and shifts are LLM output
and titles are catalog data, so either may hold ``<script>``; the page must show such text, never
run it. Each section opens with one caption that says what to look for.
"""

from __future__ import annotations

import html
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from liber_features.report.gather import ReportData

__all__ = ["render", "esc"]

_CSS = """
body{font:15px/1.45 system-ui,sans-serif;max-width:1180px;margin:1.5em auto;padding:0 1em;color:#222}
h1{font-size:1.6em;margin-bottom:.1em} h2{border-bottom:2px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
p.caption{color:#444;font-style:italic;margin-top:0} p.meta{color:#666;font-size:.9em}
p.note{background:#fff4e5;border-left:4px solid #f0a030;padding:.4em .8em}
table{border-collapse:collapse;margin:.6em 0} td,th{border:1px solid #ddd;padding:.25em .6em;
vertical-align:top;text-align:left} th{background:#f5f5f5} td.num{text-align:right;font-variant-numeric:tabular-nums}
.figs{display:grid;grid-template-columns:1fr 1fr;gap:1em;align-items:start}
img{max-width:100%;height:auto;border:1px solid #eee} .figs img{width:100%}
table.timeline td.text{max-width:460px;font-size:.92em}
"""


def esc(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _fmt(v: Any) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:,.3f}" if abs(v) < 100 else f"{v:,.1f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def _date(us: int | None) -> str:
    if us is None:
        return "n/a"
    return datetime.fromtimestamp(us / 1e6, tz=UTC).strftime("%Y-%m-%d %H:%M")


def _kv(rows: Iterable[tuple[str, Any]]) -> str:
    body = "".join(f"<tr><th>{esc(k)}</th><td class=num>{esc(_fmt(v))}</td></tr>" for k, v in rows)
    return f"<table>{body}</table>"


def _table(head: list[str], rows: Iterable[list[Any]], num_from: int = 1) -> str:
    h = "".join(f"<th>{esc(x)}</th>" for x in head)
    body = "".join("<tr>" + "".join(
        f"<td{' class=num' if i >= num_from else ''}>{esc(_fmt(x))}</td>" for i, x in enumerate(r))
        + "</tr>" for r in rows)
    return f"<table><tr>{h}</tr>{body}</table>"


def _img(images: dict[str, str], key: str, alt: str) -> str:
    name = images.get(key)
    return f'<img src="{esc(name)}" alt="{esc(alt)}">' if name else ""


def _note(rd: ReportData, key: str) -> str:
    return f'<p class="note">{esc(rd.notes[key])}</p>' if key in rd.notes else ""


def _section(title: str, caption: str, *parts: str) -> str:
    return f'<section><h2>{esc(title)}</h2><p class="caption">{esc(caption)}</p>{"".join(parts)}</section>'


def _data(rd: ReportData, images: dict[str, str]) -> str:
    d = rd.data
    reasons = _table(["field", "reason", "rows"], [[f, r, n] for f, r, n in rd.top_reasons], num_from=2) \
        if rd.top_reasons else "<p>No row was quarantined.</p>"
    return _section(
        "1. Data and partitions",
        "Look for: quarantined rows and their reasons (bad input), users with no partition yet "
        "(their history is still in the short-term cache), and gaps in sealing over time.",
        _kv([("events accepted", d["events_accepted"]), ("duplicates skipped", d["duplicates"]),
             ("rows quarantined", d["quarantined"]), ("users", d["users"]),
             ("partitions sealed", d["partitions_sealed"]), ("events in short-term caches", d["events_in_caches"]),
             ("ingest runs", d["ingest_runs"])]),
        "<h3>Top quarantine reasons</h3>", reasons,
        '<div class="figs">', _img(images, "partitions_hist", "histogram of partitions per user"),
        _img(images, "seal_times", "partitions sealed over calendar time"), "</div>")


def _cost(rd: ReportData, images: dict[str, str]) -> str:
    c, cov = rd.cost, rd.coverage
    ratio = f"{c['naive_calls'] / (c['summaries'] + c['shifts']):,.1f}× fewer" \
        if c["summaries"] + c["shifts"] else "n/a"
    versions = _table(["encoder_version online", "users"], list(rd.online_versions.items())) \
        if rd.online_versions else ""
    return _section(
        "2. LLM cost, coverage and lag",
        "Look for: LLM calls far below the naive count, failed partitions that stay failed, "
        "partitions sealed but not yet encoded or not yet online, and a long tail of old vectors.",
        _kv([("summary calls (partitions encoded)", c["summaries"]),
             ("shift calls (partitions after the first)", c["shifts"]),
             ("LLM calls recorded by encode runs", c["llm_calls"]),
             ("failed tries", c["failed_tries"]), ("retried", c["retried"]),
             ("still failed", c["still_failed"]),
             ("naive calls (one re-summary of the whole history per event)", c["naive_calls"]),
             ("LIBER vs naive", ratio),
             ("prompt tokens", c["prompt_tokens"]), ("completion tokens", c["completion_tokens"]),
             ("LLM seconds (all encode runs)", c["seconds_llm"]),
             ("LLM seconds per partition", c["seconds_per_partition"]),
             ("encode runs (failed)", f"{c['encode_runs']} ({c['encode_runs_failed']})"),
             ("partitions sealed / encoded / online", f"{_fmt(cov['sealed'])} / {_fmt(cov['encoded'])} / "
                                                      f"{_fmt(cov['online'])}"),
             ("users with vectors online", cov["users_online"])]),
        _note(rd, "encode"), _note(rd, "online"), versions,
        '<div class="figs">', _img(images, "llm_calls", "LLM calls: LIBER against the naive count"),
        _img(images, "coverage", "partitions sealed, encoded, online"),
        _img(images, "age_cdf", "CDF of the age of each user's newest vector"), "</div>")


def _timelines(rd: ReportData) -> str:
    blocks = []
    for t in rd.timelines:
        shown = f"newest {len(t.rows)} of {t.partitions}" if len(t.rows) < t.partitions else f"all {t.partitions}"
        rows = "".join(
            f"<tr><td class=num>{esc(r['seq'])}</td><td>{esc(_date(r['sealed_at_us']))}</td>"
            f"<td class=num>{esc(r['n_events'])}</td>"
            f"<td class=text>{esc(r['summary'] if r['status'] == 'done' else r['status'] or 'not encoded yet')}</td>"
            f"<td class=text>{esc(r['shift'] if r['status'] == 'done' else '')}</td></tr>" for r in t.rows)
        blocks.append(f"<h3>user {esc(t.user_id)} — {esc(shown)} partitions</h3>"
                      "<table class=timeline><tr><th>partition</th><th>sealed at (UTC)</th><th>events</th>"
                      f"<th>interest summary</th><th>interest shift</th></tr>{rows}</table>")
    return _section(
        "3. Interests over time",
        "Look for: summaries that follow the user's taste from partition to partition and shifts "
        "that name what changed; generic or repeated texts mean the LLM adds little.",
        *blocks or ["<p>No user has a sealed partition.</p>"])


def _model(rd: ReportData, images: dict[str, str]) -> str:
    rows = (rd.evaluation or {}).get("summary") or []
    buckets = list(rows[0].get("by_partitions") or {}) if rows else []
    table = _table(["backbone", "variant", "test AUC", "± std", "GAUC", "LogLoss", "ΔAUC vs backbone %"]
                   + [f"AUC, {b} partitions" for b in buckets],
                   [[r["backbone"], r["variant"], r["auc_mean"], r.get("auc_std"), r.get("gauc_mean"),
                     r.get("logloss_mean"), r.get("auc_rel_change_pct")]
                    + [r["by_partitions"].get(b, {}).get("auc") for b in buckets] for r in rows],
                   num_from=2) if rows else ""
    head = (rd.evaluation or {}).get("header") or {}
    meta = f'<p class="meta">{esc(head.get("dataset", ""))}; split {esc(head.get("split", ""))}; ' \
           f'created {esc(head.get("created_at", ""))}</p>' if head else ""
    return _section(
        "4. Model",
        "Look for: LIBER variants above their backbone alone, and the gain growing with the number "
        "of partitions a user has (no partition = no LIBER signal).",
        _note(rd, "evaluation"), meta, table, '<div class="figs">',
        _img(images, "evaluation_bars", "test AUC per backbone and variant"),
        _img(images, "auc_by_partitions", "test AUC by partitions per user"), "</div>")


def _serving(rd: ReportData, images: dict[str, str]) -> str:
    b = rd.bench_online or {}
    meta = f'<p class="meta">bench_online.json: {esc(b.get("created_at", "?"))}, ' \
           f'{esc(b.get("requests", "?"))} requests per variant, model {esc(b.get("model", "?"))}</p>' if b else ""
    card = rd.card
    if card is not None:
        online = ", ".join(f"{v} ({n} users)" for v, n in rd.online_versions.items()) or \
            "n/a (online store not read)"
        match = "n/a" if not rd.online_versions else (
            "yes" if set(rd.online_versions) == {card.encoder_version} else "NO: re-export or re-materialize")
        card_html = _kv([("model", f"{card.backbone} + LIBER {card.liber}"),
                         ("feature service", card.feature_service),
                         ("encoder_version (card)", card.encoder_version),
                         ("encoder_version online", online), ("card matches online", match),
                         ("prompt version", card.prompt_version), ("LLM", card.llm_id),
                         ("text encoder", card.text_encoder_id),
                         ("M × D, L", f"{card.memory_slots} × {card.vector_dim}, {card.history_length}"),
                         ("created", card.created_at)])
    else:
        card_html = _note(rd, "model")
    return _section(
        "5. Serving",
        "Look for: p99 within the request budget, and the model card's encoder_version equal to "
        "what is online (a mismatch means the model reads vectors it was not trained on).",
        _note(rd, "bench"), meta, _img(images, "serving_latency", "online latency p50 / p99 per variant"),
        _table(["variant", "p50 ms", "p99 ms"], [[r.get("variant"), r.get("p50_ms"), r.get("p99_ms")]
                                                 for r in b.get("rows") or []]) if b.get("rows") else "",
        "<h3>Model card against the online store</h3>", card_html)


def render(rd: ReportData, images: dict[str, str]) -> str:
    v = rd.versions
    meta = (f"ledger {esc(rd.ledger_url)} · generated {esc(_date(rd.generated_us))} UTC"
            + (f" · prompt {esc(v[0])}, LLM {esc(v[1])}, text encoder {esc(v[2])}" if v else ""))
    body = "".join([_data(rd, images), _cost(rd, images), _timelines(rd), _model(rd, images),
                    _serving(rd, images)])
    return (f"<!DOCTYPE html><html lang=en><head><meta charset=utf-8><title>LIBER report</title>"
            f"<style>{_CSS}</style></head><body><h1>LIBER report</h1><p class=meta>{meta}</p>{body}"
            "</body></html>\n")
