"""``liber encode --follow``: one encode run that stays up and takes partitions as they are sealed.

It polls, on SQLite and PostgreSQL alike: every ``poll_s`` one count of the sealed partitions
(``backlog.sealed_count``), cheap next to one LLM call. When the count moved since the last pass
began, a pass runs (``interest.encode_pass``) inside the same run row, lease and heartbeat, so
``liber status`` shows one live worker however long it runs, and the claims keep two followers (or
a follower and a plain ``liber encode``) from generating anything twice. LISTEN/NOTIFY would save
the poll on PostgreSQL but needs every writer of partitions to notify; a count a second does not.

``publish`` (the CLI: ``features.sync.write_users_online``) writes the users of every committed
batch online at once, their rows built from the ledger for them alone, so a sealed partition's
vectors are online one batch of LLM calls after its seal, without ``liber materialize``, at a cost
that grows with the batch, not the ledger. ``sync`` (``features.sync.sync_long_term``: rebuild the
long-term table, write what changed, advance the sync state) runs when the worker is idle, at most
every ``sync_every_s`` while it is busy, and at the end: it is what keeps the offline table and the
ledger's record of what is online current, and what catches up users whose ``publish`` failed or
that another worker encoded. A failed write (the online store down, even mid-write) is a warning,
not the end of the worker: the sync is retried at every poll until it succeeds, and the sync state
(``features/sync.py``) keeps every user not written pending meanwhile.

A partition whose batch failed stays owed but is retried only by a pass that a new seal
starts (or by a restart): a partition the LLM cannot do must not keep the worker spinning.
``stop()`` (set by SIGINT/SIGTERM in the CLI) ends the pass after the batch in flight, then the run
finishes ``ok``; ``max_seconds`` stops it the same way; ``until_idle`` returns once a poll finds
nothing new (what a test or a cron job wants).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from liber_features.errors import LiberError
from liber_features.ledger.store import Ledger
from liber_features.redact import redact_text
from liber_features.uil.backlog import sealed_count
from liber_features.uil.context import RunContext
from liber_features.uil.interest import BatchRunner, encode_pass
from liber_features.uil.types import EncodeConfig, EncodeSummary, LLMLike, Part, TextEncoderLike

__all__ = ["FollowConfig", "FollowReport", "follow_encode"]


class FollowConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    poll_s: float = Field(1.0, gt=0, description="seconds between two looks for newly sealed partitions")
    until_idle: bool = Field(False, description="return once a look finds nothing new to encode")
    max_seconds: float | None = Field(None, gt=0,
                                      description="stop (after the batch in flight) this long after the start")
    sync_every_s: float = Field(60.0, ge=0, description="while busy, rebuild the table and sync at most this often")


@dataclass
class FollowReport:
    """What the worker did besides encoding: passes started, users written online right after their
    batch, full syncs, online writes that failed, why it ended (``idle``, ``stopped``: a signal, or
    ``max_seconds``)."""

    passes: int = 0
    users_published: int = 0
    syncs: int = 0
    write_failures: int = 0
    ended: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _never() -> bool:
    return False


def follow_encode(ledger: Ledger, runner: BatchRunner, llm: LLMLike, enc: TextEncoderLike, cfg: EncodeConfig,
                  fc: FollowConfig, *, stop: Callable[[], bool] = _never,
                  publish: Callable[[list[str]], int] | None = None, sync: Callable[[], Any] | None = None,
                  on_commit: Callable[[list[Part]], None] | None = None, say: Callable[[str], None] = print,
                  params: dict[str, Any] | None = None) -> tuple[EncodeSummary, FollowReport]:
    """Encode what is sealed and what gets sealed, writing each committed batch online (module docstring).

    ``publish(users)`` writes those users' rows online and returns how many; ``sync()`` rebuilds the
    table and writes every pending user, advancing the sync state. Both raise a ``LiberError`` when
    they fail. ``on_commit(parts)`` hears of each committed batch.
    """
    ctx = RunContext.start(ledger, llm, enc, cfg, EncodeSummary(), {"follow": fc.model_dump(), **(params or {})})
    rep = FollowReport()
    started = time.monotonic()
    deadline = None if fc.max_seconds is None else started + fc.max_seconds

    def timed_out() -> bool:
        return deadline is not None and time.monotonic() >= deadline

    def halt() -> bool:
        return stop() or timed_out()

    def attempt(write: Callable[[], Any]) -> bool:
        try:
            write()
        except LiberError as exc:
            rep.write_failures += 1
            say(f"warning: online write failed, retried at the next poll: {redact_text(str(exc))[:300]}")
            return False
        return True

    # Pending from the start: a worker that died last time may have left the table unsynced.
    state = {"unsynced": sync is not None, "last_sync": started}

    def try_sync() -> None:
        if attempt(sync):
            rep.syncs += 1
            state["unsynced"], state["last_sync"] = False, time.monotonic()

    def committed(parts: list[Part]) -> None:
        if on_commit is not None:
            on_commit(parts)
        if publish is not None:
            users = sorted({x.user_id for x in parts})
            if attempt(lambda: publish(users)):
                rep.users_published += len(users)
        if sync is not None:
            state["unsynced"] = True
            if time.monotonic() - state["last_sync"] >= fc.sync_every_s:
                try_sync()

    seen: int | None = None  # sealed partitions counted before the last pass began
    with ctx.running():
        while not halt():
            count = sealed_count(ledger, cfg.users)
            if count != seen:
                seen = count  # counted before the pass loads them: a seal in between is not missed
                skipped = encode_pass(ctx, runner, stop=halt, on_commit=committed)
                if rep.passes == 0:
                    ctx.summary.skipped_already_done = skipped
                rep.passes += 1
                continue  # look again at once: partitions may have been sealed during the pass
            if state["unsynced"]:  # idle: the table and the sync state catch up now
                try_sync()
            if fc.until_idle:
                rep.ended = "idle"
                break
            until = time.monotonic() + fc.poll_s
            while not halt() and time.monotonic() < until:
                time.sleep(min(0.1, fc.poll_s))
        if not rep.ended:
            rep.ended = "stopped" if stop() else "max_seconds"
        if state["unsynced"]:  # one last try: the table and the sync state as of the last commit
            try_sync()
    return ctx.summary, rep
