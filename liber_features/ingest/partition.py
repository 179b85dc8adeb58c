"""UBSP — User Behaviour Streaming Partition.

Each user's new behaviours land in a *short-term cache*. When the partition condition fires the
cache is *sealed* into an immutable long-term memory partition ``P_j`` and the cache is cleared.

Conditions (``PartitionRule``):

* count rule (the paper's): the cache reaches ``k`` events; the seal time is the event time of
  the k-th event.
* optional time rule: an incoming event is more than ``max_span_s`` seconds after the cache's
  oldest event; the cache is sealed *before* that event joins it, and the seal time is the
  incoming event's time (the moment the rule became true).

Ordering. Inside one call the new events are taken in ``(ts, event_id)`` order and merged into
the (already ordered) cache, so feeding a time-ordered log in any number of consecutive batches
gives exactly the partitions of one pass (tests/test_partition.py proves it with hypothesis).

Late events. An event older than the user's last seal can never rewrite a sealed partition: it
is counted as *late* and kept in the cache, where it sorts first and is sealed with the next
partition. Seal times never go backwards: a seal is stamped at least at the previous seal time,
so point-in-time joins see partitions in ``seq`` order.

This module is pure (no I/O); ``ingest.py`` persists states and partitions in the ledger.
"""

from __future__ import annotations

import hashlib
import heapq
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["PartitionRule", "CachedEvent", "UserState", "SealedPartition", "Advance", "advance", "seal_quiet"]


class PartitionRule(BaseModel):
    """When a user's short-term cache is sealed into a long-term partition."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    k: int = Field(20, ge=1, description="seal when the cache holds this many events")
    max_span_s: float | None = Field(
        None, gt=0, description="also seal when an event arrives this long after the cache's oldest"
    )


@dataclass(frozen=True, order=True)
class CachedEvent:
    """One behaviour as the partitioner sees it; ordering is (ts_us, event_id)."""

    ts_us: int
    event_id: str
    item_id: str = field(compare=False)
    rating: float | None = field(compare=False, default=None)
    event_type: str | None = field(compare=False, default=None)  # view, purchase, …; None: untyped

    def to_row(self) -> list:
        # An untyped event keeps the four-field row of the ledgers written before event types.
        row = [self.event_id, self.item_id, self.ts_us, self.rating]
        return row if self.event_type is None else [*row, self.event_type]

    @classmethod
    def from_row(cls, row: list) -> CachedEvent:
        event_id, item_id, ts_us, rating, *typed = row
        return cls(ts_us=int(ts_us), event_id=event_id, item_id=item_id, rating=rating,
                   event_type=typed[0] if typed else None)


@dataclass(frozen=True)
class SealedPartition:
    """An immutable long-term memory partition ``P_seq`` of one user."""

    user_id: str
    seq: int
    events: tuple[CachedEvent, ...]
    sealed_at_us: int
    rule: Literal["count", "time"]

    @property
    def start_us(self) -> int:
        return self.events[0].ts_us

    @property
    def end_us(self) -> int:
        return self.events[-1].ts_us

    @property
    def content_hash(self) -> str:
        """Stable fingerprint of the partition's content (replay must reproduce it)."""
        h = hashlib.sha256(f"{self.user_id}\x1f{self.seq}".encode())
        for e in self.events:
            h.update(f"\x1e{e.event_id}\x1f{e.item_id}\x1f{e.ts_us}\x1f{e.rating}".encode())
            if e.event_type is not None:  # untyped partitions keep the hashes they always had
                h.update(f"\x1f{e.event_type}".encode())
        return h.hexdigest()[:32]


@dataclass
class UserState:
    """Everything the partitioner needs to continue a user's stream later."""

    user_id: str
    next_seq: int = 0
    last_seal_us: int | None = None
    cache: list[CachedEvent] = field(default_factory=list)
    late_total: int = 0


@dataclass
class Advance:
    """Outcome of feeding one batch of a user's events."""

    state: UserState
    sealed: list[SealedPartition]
    late: int


def advance(state: UserState, new_events: Iterable[CachedEvent], rule: PartitionRule) -> Advance:
    """Feed a batch of one user's new events; returns the new state and any sealed partitions.

    ``state`` is not modified. ``new_events`` must be new to the user (the ledger dedupes ids).
    """
    batch = sorted(new_events)
    last_seal = state.last_seal_us
    late = sum(1 for e in batch if last_seal is not None and e.ts_us < last_seal)
    # The cache never met the condition on its own, so re-walking it in merged order only
    # seals where the new events make the condition true.
    merged = heapq.merge(state.cache, batch)
    sealed: list[SealedPartition] = []
    cache: list[CachedEvent] = []
    seq = state.next_seq

    def seal(sealed_at_us: int, why: Literal["count", "time"]) -> None:
        nonlocal seq, last_seal
        stamp = sealed_at_us if last_seal is None else max(sealed_at_us, last_seal)
        sealed.append(SealedPartition(state.user_id, seq, tuple(cache), stamp, why))
        seq += 1
        last_seal = stamp
        cache.clear()

    for event in merged:
        if (
            rule.max_span_s is not None
            and cache
            and event.ts_us - cache[0].ts_us > rule.max_span_s * 1_000_000
        ):
            seal(event.ts_us, "time")
        cache.append(event)
        if len(cache) >= rule.k:
            seal(event.ts_us, "count")

    new_state = UserState(
        user_id=state.user_id,
        next_seq=seq,
        last_seal_us=last_seal,
        cache=list(cache),
        late_total=state.late_total + late,
    )
    return Advance(state=new_state, sealed=sealed, late=late)


def seal_quiet(state: UserState, now_us: int, rule: PartitionRule) -> Advance:
    """The time rule for a user who went quiet: seal the cache if its oldest event is more than
    ``max_span_s`` before ``now_us`` (the stream's clock, the newest event time it has seen).

    ``advance`` fires the time rule only when the user's next event arrives; a stream cannot wait
    for that. The seal is stamped ``now_us`` (when the stream knew the rule held), so its contents
    equal what the next event would have sealed, and its seal time is no later. ``state`` is not
    modified; nothing happens without a time rule or when the rule does not hold.
    """
    span = rule.max_span_s
    if span is None or not state.cache or now_us - state.cache[0].ts_us <= span * 1_000_000:
        return Advance(state=state, sealed=[], late=0)
    stamp = now_us if state.last_seal_us is None else max(now_us, state.last_seal_us)
    part = SealedPartition(state.user_id, state.next_seq, tuple(state.cache), stamp, "time")
    new_state = UserState(user_id=state.user_id, next_seq=state.next_seq + 1, last_seal_us=stamp,
                          cache=[], late_total=state.late_total)
    return Advance(state=new_state, sealed=[part], late=0)
