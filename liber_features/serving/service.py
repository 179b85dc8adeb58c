"""``liber serve``: the scorer behind HTTP (FastAPI + uvicorn).

- ``POST /score`` ``{user_id, item_ids[≤1000]}`` → scores in candidate order, plus how they were
  made (model, encoder_version, degraded, cold_start, unknown items, latency).
- ``GET /users/{user_id}/interests`` → what a person reads to see why a user is scored as they are:
  the online memory and, with a ledger, every sealed partition with its seal time and texts
  (``serving.interests``). An unreachable online store answers 503 naming the store, never 500.
- ``GET /healthz`` (model loaded, store reachable) and ``GET /metrics`` (Prometheus; with several
  worker processes, prometheus_client's multiprocess mode sums them, ``_exposition``).
- With a serve token (``--token``), ``/score`` and ``/users/…`` need ``Authorization: Bearer
  <token>`` (``serving.auth``: 401 without it, 403 with a wrong one); ``/healthz`` stays open.
- ``POST /admin/reload`` ``{model_dir?}`` with ``Authorization: Bearer <admin token>``: load and
  check a model off to the side, then swap (``liber_features.serving.reload``); 401 without the
  header, 403 with a wrong token or none configured, 409 naming why a model was refused.

Under load (``liber_features.serving.admission``): ``/score``'s fetch + score run in a worker
thread, never on the event loop; a request that cannot start at once (``max_in_flight``) or finish
by its deadline (``deadline_ms``, or ``X-Request-Timeout`` when shorter) is answered 503 with
``Retry-After``.

Input is validated by pydantic (422 names what is wrong); a ``LiberError`` answers 503 with its
message, anything else 500 with a fixed message — never a Python traceback. A request is counted in
``liber_requests_total`` once, with the status it was answered with, after it was answered: by the
endpoint for a 200, by the error handler otherwise (labelled with the endpoint, never the raw path,
so a user id never becomes a series).

Logging (``serving.logs``, to stderr through the ``logging`` module): one line where the service
listens, one access line per request — ``METHOD PATH STATUS MS ms``, written by a plain ASGI
wrapper after the response is sent — and a traceback for a 500.
"""

from __future__ import annotations

import os
import time
from typing import Annotated

import numpy as np
import orjson
from fastapi import Request  # at module level: FastAPI resolves the endpoints' annotations here
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from liber_features.errors import LiberError
from liber_features.redact import redact_text
from liber_features.serving.admission import TIMEOUT_HEADER, Admission, Limits, Shed, ShedEarly, started_at
from liber_features.serving.auth import RequireToken, token_matches
from liber_features.serving.interests import Interests, user_interests
from liber_features.serving.logs import AccessLog, log
from liber_features.serving.reload import ScorerSlot
from liber_features.serving.scorer import LiberScorer

__all__ = ["ScoreRequest", "ScoreResponse", "create_app"]

# Route template → the ``endpoint`` label of liber_requests_total.
ENDPOINTS = {"/score": "/score", "/users/{user_id}/interests": "/users/interests", "/healthz": "/healthz",
             "/metrics": "/metrics", "/admin/reload": "/admin/reload"}
Id = Annotated[str, StringConstraints(min_length=1, max_length=128, strict=True)]


class ScoreRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    user_id: Id
    item_ids: list[Id] = Field(min_length=1, max_length=1000)


class ScoreResponse(BaseModel):
    scores: list[float]
    model: str
    encoder_version: str | None
    degraded: bool
    cold_start: bool
    unknown_items: list[int]
    reason: str | None
    latency_ms: float


class ReloadRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    model_dir: str | None = Field(None, min_length=1, max_length=4096,
                                  description="model directory to serve (default: the one served now)")


def _metrics():
    """Our series on a private registry: two apps in one process never share counters."""
    from prometheus_client import CollectorRegistry, Counter, Histogram

    reg = CollectorRegistry()
    requests = Counter("liber_requests_total", "HTTP requests", ["endpoint", "status"], registry=reg)
    for status in ("200", "503"):  # /score's usual answers are series from the start (0 until counted)
        requests.labels("/score", status)
    return reg, {
        "requests": requests,
        "latency": Histogram("liber_score_latency_seconds", "POST /score latency", registry=reg,
                             buckets=(0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.02, 0.05, 0.1, 0.5)),
        "degraded": Counter("liber_degraded_total", "responses scored without LIBER features", registry=reg),
        "shed": Counter("liber_shed_total", "requests answered 503 for load (in flight, deadline)", registry=reg),
    }


def _exposition(registry, workers: bool) -> bytes:
    """The private registry's series, or with ``workers`` the sum over every worker process.

    ``workers`` is set by ``liber serve --workers N`` (``serving.server``), which points
    ``PROMETHEUS_MULTIPROC_DIR`` at its own run directory before any worker imports
    prometheus_client: each process then writes its values to files there, and any one of them
    answers the sum. The environment variable alone is no signal: importing Feast sets it to a
    directory of Feast's own in every process.
    """
    from prometheus_client import CollectorRegistry, generate_latest

    if workers:
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    return generate_latest(registry)


def _counted(m, endpoint: str, response):
    m["requests"].labels(endpoint, str(response.status_code)).inc()
    return response


def _model_name(scorer) -> str:
    return f"{scorer.card.backbone}+liber:{scorer.card.liber}"


def create_app(scorer: LiberScorer | ScorerSlot, ledger=None, *, limits: Limits | None = None,
               admin_token: str | None = None, token: str | None = None, multiprocess_metrics: bool = False):
    """The FastAPI app around a loaded scorer (or a :class:`ScorerSlot` that can swap it), optionally
    the ledger (for interests), with its ``AccessLog``. ``limits``: deadline and in-flight bound;
    ``admin_token``: enables ``/admin/reload`` (none: it answers 403); ``token``: required by
    ``/score`` and ``/users/…`` (``serving.auth``); ``multiprocess_metrics``: ``/metrics`` sums
    every worker process (``_exposition``)."""
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse, PlainTextResponse, Response
    from prometheus_client import CONTENT_TYPE_LATEST

    app = FastAPI(title="liber-features scorer", version="1",
                  description="LIBER-aware CTR scores for a user's candidate items.")
    registry, m = _metrics()
    slot = scorer if isinstance(scorer, ScorerSlot) else ScorerSlot(scorer)
    admission = Admission(limits)
    app.state.slot, app.state.admission = slot, admission

    def endpoint(request: Request) -> str:
        return ENDPOINTS.get(getattr(request.scope.get("route"), "path", ""), "other")

    @app.exception_handler(Shed)
    async def shed(request: Request, exc: Shed):
        m["requests"].labels(endpoint(request), "503").inc()
        m["shed"].inc()
        return JSONResponse({"error": str(exc)}, status_code=503,
                            headers={"Retry-After": str(admission.limits.retry_after_s)})

    @app.exception_handler(LiberError)
    async def liber_error(request: Request, exc: LiberError):
        log.warning("%s %s answered 503: %s", request.method, request.url.path, redact_text(str(exc)))
        response = JSONResponse({"error": str(exc)}, status_code=503)
        m["requests"].labels(endpoint(request), "503").inc()
        return response

    @app.exception_handler(Exception)
    async def any_error(request: Request, exc: Exception):
        log.exception("unhandled error on %s", request.url.path)  # the traceback stays in the log
        response = JSONResponse({"error": "internal error"}, status_code=500)
        m["requests"].labels(endpoint(request), "500").inc()
        return response

    @app.post("/score", response_model=ScoreResponse)
    async def score(req: ScoreRequest, request: Request):
        # The blocking fetch + score run in a worker thread (admission), never on this loop: one
        # slow store reply stalls only its own request. A direct JSONResponse: no re-validation
        # of our own response (the response_model still documents it in /openapi.json).
        t0 = started_at(request.scope)
        current = slot.scorer  # read once: a reload mid-request never mixes two models
        res = await admission.run(current.score, req.user_id, req.item_ids, t0=t0,
                                  budget_ms=admission.budget_ms(request.headers.get(TIMEOUT_HEADER)))
        ms = (time.perf_counter() - t0) * 1000
        m["latency"].observe(ms / 1000)
        m["requests"].labels("/score", "200").inc()
        if res.degraded:
            m["degraded"].inc()
        # orjson: json.dumps of the 100 scores' reprs was 10 % of the event loop's time under load
        # (py-spy, 2026-12-06). As float64, so the digits are Python's repr of each score.
        return Response(orjson.dumps(
            {"scores": res.scores.astype(np.float64), "model": _model_name(current),
             "encoder_version": res.encoder_version, "degraded": res.degraded, "cold_start": res.cold_start,
             "unknown_items": res.unknown_items, "reason": res.reason, "latency_ms": round(ms, 3)},
            option=orjson.OPT_SERIALIZE_NUMPY), media_type="application/json")

    @app.get("/users/{user_id}/interests", response_model=Interests)
    def interests(user_id: Annotated[str, StringConstraints(min_length=1, max_length=128)]) -> Interests:
        out = user_interests(slot.scorer, user_id, ledger)  # a store failure answers 503 (liber_error)
        m["requests"].labels("/users/interests", "200").inc()
        return out

    @app.get("/healthz")
    def healthz():
        current = slot.scorer
        try:
            current.fetcher.fetch(["__liber_healthz__"])
            store_ok, detail = True, current.fetcher.where
        except LiberError as exc:
            store_ok, detail = False, str(exc)
        body = {"model_loaded": True, "model": _model_name(current), "providers": current.providers,
                "store_reachable": store_ok, "store": detail, "worker": os.getpid(),
                "model_dir": slot.model_dir, "generation": slot.generation}
        return JSONResponse(body, status_code=200 if store_ok else 503)

    @app.get("/metrics")
    def metrics():
        return PlainTextResponse(_exposition(registry, multiprocess_metrics).decode(), media_type=CONTENT_TYPE_LATEST)

    @app.post("/admin/reload")
    async def admin_reload(request: Request, body: ReloadRequest | None = None):
        import anyio

        if admin_token is None:
            return _counted(m, "/admin/reload", JSONResponse(
                {"error": "admin endpoints are off: start with --admin-token or LIBER_ADMIN_TOKEN"}, 403))
        header = request.headers.get("authorization")
        if not header:
            return _counted(m, "/admin/reload", JSONResponse(
                {"error": "admin token required"}, 401, headers={"WWW-Authenticate": "Bearer"}))
        if not token_matches(header, admin_token):
            return _counted(m, "/admin/reload", JSONResponse({"error": "wrong admin token"}, 403))
        target = body.model_dir if body is not None else None
        try:
            new = await anyio.to_thread.run_sync(slot.reload, target)  # loads + checks off the loop
        except LiberError as exc:
            log.warning("reload refused, the old model keeps serving: %s", redact_text(str(exc)))
            return _counted(m, "/admin/reload", JSONResponse(
                {"error": f"refused, the old model keeps serving: {exc}"}, 409))
        log.info("reloaded %s (%s)", slot.model_dir, _model_name(new))
        return _counted(m, "/admin/reload", JSONResponse(
            {"model": _model_name(new), "model_dir": slot.model_dir, "generation": slot.generation}))

    # Innermost first: AccessLog (added last) wraps RequireToken and ShedEarly, so refused and shed
    # requests are logged too; the token is checked before a queue slot is taken.
    app.add_middleware(ShedEarly, admission=admission, paths=frozenset({"/score"}),
                       on_shed=lambda: (m["requests"].labels("/score", "503").inc(), m["shed"].inc()))
    if token is not None:
        app.add_middleware(RequireToken, token=token, prefixes=("/score", "/users/"), on_refused=lambda path, status:
                           m["requests"].labels("/score" if path == "/score" else "/users/interests",
                                                str(status)).inc())
    app.add_middleware(AccessLog)
    return app
