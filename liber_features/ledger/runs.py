"""Runs as the ledger sees them: live, finished, failed or stale, per-worker counts, and settings
fixed on first use (the partition rule); where each broker stream was committed up to.

A run that was SIGKILLed (or lost its host) stays ``running`` in ``runs`` forever; its heartbeat
(``runs.heartbeat_us``, stamped every lease/3 while it works) tells it apart: older than its lease
means nobody is running it any more — *stale*. Every run has a heartbeat and a lease: runs from
before heartbeats got theirs from migration ``0002``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select

from liber_features.ledger.store import Ledger, now_us
from liber_features.ledger.store import runs as runs_t
from liber_features.ledger.store import settings as settings_t
from liber_features.ledger.store import stream_online as online_t
from liber_features.ledger.store import stream_positions as pos_t

__all__ = ["encode_domains", "run_is_live", "run_report", "fix_setting", "stream_report"]


def _state(status: str, heartbeat_us: int, lease_us: int, now: int) -> str:
    if status == "ok":
        return "finished"
    if status != "running":
        return "failed"
    return "live" if now - heartbeat_us <= lease_us else "stale"


def run_is_live(status: str, heartbeat_us: int, lease_us: int, now: int) -> bool:
    """Running, with a heartbeat younger than its lease: someone is working on it now."""
    return _state(status, heartbeat_us, lease_us, now) == "live"


def run_report(ledger: Ledger, *, recent: int = 20) -> dict[str, Any]:
    """Counts of runs by state, and one line per worker run (every live or stale run, plus the
    ``recent`` newest others) with its partitions, LLM calls and calls that never committed."""
    now = now_us()
    with ledger.engine.connect() as conn:
        rows = conn.execute(select(runs_t).order_by(runs_t.c.id.desc())).all()
    counts = {"live": 0, "finished": 0, "failed": 0, "stale": 0}
    workers, uncommitted = [], 0
    for r in rows:
        state = _state(r.status, r.heartbeat_us, r.lease_us, now)
        counts[state] += 1
        lost = r.llm_calls - r.llm_calls_committed
        uncommitted += lost
        if state in ("live", "stale") or len(workers) < recent:
            workers.append({
                "run_id": r.id, "kind": r.kind, "state": state, "worker": r.worker or "-",
                "heartbeat_age_s": round((now - r.heartbeat_us) / 1e6, 1),
                "partitions_done": r.partitions_done, "llm_calls": r.llm_calls,
                "llm_calls_uncommitted": lost, "rejected_commits": r.rejected_commits,
            })
    return {"runs": counts, "llm_calls_uncommitted": uncommitted, "workers": workers}


def encode_domains(ledger: Ledger, known: Mapping[str, str] | None = None) -> list[str]:
    """The prompt domains the finished encode runs used, newest first, each once: a preset's name
    or ``name@fingerprint`` of a template file (``Domain.label``). A run from before runs recorded
    their domain is named by ``known`` (prompt version → preset, ``uil.prompts.preset_prompt_versions``:
    this layer cannot compute it) when its prompt version is there, else ``unrecorded``."""
    known = known or {}
    with ledger.engine.connect() as conn:
        rows = conn.execute(select(runs_t.c.params).where(runs_t.c.kind == "encode", runs_t.c.status == "ok")
                            .order_by(runs_t.c.id.desc())).scalars().all()
    params = [json.loads(p or "{}") for p in rows]
    return list(dict.fromkeys(p.get("domain") or known.get(p.get("prompt_version")) or "unrecorded"
                              for p in params))


def fix_setting(ledger: Ledger, key: str, value: Any) -> Any:
    """Store ``value`` under ``key`` unless a value is already stored; return the stored one.

    Insert-or-nothing: of two first runs at once, one value wins and the other run sees it.
    """
    with ledger.begin() as conn:
        ledger.insert_ignore(conn, settings_t, [{
            "key": key, "value": json.dumps(value, sort_keys=True), "run_id": None,
            "set_us": now_us()}], ["key"])
        stored = conn.execute(select(settings_t.c.value).where(settings_t.c.key == key)).scalar_one()
    return json.loads(stored)


def stream_report(ledger: Ledger) -> list[dict[str, Any]]:
    """One line per broker source ``liber stream`` consumed (``stream_positions``): its newest
    committed position (per Kafka partition too), events and quarantined messages committed, the
    newest event time, and how long ago it last committed (a stopped or stuck consumer shows here);
    ``online``: per consumer run that writes caches online and is live or has changes unwritten
    (``stream_online``), the age of the oldest change committed and not yet online (None: none
    pending), the users waiting and how long ago its last write left nothing pending."""
    now = now_us()
    with ledger.engine.connect() as conn:
        rows = conn.execute(select(pos_t).order_by(pos_t.c.source, pos_t.c.shard)).all()
        marks = conn.execute(select(online_t, runs_t.c.status, runs_t.c.heartbeat_us, runs_t.c.lease_us)
                             .join(runs_t, runs_t.c.id == online_t.c.run_id, isouter=True)
                             .order_by(online_t.c.run_id)).all()
    out: dict[str, dict[str, Any]] = {}
    for r in rows:
        if r.shard == "":
            out[r.source] = {
                "source": r.source, "position": r.position or None, "events": r.events_total,
                "quarantined": r.quarantined_total,
                "newest_event_at": None if r.stream_time_us is None else
                datetime.fromtimestamp(r.stream_time_us / 1e6, UTC).isoformat(),
                "last_commit_age_s": round((now - r.updated_us) / 1e6, 1), "partitions": {}, "online": []}
        elif r.source in out:
            out[r.source]["partitions"][r.shard] = r.position
    for m in marks:
        live = m.status is not None and run_is_live(m.status, m.heartbeat_us, m.lease_us, now)
        if m.source in out and (live or m.pending_since_us is not None):  # a finished, written run: done
            out[m.source]["online"].append({
                "run_id": m.run_id, "state": "live" if live else "gone",
                "oldest_unflushed_age_s": _age_s(m.pending_since_us, now), "pending_users": m.pending_users,
                "last_write_age_s": _age_s(m.written_us, now)})
    return list(out.values())


def _age_s(us: int | None, now: int) -> float | None:
    return None if us is None else round((now - us) / 1e6, 3)
