"""Load shedding for ``liber serve``: a deadline per request and a bounded number in flight per worker.

Why: a worker that queues every request it is offered answers all of them late once the offered
load passes its capacity (the queue, and with it the latency, grows without bound). Here:

- at most ``max_in_flight`` requests run per worker process; up to ``max_queue`` more wait for a
  slot (without using CPU), each until its deadline; one more is answered 503 with ``Retry-After``
  at once, before its body is read (``ShedEarly``), so a client or balancer can try another worker
  or back off;
- each request has a deadline: ``deadline_ms`` from when the server started reading it, or the
  client's ``X-Request-Timeout`` (ms) when that is shorter. It covers the wait for a slot as well
  as the work; a request not finished by then is answered 503 at its deadline, less a margin for
  the way out (``answer_margin_ms``).

Why a queue rather than refusing as soon as the slots are full: measured by bench_serve_load with
wrk at 128 connections, refusing at once left each connection re-sending at once, and answering
those 503s took the CPU (and the GIL) the admitted requests needed: 377 of 32,072 requests answered
200 in 10 s. Waiting costs no CPU and the deadline still bounds it.

Which waiter a freed slot goes to (adaptive LIFO): the oldest while it still has at least half its
deadline left, else the newest. Always newest-first starved a few waiters to their deadline under
ordinary load (bench_serve_load, 2026-12-05, idle box, 32 connections: p99 89 ms at p50 16 ms);
always oldest-first, under overload, spends every slot on a request that then misses its deadline.

The blocking fetch + score runs in a worker thread (a pool of ``max_in_flight`` threads per
worker), never on the event loop, so a slow store reply for one user does not stall the other
requests. A plain ``ThreadPoolExecutor`` and a timer on the loop rather than
``anyio.to_thread`` + ``fail_after``: anyio's hand-off (capacity limiter, cancel scope, backend
lookups) was 12 % of the event loop's time per request under load (py-spy, 2026-12-06), and our
own slots already bound the threads. A thread cannot be killed:
a request abandoned at its deadline keeps its slot until its thread returns (bounded by the
store's socket timeout), so abandoned work still counts against ``max_in_flight``.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from pydantic import BaseModel, ConfigDict, Field

from liber_features.errors import LiberError

__all__ = ["Admission", "Limits", "Shed", "ShedEarly", "TIMEOUT_HEADER", "started_at"]

T = TypeVar("T")
TIMEOUT_HEADER = "x-request-timeout"
STAMP = "liber.t0"  # ASGI scope key: perf_counter() when the request reached the app


class Limits(BaseModel):
    """How long a request may take and how many may run at once, per worker process."""

    model_config = ConfigDict(extra="forbid")

    deadline_ms: float = Field(100.0, gt=0, description="longest a request may take, queueing included")
    max_in_flight: int = Field(4, ge=1, description="requests running at once per worker")
    max_queue: int = Field(256, ge=0, description="requests waiting for a slot (until their deadline); more are shed")
    retry_after_s: int = Field(1, ge=0, description="the Retry-After of a shed request")
    # The deadline runs from when the app sees a request; the client's clock also counts the time
    # before (a busy event loop reading it) and after (writing the answer). Under a Redis pause the
    # 503s given at exactly the deadline reached wrk up to 8.4 ms after it (bench_serve_load,
    # 2026-12-06): the timer fires this much earlier (at most a tenth of the deadline).
    answer_margin_ms: float = Field(5.0, ge=0, description="kept back from the deadline for the way out")

    def margin_ms(self, budget_ms: float) -> float:
        return min(self.answer_margin_ms, budget_ms / 10)


class Shed(LiberError):
    """A request refused for load: answered 503 with ``Retry-After``."""


def started_at(scope) -> float:
    """When the request reached the app (stamped by the service's ASGI wrapper), else now."""
    return scope.get(STAMP) or time.perf_counter()


class Admission:
    """``await admission.run(fn, *args, t0=..., timeout=...)``: ``fn`` in a thread, within the deadline."""

    def __init__(self, limits: Limits | None = None) -> None:
        self.limits = limits or Limits()
        self._lock = threading.Lock()  # slots are given back from worker threads
        self._busy = 0
        # (loop, future, until when it may be served oldest-first: perf_counter())
        self._waiters: deque[tuple[asyncio.AbstractEventLoop, asyncio.Future, float]] = deque()
        self._pool: ThreadPoolExecutor | None = None  # our own threads: never behind other users of a pool

    @property
    def in_flight(self) -> int:
        """Requests holding a slot now (abandoned ones included, until their thread returns)."""
        return self._busy

    @property
    def waiting(self) -> int:
        """Requests waiting for a slot now."""
        return len(self._waiters)

    @property
    def full(self) -> bool:
        """Every slot taken and the queue full: a new request is refused at once."""
        return self._busy >= self.limits.max_in_flight and len(self._waiters) >= self.limits.max_queue

    def refusal(self) -> str:
        return (f"{self.limits.max_in_flight} requests in flight and {self.limits.max_queue} waiting "
                "on this worker")

    async def _acquire(self, remaining: float, budget_ms: float) -> None:
        """A slot now, or wait for one (a bounded queue) until the deadline."""
        loop = asyncio.get_running_loop()
        with self._lock:
            if self._busy < self.limits.max_in_flight:
                self._busy += 1
                return
            if len(self._waiters) >= self.limits.max_queue:
                raise Shed(self.refusal())
            fut = loop.create_future()
            # Until this moment it has at least half its deadline left (it may have spent more
            # than half reading its body: then it is never served oldest-first).
            waiter = (loop, fut, time.perf_counter() + remaining - budget_ms / 2000)
            self._waiters.append(waiter)
        try:
            await asyncio.wait_for(fut, remaining)  # a released slot is handed over (_hand)
        except TimeoutError:
            with self._lock:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
            raise Shed(f"deadline of {budget_ms:g} ms passed waiting for a slot") from None

    def _release(self) -> None:
        """Give a slot back (any thread): to a waiter (adaptive LIFO, module docstring), else free."""
        with self._lock:
            if not self._waiters:
                self._busy -= 1
                return
            # The oldest while it has half its time left; past that the queue is overloaded, the
            # oldest are the nearest their deadline, and a slot handed to one of them is often spent
            # on an answer that comes too late: the newest then.
            if self._waiters[0][2] > time.perf_counter():
                loop, fut, _ = self._waiters.popleft()
            else:
                loop, fut, _ = self._waiters.pop()
        try:
            loop.call_soon_threadsafe(self._hand, fut)
        except RuntimeError:  # the waiter's loop is closed: the slot goes on
            self._release()

    def _hand(self, fut: asyncio.Future) -> None:
        if fut.done():  # it stopped waiting meanwhile (its deadline): the slot goes on
            self._release()
        else:
            fut.set_result(None)

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
        end = t0 + (budget_ms - self.limits.margin_ms(budget_ms)) / 1000
        remaining = end - time.perf_counter()
        if remaining <= 0:
            raise Shed(f"deadline of {budget_ms:g} ms passed before the request could start")
        await self._acquire(remaining, budget_ms)
        remaining = end - time.perf_counter()
        if self._pool is None:  # one thread per slot: a slot never waits for a thread
            self._pool = ThreadPoolExecutor(self.limits.max_in_flight, thread_name_prefix="liber-score")
        loop = asyncio.get_running_loop()
        done: asyncio.Future = loop.create_future()
        lock, state = threading.Lock(), {"ran": False, "gone": False, "expired": False}

        def work() -> None:
            with lock:
                if state["gone"]:  # abandoned before it started: the caller gave the slot back
                    return
                state["ran"] = True
            result = error = None
            try:
                result = fn(*args)
            except BaseException as exc:  # handed to the request, raised there
                error = exc
            finally:
                self._release()
            try:
                loop.call_soon_threadsafe(_settle, done, result, error)
            except RuntimeError:  # the request's loop is closed: nobody is waiting
                pass

        def expire() -> None:
            if not done.done():
                state["expired"] = True
                done.cancel()

        self._pool.submit(work)
        timer = loop.call_later(max(remaining, 0), expire)
        try:
            return await done
        except asyncio.CancelledError:  # its deadline, or the request itself was cancelled
            with lock:
                if not state["ran"]:
                    state["gone"] = True
                    self._release()
            if state["expired"]:
                raise Shed(f"deadline of {budget_ms:g} ms exceeded") from None
            raise
        finally:
            timer.cancel()


def _settle(done: asyncio.Future, result, error: BaseException | None) -> None:
    """On the request's loop: the thread's outcome, unless the request stopped waiting."""
    if done.done():
        return
    if error is not None:
        done.set_exception(error)
    else:
        done.set_result(result)


class ShedEarly:
    """ASGI wrapper: answer 503 for a full worker before the request body is even read.

    Shedding in the endpoint alone still pays for reading, parsing and validating a 100-candidate
    body per refused request; under overload that work competes with the admitted requests for
    the same core (measured by bench_serve_load: at 32 connections most of the CPU went to
    requests that were then refused). The endpoint still takes the slot itself; this check is
    only the cheap early answer when every slot is taken. ``on_shed()`` counts it.
    """

    def __init__(self, app, admission: Admission, paths: frozenset[str], on_shed=None) -> None:
        self.app, self.admission, self.paths, self.on_shed = app, admission, paths, on_shed

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope["path"] in self.paths and self.admission.full:
            body = b'{"error":"%s"}' % self.admission.refusal().encode()
            await send({"type": "http.response.start", "status": 503, "headers": [
                (b"content-type", b"application/json"), (b"content-length", b"%d" % len(body)),
                (b"retry-after", b"%d" % self.admission.limits.retry_after_s)]})
            await send({"type": "http.response.body", "body": body})
            if self.on_shed is not None:
                self.on_shed()
            return
        await self.app(scope, receive, send)
