"""Which partitions one encode run may take next: ready, claimed, in flight, busy elsewhere, given up.

The cascade orders the work: a partition is *ready* when it has no output yet for this run's
(prompt version, LLM id) and its predecessor's summary exists — so one wave holds the next
partition of many users, and batches mix users. The scheduler owns every set that decides
this; the loop (``interest.encode_loop``) only asks it for a batch and tells it what came back.
"""

from __future__ import annotations

from liber_features.uil.claims import Lease
from liber_features.uil.types import Part, Settled

__all__ = ["Scheduler"]


class Scheduler:
    """One run's view of its partitions. ``prev`` is (user, seq) → summary of each done one."""

    def __init__(self, parts: list[Part], done: dict[int, str], *, batch_size: int,
                 limit: int | None) -> None:
        self.parts = parts
        self.by_id = {x.id: x for x in parts}
        self.batch_size = batch_size
        self.prev: dict[tuple[str, int], str] = {}
        self.learn(done)
        self.skipped = len(self.prev)  # done before this run started
        self.budget = limit if limit is not None else len(parts)  # partitions we may still claim
        self.given_up: set[int] = set()  # failed or lost in this run: the next run retries them
        self.busy: set[int] = set()  # claimed by another live worker when we last tried
        self.flying: set[int] = set()  # claimed by us, handed to the runner, not yet back

    @property
    def todo(self) -> int:
        """Partitions this run expects to do (the progress bar's total)."""
        return min(self.budget, len(self.parts) - len(self.prev))

    def learn(self, done: dict[int, str]) -> None:
        """Take in done summaries (partition id → summary), this worker's or any other's."""
        for pid, summary in done.items():
            if (x := self.by_id.get(pid)) is not None:
                self.prev[(x.user_id, x.seq)] = summary

    def ready(self) -> list[Part]:
        """Partitions without an output whose predecessor's summary exists, in wave order,
        none of them given up, busy elsewhere or already in flight."""
        skip = self.given_up | self.busy | self.flying
        return [x for x in self.parts if (x.user_id, x.seq) not in self.prev and x.id not in skip
                and (x.seq == 0 or (x.user_id, x.seq - 1) in self.prev)]

    def claim(self, lease: Lease) -> list[Part]:
        """The next ready batch, claimed and in flight; empty when the budget is spent or
        nothing ready is free (what another worker holds is set aside as busy)."""
        while self.budget > 0:
            want = self.ready()[:min(self.batch_size, self.budget)]
            if not want:
                break
            mine = lease.claim([x.id for x in want])
            self.busy.update(x.id for x in want if x.id not in mine)
            batch = [x for x in want if x.id in mine]
            if batch:
                self.budget -= len(batch)
                self.flying.update(x.id for x in batch)
                return batch
        return []

    def finished(self, parts: list[Part], settled: Settled) -> int:
        """A batch is back: its committed summaries feed the next wave; return how many."""
        self.flying.difference_update(x.id for x in parts)
        if settled.given_up:
            self.given_up.update(x.id for x in parts)
        self.learn(settled.summaries)
        return len(settled.summaries)

    def retry_busy(self) -> bool:
        """Forget which partitions were busy elsewhere (to try them again); were there any?"""
        had = bool(self.busy)
        self.busy.clear()
        return had
