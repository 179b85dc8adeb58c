"""``liber encode --follow``: one encode run that stays up and takes partitions as they are sealed.

It polls, on SQLite and PostgreSQL alike: every ``poll_s`` one count of the sealed partitions
(``backlog.sealed_count``), cheap next to one LLM call. When the count moved since the last pass
began, a pass runs (``interest.encode_pass``) inside the same run row, lease and heartbeat, so
``liber status`` shows one live worker however long it runs, and the claims keep two followers (or
a follower and a plain ``liber encode``) from generating anything twice. LISTEN/NOTIFY would save
the poll on PostgreSQL but needs every writer of partitions to notify; a count a second does not.

``sync`` (the CLI: rebuild the long-term table, write what changed online) runs after every
committed batch, so a sealed partition's vectors are online one batch of LLM calls after its seal,
without ``liber materialize``. A failed sync (the online store down) is a warning, not the end of
the worker: it is retried at every poll until it succeeds, and the ledger's sync state
(``features/sync.py``) keeps every user it did not write pending meanwhile.

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


@dataclass
class FollowReport:
    """What the worker did besides encoding: passes started, syncs done and failed, why it ended
    (``idle``, ``stopped``: a signal, or ``max_seconds``)."""

    passes: int = 0
    syncs: int = 0
    sync_failures: int = 0
    ended: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _never() -> bool:
    return False


def follow_encode(ledger: Ledger, runner: BatchRunner, llm: LLMLike, enc: TextEncoderLike, cfg: EncodeConfig,
                  fc: FollowConfig, *, stop: Callable[[], bool] = _never, sync: Callable[[], Any] | None = None,
                  on_commit: Callable[[list[Part]], None] | None = None, say: Callable[[str], None] = print,
                  params: dict[str, Any] | None = None) -> tuple[EncodeSummary, FollowReport]:
    """Encode what is sealed and what gets sealed, syncing after each committed batch (module docstring).

    ``sync()`` raises a ``LiberError`` when it fails; ``on_commit(parts)`` hears of each committed batch.
    """
    ctx = RunContext.start(ledger, llm, enc, cfg, EncodeSummary(), {"follow": fc.model_dump(), **(params or {})})
    rep, status = FollowReport(), "ok"
    deadline = None if fc.max_seconds is None else time.monotonic() + fc.max_seconds

    def timed_out() -> bool:
        return deadline is not None and time.monotonic() >= deadline

    def halt() -> bool:
        return stop() or timed_out()

    dirty = sync is not None  # a worker that died last time may have left the table unsynced

    def try_sync() -> None:
        nonlocal dirty
        try:
            sync()
        except LiberError as exc:
            rep.sync_failures += 1
            say(f"warning: online sync failed, retried at the next poll: {redact_text(str(exc))[:300]}")
            return
        rep.syncs += 1
        dirty = False

    def committed(parts: list[Part]) -> None:
        nonlocal dirty
        if on_commit is not None:
            on_commit(parts)
        if sync is not None:
            dirty = True
            try_sync()

    seen: int | None = None  # sealed partitions counted before the last pass began
    try:
        with ctx.lease.heartbeat():
            while not halt():
                count = sealed_count(ledger, cfg.users)
                if count != seen:
                    seen = count  # counted before the pass loads them: a seal in between is not missed
                    skipped = encode_pass(ctx, runner, stop=halt, on_commit=committed)
                    if rep.passes == 0:
                        ctx.summary.skipped_already_done = skipped
                    rep.passes += 1
                    continue  # look again at once: partitions may have been sealed during the pass
                if dirty:
                    try_sync()
                if fc.until_idle:
                    rep.ended = "idle"
                    break
                until = time.monotonic() + fc.poll_s
                while not halt() and time.monotonic() < until:
                    time.sleep(min(0.1, fc.poll_s))
            if not rep.ended:
                rep.ended = "stopped" if stop() else "max_seconds"
            if dirty:  # one last try: what the last batches committed should be online
                try_sync()
    except BaseException as exc:
        status = "failed"
        ctx.summary.errors.append(redact_text(f"{type(exc).__name__}: {exc}")[:300])
        raise
    finally:
        ctx.finish(status)
    return ctx.summary, rep
