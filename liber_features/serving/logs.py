"""``liber serve``'s logging: the start line, one access line per request, errors — to stderr.

Through the ``logging`` module under ``liber.serve`` (access lines under ``liber.serve.access``),
with a handler of its own, so uvicorn's and the libraries' loggers keep their settings.
"""

from __future__ import annotations

import logging
import time

from liber_features.serving.admission import STAMP

__all__ = ["LOG_FORMAT", "AccessLog", "access_log", "configure_logging", "listening_line", "log"]

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
        if scope["type"] == "http":
            scope[STAMP] = time.perf_counter()  # the deadline counts from here (admission)
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
