"""Runs as the ledger sees them: live, finished, failed or stale, per-worker counts, and settings
fixed on first use (the partition rule).

A run that was SIGKILLed (or lost its host) stays ``running`` in ``runs`` forever; its heartbeat
(``run_heartbeats``, stamped every lease/3 while it works) tells it apart: older than its lease
means nobody is running it any more — *stale*.
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import select

from liber_features.ledger.store import Ledger, now_us
from liber_features.ledger.store import run_heartbeats as hb_t
from liber_features.ledger.store import runs as runs_t
from liber_features.ledger.store import settings as settings_t

__all__ = ["run_report", "fix_setting", "DEFAULT_LEASE_S"]

# Runs recorded before heartbeats existed (old ledgers) are judged against this lease.
DEFAULT_LEASE_S = 300.0


def _state(status: str, heartbeat_us: int | None, lease_us: int | None, started_us: int,
           now: int) -> str:
    if status == "ok":
        return "finished"
    if status != "running":
        return "failed"
    last = heartbeat_us if heartbeat_us is not None else started_us
    return "live" if now - last <= (lease_us or int(DEFAULT_LEASE_S * 1e6)) else "stale"


def run_report(ledger: Ledger, *, recent: int = 20) -> dict[str, Any]:
    """Counts of runs by state, and one line per worker run (every live or stale run, plus the
    ``recent`` newest others) with its partitions, LLM calls and calls that never committed."""
    now = now_us()
    q = (select(runs_t.c.id, runs_t.c.kind, runs_t.c.status, runs_t.c.started_us, runs_t.c.summary, hb_t)
         .select_from(runs_t.outerjoin(hb_t, hb_t.c.run_id == runs_t.c.id))
         .order_by(runs_t.c.id.desc()))
    with ledger.engine.connect() as conn:
        rows = conn.execute(q).all()
    counts = {"live": 0, "finished": 0, "failed": 0, "stale": 0}
    workers, uncommitted = [], 0
    for r in rows:
        state = _state(r.status, r.heartbeat_us, r.lease_us, r.started_us, now)
        counts[state] += 1
        lost = (r.llm_calls or 0) - (r.llm_calls_committed or 0)
        uncommitted += lost
        if state in ("live", "stale") or len(workers) < recent:
            # A run from before heartbeats: its final summary has the counts, if it finished.
            old = json.loads(r.summary or "{}") if r.worker is None else {}
            workers.append({
                "run_id": r.id, "kind": r.kind, "state": state, "worker": r.worker or "-",
                "heartbeat_age_s": round((now - (r.heartbeat_us or r.started_us)) / 1e6, 1),
                "partitions_done": r.partitions_done or old.get("partitions_done", 0),
                "llm_calls": r.llm_calls or old.get("llm_calls", 0),
                "llm_calls_uncommitted": lost, "rejected_commits": r.rejected_commits or 0,
            })
    return {"runs": counts, "llm_calls_uncommitted": uncommitted, "workers": workers}


def fix_setting(ledger: Ledger, key: str, value: Any, *, fallback: Any = None) -> Any:
    """Store ``value`` under ``key`` unless a value is already stored; return the stored one.

    ``fallback`` (when not None) is stored instead on a ledger that predates the settings table
    but already has history, e.g. the rule of its first ingest run. Insert-or-nothing: of two
    first runs at once, one value wins and the other run sees it.
    """
    with ledger.begin() as conn:
        ledger.insert_ignore(conn, settings_t, [{
            "key": key, "value": json.dumps(fallback if fallback is not None else value,
                                            sort_keys=True), "run_id": None, "set_us": now_us()}],
            ["key"])
        stored = conn.execute(select(settings_t.c.value).where(settings_t.c.key == key)).scalar_one()
    return json.loads(stored)
