"""After a failed online read, stop asking the store for a moment: one probe at a time, not a herd.

Why: under load a paused or dead Redis costs every request its full socket timeout, and each
failed read drops its connection, so the next request opens a new one. With hundreds of requests
a second that is hundreds of connects (and timeouts) a second against a store that is already in
trouble, and each request waits the timeout before it can be answered degraded. The breaker turns
the first failure into an immediate answer for the next ``retry_ms``: ``allow`` returns the last
error instead of letting the caller read. Once ``retry_ms`` has passed, exactly one caller is let
through as the probe (the others keep failing fast); its success closes the breaker, so answers
are whole again at most ``retry_ms`` after the store returns, with no restart. ``retry_ms=0``
turns it off (every call reads), which is what a library caller of ``LiberScorer`` gets.
"""

from __future__ import annotations

import threading
import time

__all__ = ["StoreBreaker"]


class StoreBreaker:
    """Closed (``allow`` → None) until ``failure``; then open for ``retry_ms``, with one probe per period."""

    def __init__(self, retry_ms: float = 250.0, clock=time.monotonic) -> None:
        self.retry_s, self.clock = retry_ms / 1000, clock
        self._lock = threading.Lock()
        self._last: str | None = None  # the error that opened it; None = closed
        self._probe_at = 0.0

    @property
    def open(self) -> bool:
        return self._last is not None

    def allow(self) -> str | None:
        """None: read the store (closed, or this caller is the probe). Else the last error, to fail fast with."""
        if self._last is None or self.retry_s <= 0:  # the common case takes no lock
            return None
        with self._lock:
            last = self._last
            if last is None:
                return None
            now = self.clock()
            if now >= self._probe_at:
                self._probe_at = now + self.retry_s  # this caller probes; the rest wait a period
                return None
            return last

    def success(self) -> None:
        if self._last is not None:
            with self._lock:
                self._last = None

    def failure(self, error: str) -> None:
        if self.retry_s <= 0:
            return
        with self._lock:
            self._last = error
            self._probe_at = self.clock() + self.retry_s
