"""Changed users' short-term caches → the online store, in bulk, at least every ``interval_s``.

The consumer hands over the cache states each committed batch changed; ``flush_if_due`` writes the
newest state of each user through the existing writer (``features.online.push_short_term_cache``:
one Redis pipeline per 500 users) as soon as the previous write is a quarter of ``interval_s`` old.
So a change waits at most ``interval_s`` (the bound ``--flush-ms`` promises) and usually only for
the next commit; writes stay at most four per interval however small the batches are. Event timestamps
written are strictly increasing per user: Feast's own Redis store drops a write whose timestamp
equals the stored one, and a seal (stamped at the event that filled the cache) or a late event
leaves a cache whose newest time did not move. A failed write keeps the users pending for the next
flush; the ledger already holds the truth (``liber push-caches`` re-sends it all).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pandas as pd

from liber_features.errors import LiberError
from liber_features.features.caches import cache_frame
from liber_features.ingest.partition import UserState
from liber_features.ledger.store import now_us

__all__ = ["Flusher"]


class Flusher:
    """Collects changed cache states; ``flush_if_due`` writes them with ``write(frame) -> rows``."""

    def __init__(self, write: Callable[[pd.DataFrame], int], interval_s: float = 0.2, *,
                 on_flush: Callable[[list[str], int], None] | None = None,
                 say: Callable[[str], None] = print) -> None:
        self.write, self.interval_s, self.on_flush, self.say = write, interval_s, on_flush, say
        self.pending: dict[str, UserState] = {}
        self.last_us: dict[str, int] = {}  # the event timestamp last written, per user
        self.last_flush = time.monotonic()
        self.users_written = 0
        self.failures = 0

    def add(self, states: list[UserState]) -> None:
        for st in states:
            self.pending[st.user_id] = st  # the newest state wins: one write per user per flush

    def flush_if_due(self) -> int:
        if self.pending and time.monotonic() - self.last_flush >= self.interval_s / 4:
            return self.flush()
        return 0

    def flush(self) -> int:
        """Write every pending user now; returns users written (0 when the write failed)."""
        self.last_flush = time.monotonic()
        if not self.pending:
            return 0
        df = cache_frame(list(self.pending.values()))
        stamps = df["event_timestamp"].dt.as_unit("us").astype("int64").tolist()
        fixed = [max(ts, self.last_us.get(u, ts - 1) + 1) for u, ts in zip(df["user_id"], stamps)]
        df["event_timestamp"] = pd.to_datetime(fixed, unit="us", utc=True)
        try:
            self.write(df)
        except LiberError as exc:
            self.failures += 1
            self.say(f"warning: online write failed, {len(df)} user(s) kept for the next flush: {exc}")
            return 0
        self.last_us.update(zip(df["user_id"], fixed))
        users = list(self.pending)
        self.pending.clear()
        self.users_written += len(users)
        if self.on_flush is not None:
            self.on_flush(users, now_us())
        return len(users)
