"""The encode backlog: sealed partitions that still lack an output for one (prompt version, LLM id).

``liber status`` shows it for the version being encoded now: the newest encode run that is live
or finished well (a run that failed at once, a typo'd ``--llm``, must not turn every partition
into backlog). ``liber encode --follow`` polls only :func:`sealed_count`: partitions are never
deleted, so a new one changes the count, and one count per poll costs little however large the
backlog (a partition committed late with a lower id, PostgreSQL sequences, still changes it).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from sqlalchemy import and_, func, select

from liber_features.ledger.store import Ledger
from liber_features.ledger.store import interests as int_t
from liber_features.ledger.store import partitions as parts_t
from liber_features.ledger.store import runs as runs_t

__all__ = ["Backlog", "encode_backlog", "sealed_count", "unencoded"]


def sealed_count(ledger: Ledger, users: list[str] | None = None) -> int:
    """Sealed partitions in scope (all users, or ``users``)."""
    q = select(func.count()).select_from(parts_t)
    if users:
        q = q.where(parts_t.c.user_id.in_(users))
    with ledger.engine.connect() as conn:
        return int(conn.execute(q).scalar() or 0)


def unencoded(ledger: Ledger, pv: str, llm_id: str, users: list[str] | None = None) -> dict[int, tuple[str, int]]:
    """partition id → (user, seq) of every sealed partition in scope without a ``done`` output for
    (``pv``, ``llm_id``); a ``failed`` one is still owed, so it counts."""
    done = and_(int_t.c.partition_id == parts_t.c.id, int_t.c.prompt_version == pv, int_t.c.llm_id == llm_id,
                int_t.c.status == "done")
    q = (select(parts_t.c.id, parts_t.c.user_id, parts_t.c.seq)
         .select_from(parts_t.outerjoin(int_t, done)).where(int_t.c.id.is_(None)))
    if users:
        q = q.where(parts_t.c.user_id.in_(users))
    with ledger.engine.connect() as conn:
        return {r.id: (r.user_id, r.seq) for r in conn.execute(q)}


@dataclass(frozen=True)
class Backlog:
    """What ``liber status`` prints: ``ready`` of the ``partitions`` owed can be encoded now (a
    partition 0, or its predecessor done: the cascade needs that summary); ``None`` versions when
    nothing was ever encoded (then every partition is owed)."""

    partitions: int
    ready: int
    prompt_version: str | None
    llm_id: str | None

    def as_dict(self) -> dict[str, int | str | None]:
        return asdict(self)


def _current_version(ledger: Ledger) -> tuple[str, str] | None:
    """(prompt version, LLM id) of the newest encode run that is running or ok, else of the newest."""
    with ledger.engine.connect() as conn:
        rows = conn.execute(select(runs_t.c.status, runs_t.c.params).where(runs_t.c.kind == "encode")
                            .order_by(runs_t.c.id.desc())).all()
    for wanted in (("running", "ok"), ("running", "ok", "failed")):
        for status, params in rows:
            p = json.loads(params or "{}")
            if status in wanted and p.get("prompt_version") and p.get("llm_id"):
                return p["prompt_version"], p["llm_id"]
    return None


def encode_backlog(ledger: Ledger) -> Backlog:
    """The backlog of the version being encoded now (see the module docstring)."""
    version = _current_version(ledger)
    if version is None:
        with ledger.engine.connect() as conn:
            seqs = list(conn.execute(select(parts_t.c.seq)).scalars())
        return Backlog(len(seqs), sum(1 for q in seqs if q == 0), None, None)
    owed = set(unencoded(ledger, *version).values())
    ready = sum(1 for user, seq in owed if seq == 0 or (user, seq - 1) not in owed)
    return Backlog(len(owed), ready, *version)
