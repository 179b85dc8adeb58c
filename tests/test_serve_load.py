"""``liber serve`` under load and faults: a stalled store stalls only its own request, load is shed
with 503 + Retry-After, a store outage answers degraded (or 503 naming the store) and heals without
a restart, a reload swaps atomically and refuses a model whose card disagrees, the admin token is
required and never logged, and several worker processes sum their metrics."""

from __future__ import annotations

import asyncio
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import types

import httpx
import numpy as np
import pytest
from servekit import free_port, private_store, start_redis, unconfigure

from liber_features.errors import ConfigError
from liber_features.serving.admission import Limits
from liber_features.serving.breaker import StoreBreaker
from liber_features.serving.logs import configure_logging
from liber_features.serving.reload import ScorerSlot
from liber_features.serving.scorer import LiberScorer, ScorerConfig, ScoreResult
from liber_features.serving.service import create_app

ITEMS = ["1", "3", "6"]


def run(coro):
    return asyncio.run(coro)


def client(app) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://liber")


def body(user: str = "1") -> dict:
    return {"user_id": user, "item_ids": ITEMS}


class Gate:
    """A stand-in for the slow part of a request: blocks the calling thread until opened."""

    def __init__(self) -> None:
        self.opened, self.entered = threading.Event(), threading.Semaphore(0)

    def wait(self) -> None:
        self.entered.release()
        assert self.opened.wait(10), "the gate was never opened"

    async def entered_by(self, n: int) -> None:
        for _ in range(n):
            assert await asyncio.to_thread(self.entered.acquire, True, 10)


class GatedScorer:
    """A scorer whose every ``score`` waits at the gate (no model, no store): for load shedding."""

    def __init__(self, gate: Gate) -> None:
        self.gate = gate
        self.card = types.SimpleNamespace(backbone="din", liber="both")
        self.fetcher = types.SimpleNamespace(fetch=lambda ids: [None], where="nowhere")
        self.providers = ["CPUExecutionProvider"]

    def score(self, user_id, item_ids) -> ScoreResult:
        self.gate.wait()
        return ScoreResult(user_id=user_id, scores=np.full(len(item_ids), 0.5, dtype=np.float32))


@pytest.fixture(scope="module")
def scorer(world):
    return LiberScorer.load(world["model_dir"], world["repo"].root, store=world["store"])


def counts(metrics: str) -> dict[str, float]:
    """/score's answers by status and the shed count, from a /metrics text (deltas are compared:
    Feast's import puts prometheus_client in multiprocess mode, where a new app's counters start
    from the values an earlier app in the process left in its files)."""
    from prometheus_client.parser import text_string_to_metric_families

    out = {"200": 0.0, "503": 0.0, "shed": 0.0}
    for family in text_string_to_metric_families(metrics):
        for sample in family.samples:
            if sample.name == "liber_requests_total" and sample.labels.get("endpoint") == "/score":
                out[sample.labels["status"]] = sample.value
            elif sample.name == "liber_shed_total":
                out["shed"] = sample.value
    return out


# --- the event loop is never blocked ------------------------------------------------------------

def test_a_stalled_store_does_not_stall_other_requests(scorer):
    gate = Gate()

    class StallingFetcher:  # user 1's read hangs until the gate opens; everyone else's answers
        where = scorer.fetcher.where

        def fetch(self, ids):
            if ids == ["1"]:
                gate.wait()
            return scorer.fetcher.fetch(ids)

    stalled = LiberScorer(scorer.card, scorer.session, StallingFetcher(), ScorerConfig())
    app = create_app(stalled, limits=Limits(deadline_ms=20_000))

    async def go():
        async with client(app) as c:
            slow = asyncio.create_task(c.post("/score", json=body("1")))
            await gate.entered_by(1)
            other = await c.post("/score", json=body("5"))  # answered while user 1's read hangs
            assert other.status_code == 200 and not slow.done()
            gate.opened.set()
            return other.json(), (await slow).json()

    other, first = run(go())
    assert other["scores"] == pytest.approx(scorer.score("5", ITEMS).scores.tolist(), abs=1e-7)
    assert first["scores"] == pytest.approx(scorer.score("1", ITEMS).scores.tolist(), abs=1e-7)
    assert first["degraded"] is False and other["degraded"] is False


# --- load shedding ------------------------------------------------------------------------------

def test_a_saturated_worker_sheds_the_excess_with_503_and_retry_after():
    gate = Gate()
    app = create_app(GatedScorer(gate), limits=Limits(deadline_ms=20_000, max_in_flight=2, max_queue=1,
                                                      retry_after_s=1))

    async def go():
        async with client(app) as c:
            before = counts((await c.get("/metrics")).text)
            admitted = [asyncio.create_task(c.post("/score", json=body())) for _ in range(2)]
            await gate.entered_by(2)
            queued = asyncio.create_task(c.post("/score", json=body()))  # waits for a slot
            while app.state.admission.waiting < 1:
                await asyncio.sleep(0.001)
            excess = [await c.post("/score", json=body()) for _ in range(3)]  # answered at once
            gate.opened.set()
            done = [await t for t in [*admitted, queued]]
            after = await c.post("/score", json=body())  # the slots came back
            moved = {k: v - before[k] for k, v in counts((await c.get("/metrics")).text).items()}
            return excess, done, after, moved

    excess, done, after, moved = run(go())
    assert [(r.status_code, r.headers.get("retry-after")) for r in excess] == [(503, "1")] * 3
    assert excess[0].json() == {"error": "2 requests in flight and 1 waiting on this worker"}
    assert [r.status_code for r in done] == [200, 200, 200] and after.status_code == 200
    assert moved == {"200": 4, "503": 3, "shed": 3}


def test_the_deadline_answers_503_and_abandoned_work_keeps_its_slot():
    """X-Request-Timeout shorter than the server's deadline wins; the abandoned thread still counts."""
    gate = Gate()
    app = create_app(GatedScorer(gate), limits=Limits(deadline_ms=20_000, max_in_flight=1, max_queue=1))

    async def go():
        async with client(app) as c:
            late = await c.post("/score", json=body(), headers={"X-Request-Timeout": "30"})
            # The late request's thread still runs: the next one waits for its slot, until its deadline.
            waited = await c.post("/score", json=body(), headers={"X-Request-Timeout": "40"})
            gate.opened.set()
            await asyncio.sleep(0)
            for _ in range(200):  # its thread returns and gives the slot back
                if app.state.admission.in_flight == 0:
                    break
                await asyncio.sleep(0.01)
            return late, waited, await c.post("/score", json=body(), headers={"X-Request-Timeout": "junk"})

    late, waited, ok = run(go())
    assert (late.status_code, late.headers["retry-after"], late.json()) == (
        503, "1", {"error": "deadline of 30 ms exceeded"})
    assert (waited.status_code, waited.headers["retry-after"], waited.json()) == (
        503, "1", {"error": "deadline of 40 ms passed waiting for a slot"})
    assert ok.status_code == 200  # a header that is not a number leaves the server's deadline


@pytest.mark.parametrize(("spent_s", "order"), [
    (0.0, ["first", "older", "newer"]),  # half its deadline left: the oldest waiter first
    (12.0, ["first", "newer", "older"]),  # less than half (12 of 20 s spent): the newest first
])
def test_a_freed_slot_goes_to_the_oldest_waiter_until_half_its_deadline_is_gone(spent_s, order):
    """Adaptive LIFO: oldest-first under ordinary load; newest-first once the waiters run late."""
    from liber_features.serving.admission import Admission

    a = Admission(Limits(deadline_ms=20_000, max_in_flight=1, max_queue=2))
    gate, ran = Gate(), []

    def job(name):
        if name == "first":
            gate.wait()
        ran.append(name)
        return name

    async def go():
        t0 = time.perf_counter() - spent_s
        tasks = [asyncio.create_task(a.run(job, "first", t0=t0, budget_ms=20_000))]
        await gate.entered_by(1)
        for name in ("older", "newer"):
            tasks.append(asyncio.create_task(a.run(job, name, t0=t0, budget_ms=20_000)))
            while a.waiting < len(tasks) - 1:
                await asyncio.sleep(0.001)
        gate.opened.set()
        return await asyncio.gather(*tasks)

    assert run(go()) == ["first", "older", "newer"] and ran == order
    assert (a.in_flight, a.waiting) == (0, 0)


def test_the_deadline_is_the_shorter_of_server_and_client():
    from liber_features.serving.admission import Admission

    a = Admission(Limits(deadline_ms=100))
    assert [a.budget_ms(h) for h in (None, "", "40", "250", "0", "-5", "abc", "99.5")] == [
        100, 100, 40, 100, 100, 100, 100, 99.5]
    # The timer fires early by the answer margin: 5 ms, at most a tenth of a short deadline.
    assert [a.limits.margin_ms(b) for b in (100, 40, 5)] == [5, 4, 0.5]
    assert Limits(answer_margin_ms=0).margin_ms(100) == 0


# --- a store outage -----------------------------------------------------------------------------

def test_the_breaker_fails_fast_then_lets_one_probe_through():
    now = [0.0]
    b = StoreBreaker(retry_ms=250, clock=lambda: now[0])
    assert b.allow() is None
    b.failure("Redis at x: TimeoutError")
    assert [b.allow(), b.allow()] == ["Redis at x: TimeoutError"] * 2
    now[0] = 0.25
    assert [b.allow(), b.allow()] == [None, "Redis at x: TimeoutError"]  # one probe per period
    b.success()
    assert [b.allow(), b.allow(), b.open] == [None, None, False]
    off = StoreBreaker(retry_ms=0)
    off.failure("x")
    assert off.allow() is None


@pytest.fixture
def outage(world):
    """A private Redis to pause or kill. The heap is frozen meanwhile, as in liber serve's workers
    (``serving.server.app_from_env``): a full collection of this test process's heap took 354–378 ms
    (measured 2026-12-06 with the whole serving suite loaded), and one landing inside a burst pushed a
    request past its 400 ms deadline."""
    import gc

    gc.collect()
    gc.freeze()
    port = free_port()
    proc = start_redis(port)
    store = private_store(world, port)
    yield proc, store, port
    gc.unfreeze()
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGCONT)
        proc.kill()
    proc.wait()


def _outage_app(world, store, policy: str):
    from liber_features.serving.server import ServeConfig

    cfg = ServeConfig(model_dir=str(world["model_dir"]), on_store_error=policy, store_retry_ms=250,
                      limits=Limits(deadline_ms=400, max_in_flight=16))
    scorer = LiberScorer.load(world["model_dir"], world["repo"].root, store=store, config=ScorerConfig(
        on_store_error=policy, timeout_ms=cfg.fetch_timeout_ms(), retry_ms=cfg.store_retry_ms))
    return scorer, create_app(scorer, limits=cfg.limits)


def test_a_paused_store_under_load_degrades_then_heals_without_restart(world, outage):
    import redis

    proc, store, port = outage
    scorer, app = _outage_app(world, store, "degrade")
    whole = scorer.score("1", ITEMS).scores.tolist()
    admin = redis.Redis(port=port)
    before = 0

    async def burst(c, n=4):  # 12 at once: within max_in_flight, so none is shed for load
        return await asyncio.gather(*[c.post("/score", json=body(u)) for u in ["1", "5", "8"] * n])

    async def go():
        async with client(app) as c:
            await burst(c)  # the worker threads have their connections
            nonlocal before
            before = admin.info("stats")["total_connections_received"]
            os.kill(proc.pid, signal.SIGSTOP)
            paused = [r for _ in range(5) for r in await burst(c)]
            os.kill(proc.pid, signal.SIGCONT)
            for _ in range(100):  # whole again once a probe gets through (retry_ms = 250)
                back = await c.post("/score", json=body("1"))
                if not back.json()["degraded"]:
                    return paused, back, await burst(c)
                await asyncio.sleep(0.05)
            raise AssertionError("never whole again after the store came back")

    paused, back, after = run(go())
    assert {r.status_code for r in paused} == {200}  # none 503 (past the deadline), none 500
    assert all(r.json()["degraded"] and r.json()["encoder_version"] is None for r in paused)
    assert {r.json()["reason"].split(": ")[0] for r in paused} == {"online store unavailable"}
    assert back.json()["scores"] == pytest.approx(whole, abs=1e-7)
    assert {(r.status_code, r.json()["degraded"]) for r in after} == {(200, False)}
    # Reconnects are bounded (the threads' own connections, one probe per retry period): the
    # 60 requests during the pause did not each open a connection.
    assert len(paused) == 60 and admin.info("stats")["total_connections_received"] - before < 40


def test_a_dead_store_under_raise_answers_503_naming_the_store(world, outage):
    proc, store, port = outage
    _, app = _outage_app(world, store, "raise")
    proc.kill()
    proc.wait()

    async def go():
        async with client(app) as c:
            return await asyncio.gather(*[c.post("/score", json=body()) for _ in range(12)])

    answers = run(go())
    assert {r.status_code for r in answers} == {503}
    assert all(r.json()["error"].startswith(f"Redis at 127.0.0.1:{port}: ") for r in answers), answers[0].json()
    assert "retry-after" not in answers[0].headers  # a store error, not load: no Retry-After


# --- reload -------------------------------------------------------------------------------------

TOKEN = "s3cret-reload-token"


@pytest.fixture
def reloadable(world, tmp_path):
    def load(model_dir):
        return LiberScorer.load(model_dir, world["repo"].root, store=world["store"])

    slot = ScorerSlot(load(world["model_dir"]), str(world["model_dir"]), loader=load)
    bad = tmp_path / "bad-model"
    shutil.copytree(world["model_dir"], bad)
    card = json.loads((bad / "model_card.json").read_text())
    card["memory_slots"] = 8
    (bad / "model_card.json").write_text(json.dumps(card))
    good = tmp_path / "next-model"
    shutil.copytree(world["model_dir"], good)
    return slot, str(good), str(bad)


def test_admin_reload_needs_the_token_and_never_logs_it(reloadable):
    slot, good, _ = reloadable
    stream = io.StringIO()
    handler = configure_logging(stream=stream)
    try:
        app = create_app(slot, admin_token=TOKEN)
        off = create_app(slot)

        async def go():
            async with client(app) as c, client(off) as o:
                return [await c.post("/admin/reload"),
                        await c.post("/admin/reload", headers={"Authorization": "Bearer wrong"}),
                        await c.post("/admin/reload", headers={"Authorization": TOKEN}),
                        await o.post("/admin/reload", headers={"Authorization": f"Bearer {TOKEN}"}),
                        await c.post("/admin/reload", json={"model_dir": good},
                                     headers={"Authorization": f"Bearer {TOKEN}"})]

        answers = run(go())
    finally:
        unconfigure(handler)
    assert [r.status_code for r in answers] == [401, 403, 403, 403, 200]
    assert answers[0].headers["www-authenticate"] == "Bearer"
    assert answers[4].json() == {"model": "din+liber:both", "model_dir": good, "generation": 1}
    assert slot.model_dir == good and slot.generation == 1
    assert TOKEN not in stream.getvalue() and "POST /admin/reload 200" in stream.getvalue()


def test_reload_swaps_atomically_and_refuses_a_card_that_disagrees(reloadable):
    slot, good, bad = reloadable
    app = create_app(slot, admin_token=TOKEN, limits=Limits(deadline_ms=20_000, max_in_flight=64))
    auth = {"Authorization": f"Bearer {TOKEN}"}
    old = slot.scorer
    expected = old.score("1", ITEMS).scores.tolist()

    async def go():
        async with client(app) as c:
            refused = await c.post("/admin/reload", json={"model_dir": bad}, headers=auth)
            still = slot.scorer
            load = [c.post("/score", json=body("1")) for _ in range(40)]
            swap = c.post("/admin/reload", json={"model_dir": good}, headers=auth)
            *scored, swapped = await asyncio.gather(*load, swap)
            return refused, still, scored, swapped

    refused, still, scored, swapped = run(go())
    assert refused.status_code == 409 and still is old
    assert refused.json()["error"].startswith("refused, the old model keeps serving: model card has "
                                              "{'M': 8, 'D': 4, 'L': 6}, the applied repo's")
    assert swapped.status_code == 200 and slot.scorer is not old and slot.model_dir == good
    assert [r.status_code for r in scored] == [200] * 40  # not one request failed across the swap
    assert all(r.json()["scores"] == pytest.approx(expected, abs=1e-7) for r in scored)


def test_a_reload_announced_by_one_worker_reaches_the_others(tmp_path):
    shared = tmp_path / "reload.json"
    loaded = []

    def loader(model_dir):
        if model_dir.endswith("bad"):
            raise ConfigError("model card has {'M': 8}")
        loaded.append(model_dir)
        return f"scorer of {model_dir}"

    a = ScorerSlot("scorer of m1", "m1", loader=loader, shared=shared)
    b = ScorerSlot("scorer of m1", "m1", loader=loader, shared=shared)
    assert b.catch_up() is False  # nothing announced yet
    a.reload("m2")
    assert json.loads(shared.read_text()) == {"generation": 1, "model_dir": "m2"}
    assert (b.catch_up(), b.scorer, b.model_dir, a.catch_up()) == (True, "scorer of m2", "m2", False)
    assert b.catch_up() is False  # once per announcement
    with pytest.raises(ConfigError):
        a.reload("m3-bad")  # refused before it is announced
    assert (a.scorer, b.catch_up(), loaded) == ("scorer of m2", False, ["m2", "m2"])


# --- several worker processes --------------------------------------------------------------------

@pytest.mark.slow
def test_two_workers_answer_and_sum_their_metrics(world):
    from prometheus_client.parser import text_string_to_metric_families

    port = free_port()
    env = {**os.environ, **world["repo"].env}
    env["LIBER_ADMIN_TOKEN"] = TOKEN
    proc = subprocess.Popen(
        [sys.executable, "-m", "liber_features.cli.main", "serve", "--model", str(world["model_dir"]),
         "--repo", str(world["repo"].root), "--port", str(port), "--workers", "2", "--no-access-log",
         "--deadline-ms", "5000"], env=env, stderr=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(600):
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        else:
            raise AssertionError("liber serve --workers 2 never answered /healthz")
        # A new connection per request: the kernel spreads them over the workers. Every worker's
        # series are in the files under PROMETHEUS_MULTIPROC_DIR, so any of them answers the sum.
        answers = [httpx.post(f"{url}/score", json=body(u), timeout=10) for u in ["1", "5", "8"] * 10]
        texts = [httpx.get(f"{url}/metrics", timeout=10).text for _ in range(6)]
        assert [r.status_code for r in answers] == [200] * 30
        totals = [sum(s.value for f in text_string_to_metric_families(t) for s in f.samples
                      if s.name == "liber_requests_total" and s.labels == {"endpoint": "/score", "status": "200"})
                  for t in texts]
        assert totals == [30] * 6
        # A reload reaches one worker; the other follows the announcement in the run directory.
        r = httpx.post(f"{url}/admin/reload", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60)
        assert r.status_code == 200 and r.json()["generation"] == 1
        seen: dict[int, int] = {}
        for _ in range(600):  # fresh connections until both workers answered with the new model
            h = httpx.get(f"{url}/healthz", timeout=10).json()
            seen[h["worker"]] = h["generation"]
            if len(seen) == 2 and set(seen.values()) == {1}:
                break
            time.sleep(0.05)
        assert len(seen) == 2 and set(seen.values()) == {1}, seen
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    assert "2 worker processes, deadline 5000 ms, at most 4 in flight + 256 waiting each" in err


def test_each_worker_listens_on_its_own_socket_of_one_port():
    """SO_REUSEPORT: n sockets on one port (port 0: the kernel's choice, shared), each accepting on
    its own; a port held without SO_REUSEPORT is refused naming it."""
    import socket

    from liber_features.serving.server import listening_sockets

    socks = listening_sockets("127.0.0.1", 0, 3)
    try:
        ports = {s.getsockname()[1] for s in socks}
        assert len(socks) == 3 and len(ports) == 1
        assert [s.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) for s in socks] == [1, 1, 1]
        # The kernel hands each new connection to one of them: 40 connections reach more than one.
        port = ports.pop()
        clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(40)]
        for s in socks:
            s.setblocking(False)
        accepted = []
        for s in socks:
            n = 0
            while True:
                try:
                    conn, _ = s.accept()
                except BlockingIOError:
                    break
                conn.close()
                n += 1
            accepted.append(n)
        for c in clients:
            c.close()
        assert sum(accepted) == 40 and sum(n > 0 for n in accepted) >= 2, accepted
    finally:
        for s in socks:
            s.close()
    held = socket.socket()
    held.bind(("127.0.0.1", 0))
    held.listen()
    try:
        with pytest.raises(ConfigError, match=rf"cannot listen on 127.0.0.1:{held.getsockname()[1]}: "):
            listening_sockets("127.0.0.1", held.getsockname()[1], 2)
    finally:
        held.close()
