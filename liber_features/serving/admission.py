"""Load shedding for ``liber serve``: a deadline per request and a bounded number in flight per worker.

Why: a worker that queues every request it is offered answers all of them late once the offered
load passes its capacity (the queue, and with it the latency, grows without bound). Here a request
is either started at once or refused at once:

- at most ``max_in_flight`` requests run per worker process; one more is answered 503 with
  ``Retry-After`` without waiting (a client or balancer can try another worker or back off);
- each request has a deadline: ``deadline_ms`` from when the server started reading it, or the
  client's ``X-Request-Timeout`` (ms) when that is shorter. It covers the time spent before the
  work starts as well as the work; a request whose work has not finished by then is answered 503
  at its deadline.

The blocking fetch + score runs in a worker thread (``anyio.to_thread``), never on the event loop,
so a slow store reply for one user does not stall the other requests. A thread cannot be killed:
a request abandoned at its deadline keeps its slot until its thread returns (bounded by the
store's socket timeout), so abandoned work still counts against ``max_in_flight``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TypeVar

from pydantic import BaseModel, ConfigDict, Field

from liber_features.errors import LiberError

__all__ = ["Admission", "Limits", "Shed", "TIMEOUT_HEADER", "started_at"]

T = TypeVar("T")
TIMEOUT_HEADER = "x-request-timeout"
STAMP = "liber.t0"  # ASGI scope key: perf_counter() when the request reached the app


class Limits(BaseModel):
    """How long a request may take and how many may run at once, per worker process."""

    model_config = ConfigDict(extra="forbid")

    deadline_ms: float = Field(100.0, gt=0, description="longest a request may take, queueing included")
    max_in_flight: int = Field(8, ge=1, description="requests running at once per worker; more are shed")
    retry_after_s: int = Field(1, ge=0, description="the Retry-After of a shed request")


class Shed(LiberError):
    """A request refused for load: answered 503 with ``Retry-After``."""


def started_at(scope) -> float:
    """When the request reached the app (stamped by the service's ASGI wrapper), else now."""
    return scope.get(STAMP) or time.perf_counter()


class Admission:
    """``await admission.run(fn, *args, t0=..., timeout=...)``: ``fn`` in a thread, within the deadline."""

    def __init__(self, limits: Limits | None = None) -> None:
        self.limits = limits or Limits()
        self._slots = threading.BoundedSemaphore(self.limits.max_in_flight)
        self._limiter = None  # an anyio.CapacityLimiter of our own: never behind other threadpool users

    @property
    def in_flight(self) -> int:
        """Requests holding a slot now (abandoned ones included, until their thread returns)."""
        return self.limits.max_in_flight - self._slots._value

    def budget_ms(self, header: str | None) -> float:
        """The request's deadline: ours, or the client's ``X-Request-Timeout`` when shorter.

        A header that is not a positive number is ignored (the server's deadline applies)."""
        ms = self.limits.deadline_ms
        if header:
            try:
                asked = float(header)
            except ValueError:
                return ms
            if 0 < asked < ms:
                return asked
        return ms

    async def run(self, fn: Callable[..., T], *args, t0: float, budget_ms: float) -> T:
        import anyio

        remaining = t0 + budget_ms / 1000 - time.perf_counter()
        if remaining <= 0:
            raise Shed(f"deadline of {budget_ms:g} ms passed before the request could start")
        if not self._slots.acquire(blocking=False):
            raise Shed(f"{self.limits.max_in_flight} requests already in flight on this worker")
        if self._limiter is None:
            self._limiter = anyio.CapacityLimiter(self.limits.max_in_flight)
        lock, state = threading.Lock(), {"ran": False, "gone": False}

        def work() -> T:
            with lock:
                if state["gone"]:  # abandoned before it started: the caller gave the slot back
                    return None  # type: ignore[return-value]
                state["ran"] = True
            try:
                return fn(*args)
            finally:
                self._slots.release()

        try:
            with anyio.fail_after(remaining):
                return await anyio.to_thread.run_sync(work, abandon_on_cancel=True, limiter=self._limiter)
        except TimeoutError:
            with lock:
                if not state["ran"]:
                    state["gone"] = True
                    self._slots.release()
            raise Shed(f"deadline of {budget_ms:g} ms exceeded") from None
