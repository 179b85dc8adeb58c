"""What ``GET /users/{user_id}/interests`` answers: a user's online memory and, with a ledger, every
sealed partition with its seal time and texts.

Its own module because it is the one endpoint that reads Feast's generic path and the ledger (SQL)
rather than the scorer's fast path: a person reads it to see why a user is scored as they are. An
unreachable online store raises ``OnlineStoreError`` naming the store (the service answers 503).
"""

from __future__ import annotations

from datetime import UTC
from typing import Any

from pydantic import BaseModel

from liber_features.errors import OnlineStoreError

__all__ = ["Interests", "Partition", "user_interests"]

class Partition(BaseModel):
    seq: int
    sealed_at: str
    n_events: int
    summary: str | None
    shift: str | None


class Interests(BaseModel):
    user_id: str
    partition_count: int
    latest_summary: str | None
    latest_shift: str | None
    encoder_version: str | None
    partitions: list[Partition]


def user_interests(scorer, user_id: str, ledger) -> Interests:
    from liber_features.features.repo import LONG_TERM_VIEW

    store = getattr(scorer.fetcher, "store", None)
    online: dict[str, Any] = {}
    if store is not None:
        try:
            row = store.get_online_features(
                features=[f"{LONG_TERM_VIEW}:{f}" for f in ("partition_count", "latest_summary", "latest_shift",
                                                             "encoder_version")],
                entity_rows=[{"user_id": user_id}]).to_dict()
        except Exception as exc:  # Feast surfaces store failures as many unrelated types
            raise OnlineStoreError(f"{scorer.fetcher.where}: {type(exc).__name__}: {exc}") from exc
        online = {k: v[0] for k, v in row.items()}
    parts: list[Partition] = []
    if ledger is not None:
        parts = ledger_partitions(ledger, user_id, scorer.card)
    return Interests(user_id=user_id, partition_count=int(online.get("partition_count") or len(parts)),
                     latest_summary=online.get("latest_summary"), latest_shift=online.get("latest_shift"),
                     encoder_version=online.get("encoder_version"), partitions=parts)


def ledger_partitions(ledger, user_id: str, card) -> list[Partition]:
    from datetime import datetime

    from sqlalchemy import and_, select

    from liber_features.ledger.store import interests, partitions

    j = partitions.outerjoin(interests, and_(
        interests.c.partition_id == partitions.c.id, interests.c.prompt_version == card.prompt_version,
        interests.c.llm_id == card.llm_id, interests.c.status == "done"))
    with ledger.engine.connect() as conn:
        rows = conn.execute(select(partitions.c.seq, partitions.c.sealed_at_us, partitions.c.n_events,
                                   interests.c.summary, interests.c.shift).select_from(j)
                            .where(partitions.c.user_id == user_id).order_by(partitions.c.seq)).all()

    def iso(us: int) -> str:
        return datetime.fromtimestamp(us / 1e6, UTC).isoformat()

    return [Partition(seq=r.seq, sealed_at=iso(r.sealed_at_us), n_events=r.n_events, summary=r.summary,
                      shift=r.shift) for r in rows]
