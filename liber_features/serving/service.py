"""``liber serve``: the scorer behind HTTP (FastAPI + uvicorn).

- ``POST /score`` ``{user_id, item_ids[≤1000]}`` → scores in candidate order, plus how they were
  made (model, encoder_version, degraded, cold_start, unknown items, latency).
- ``GET /users/{user_id}/interests`` → what a person reads to see why a user is scored as they are:
  the online memory (partition count, latest summary and shift) and, with a ledger, every sealed
  partition with its seal time and texts. An unreachable online store answers 503 naming the
  store (as ``/score`` does with ``on_store_error="raise"``), never 500.
- ``GET /healthz`` (model loaded, store reachable) and ``GET /metrics`` (Prometheus).

Input is validated by pydantic (422 names what is wrong); a ``LiberError`` answers 503 with its
message, anything else 500 with a fixed message — never a Python traceback. A request is counted in
``liber_requests_total`` once, with the status it was answered with, after it was answered: by the
endpoint for a 200, by the error handler otherwise (labelled with the endpoint, never the raw path,
so a user id never becomes a series).

Logging (``configure_logging``, to stderr through the ``logging`` module): one line where the
service listens (``listening_line``), one access line per request — ``METHOD PATH STATUS MS ms``,
written by a plain ASGI wrapper after the response is sent — and a traceback for a 500.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from liber_features.errors import LiberError, OnlineStoreError
from liber_features.redact import redact_text
from liber_features.serving.scorer import LiberScorer

__all__ = ["AccessLog", "ScoreRequest", "ScoreResponse", "configure_logging", "create_app",
           "listening_line"]

log = logging.getLogger("liber.serve")
access_log = logging.getLogger("liber.serve.access")
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging(level: int = logging.INFO, stream=None, *, access: bool = True) -> logging.Handler:
    """Send ``liber.serve`` records (start, access lines unless not ``access``, errors) to stderr.

    Its own handler on its own logger (not ``basicConfig``): uvicorn's and the libraries' loggers
    keep their settings, and calling it twice does not double the lines.
    """
    import sys

    for old in [h for h in log.handlers if getattr(h, "liber_serve", False)]:
        log.removeHandler(old)
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    handler.liber_serve = True  # type: ignore[attr-defined]
    log.addHandler(handler)
    log.setLevel(level)
    log.propagate = False
    access_log.setLevel(logging.NOTSET if access else logging.WARNING)
    return handler


def listening_line(host: str, port: int, model_dir: str, model: str, repo: str, ledger: str | None) -> str:
    """The start line: where requests go, which model answers them, which repo and ledger it reads."""
    where = f"[{host}]" if ":" in host else host
    return (f"listening on http://{where}:{port} (model {model_dir}: {model}; repo {repo}; "
            f"ledger {ledger or 'none'})")


class AccessLog:
    """ASGI wrapper: one ``METHOD PATH STATUS MS ms`` line per HTTP request, after it is answered.

    Plain ASGI rather than ``@app.middleware("http")``: no extra task or response copy on the
    latency-critical path, only the status read off ``http.response.start``. Starlette places it
    inside its error middleware, so a request that raised is logged as a 500. The path is logged
    without its query string.
    """

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or not access_log.isEnabledFor(logging.INFO):
            await self.app(scope, receive, send)
            return
        t0, status = time.perf_counter(), [500]

        async def send_status(message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            access_log.info("%s %s %d %.1f ms", scope["method"], scope["path"], status[0],
                            (time.perf_counter() - t0) * 1000)
# Route template → the ``endpoint`` label of liber_requests_total.
ENDPOINTS = {"/score": "/score", "/users/{user_id}/interests": "/users/interests", "/healthz": "/healthz",
             "/metrics": "/metrics"}
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


class Partition(BaseModel):
    seq: int
    sealed_at: str
    n_events: int
    summary: str | None
    shift: str | None


class Interests(BaseModel):
    user_id: str
    partition_count: int
    latest_summary: str | None
    latest_shift: str | None
    encoder_version: str | None
    partitions: list[Partition]


def _metrics():
    from prometheus_client import CollectorRegistry, Counter, Histogram

    reg = CollectorRegistry()  # private: two apps in one process never share counters
    return reg, {
        "requests": Counter("liber_requests_total", "HTTP requests", ["endpoint", "status"], registry=reg),
        "latency": Histogram("liber_score_latency_seconds", "POST /score latency", registry=reg,
                             buckets=(0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.02, 0.05, 0.1, 0.5)),
        "degraded": Counter("liber_degraded_total", "responses scored without LIBER features", registry=reg),
    }


def _interests(scorer: LiberScorer, user_id: str, ledger) -> Interests:
    from liber_features.features.repo import LONG_TERM_VIEW

    store = getattr(scorer.fetcher, "store", None)
    online: dict[str, Any] = {}
    if store is not None:
        try:
            row = store.get_online_features(
                features=[f"{LONG_TERM_VIEW}:{f}" for f in ("partition_count", "latest_summary", "latest_shift",
                                                             "encoder_version")],
                entity_rows=[{"user_id": user_id}]).to_dict()
        except Exception as exc:  # Feast surfaces store failures as many unrelated types
            raise OnlineStoreError(f"{scorer.fetcher.where}: {type(exc).__name__}: {exc}") from exc
        online = {k: v[0] for k, v in row.items()}
    parts: list[Partition] = []
    if ledger is not None:
        parts = _ledger_partitions(ledger, user_id, scorer.card)
    return Interests(user_id=user_id, partition_count=int(online.get("partition_count") or len(parts)),
                     latest_summary=online.get("latest_summary"), latest_shift=online.get("latest_shift"),
                     encoder_version=online.get("encoder_version"), partitions=parts)


def _ledger_partitions(ledger, user_id: str, card) -> list[Partition]:
    from datetime import datetime

    from sqlalchemy import and_, select

    from liber_features.ledger.store import interests, partitions

    j = partitions.outerjoin(interests, and_(
        interests.c.partition_id == partitions.c.id, interests.c.prompt_version == card.prompt_version,
        interests.c.llm_id == card.llm_id, interests.c.status == "done"))
    with ledger.engine.connect() as conn:
        rows = conn.execute(select(partitions.c.seq, partitions.c.sealed_at_us, partitions.c.n_events,
                                   interests.c.summary, interests.c.shift).select_from(j)
                            .where(partitions.c.user_id == user_id).order_by(partitions.c.seq)).all()

    def iso(us: int) -> str:
        return datetime.fromtimestamp(us / 1e6, UTC).isoformat()

    return [Partition(seq=r.seq, sealed_at=iso(r.sealed_at_us), n_events=r.n_events, summary=r.summary,
                      shift=r.shift) for r in rows]


def create_app(scorer: LiberScorer, ledger=None):
    """The FastAPI app around one loaded scorer (and optionally the ledger, for interests), with
    its ``AccessLog``."""
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, PlainTextResponse
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    app = FastAPI(title="liber-features scorer", version="1",
                  description="LIBER-aware CTR scores for a user's candidate items.")
    registry, m = _metrics()
    model_name = f"{scorer.card.backbone}+liber:{scorer.card.liber}"

    def endpoint(request: Request) -> str:
        return ENDPOINTS.get(getattr(request.scope.get("route"), "path", ""), "other")

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
    async def score(req: ScoreRequest):
        # async + a direct JSONResponse: no threadpool hop and no re-validation of our own
        # response per request (the response_model still documents it in /openapi.json).
        # Scoring is ~1 ms of CPU, so one event loop per worker process is the right shape.
        t0 = time.perf_counter()
        res = scorer.score(req.user_id, req.item_ids)
        ms = (time.perf_counter() - t0) * 1000
        m["latency"].observe(ms / 1000)
        m["requests"].labels("/score", "200").inc()
        if res.degraded:
            m["degraded"].inc()
        return JSONResponse({"scores": res.scores.tolist(), "model": model_name,
                             "encoder_version": res.encoder_version, "degraded": res.degraded,
                             "cold_start": res.cold_start, "unknown_items": res.unknown_items,
                             "reason": res.reason, "latency_ms": round(ms, 3)})

    @app.get("/users/{user_id}/interests", response_model=Interests)
    def interests(user_id: Annotated[str, StringConstraints(min_length=1, max_length=128)]) -> Interests:
        out = _interests(scorer, user_id, ledger)  # a store failure answers 503 (liber_error)
        m["requests"].labels("/users/interests", "200").inc()
        return out

    @app.get("/healthz")
    def healthz():
        try:
            scorer.fetcher.fetch(["__liber_healthz__"])
            store_ok, detail = True, scorer.fetcher.where
        except LiberError as exc:
            store_ok, detail = False, str(exc)
        body = {"model_loaded": True, "model": model_name, "providers": scorer.providers,
                "store_reachable": store_ok, "store": detail}
        return JSONResponse(body, status_code=200 if store_ok else 503)

    @app.get("/metrics")
    def metrics():
        return PlainTextResponse(generate_latest(registry).decode(), media_type=CONTENT_TYPE_LATEST)

    app.add_middleware(AccessLog)
    return app
