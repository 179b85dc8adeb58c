"""Running ``liber serve`` on every core: N uvicorn worker processes, each with its own scorer.

Why processes: fetch + score is ~1 ms of CPU under the GIL, so one process serves one core's
worth. uvicorn's supervisor starts ``workers`` processes that share the listening socket; each
calls :func:`app_from_env` (an app *factory* named by import string, as uvicorn requires for
more than one worker) and so loads its own ``LiberScorer``: its own onnxruntime session, Feast
store and Redis connections, nothing mutable shared. The parent loads the model once first, so a
bad model or an unreachable repo fails the command before any worker starts.

Each worker has a listening socket of its own, all bound to the same port with ``SO_REUSEPORT``
(Linux: the kernel spreads new connections over them by a hash of the client's address and port).
Why not uvicorn's one shared socket: every idle worker is woken by a new connection and the first
accepts *every* pending one (asyncio and libuv accept until the queue is empty), so the connections
a client opens at once land unevenly. Measured by bench_serve_load (2026-12-06, 32 wrk connections,
2 workers): 9 and 23 connections per worker, then the busy worker's queue gave p99 106 ms and 630
shed requests at 1,648 req/s, where an even split gives p99 28 ms at 2,476 req/s. Kept connections
never move, so an uneven split lasts as long as they do.

The parent creates a run directory (removed on exit) holding: the workers' settings
(``serve.json``, mode 0600: it may carry the ledger URL and the tokens), prometheus_client's
multiprocess files (``PROMETHEUS_MULTIPROC_DIR``: ``/metrics`` answers the sum over workers) and
the reload announcement that lets one worker's ``/admin/reload`` reach them all
(``liber_features.serving.reload``).
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from liber_features.errors import ConfigError
from liber_features.serving.admission import Limits
from liber_features.serving.reload import ScorerSlot, reload_in_background

__all__ = ["CONFIG_ENV", "ServeConfig", "app_from_env", "build_app", "load_scorer", "serve"]

CONFIG_ENV = "LIBERSERVE_RUN_CONFIG"  # path of serve.json, for the workers (not a user setting)


class ServeConfig(BaseModel):
    """Everything a worker needs to build the same app as its siblings."""

    model_config = ConfigDict(extra="forbid")

    model_dir: str
    repo: str = "feature_repo"
    fetch: Literal["auto", "redis", "feast"] = "auto"
    timeout_ms: float = Field(50.0, gt=0)
    on_store_error: Literal["raise", "degrade"] = "degrade"
    store_retry_ms: float = Field(250.0, ge=0)
    limits: Limits = Field(default_factory=Limits)
    ledger_url: SecretStr | None = None
    ledger_schema: str | None = None
    admin_token: SecretStr | None = None
    token: SecretStr | None = None
    access_log: bool = True
    reload_file: str | None = None
    multiprocess_metrics: bool = False

    def fetch_timeout_ms(self) -> float:
        """The store's socket timeout: at most half the deadline, so a degraded answer still fits in it."""
        return min(self.timeout_ms, self.limits.deadline_ms / 2)


def load_scorer(config: ServeConfig, model_dir: str | None = None):
    """``LiberScorer.load`` with the served repo and settings (checks the card against the repo)."""
    from liber_features.serving.scorer import LiberScorer, ScorerConfig

    return LiberScorer.load(model_dir or config.model_dir, config.repo, config=ScorerConfig(
        fetch=config.fetch, timeout_ms=config.fetch_timeout_ms(), on_store_error=config.on_store_error,
        retry_ms=config.store_retry_ms))


def build_app(config: ServeConfig, scorer=None):
    """The app of one worker: its scorer (loaded here unless given) in a reloadable slot."""
    from liber_features.serving.service import create_app

    ledger = None
    if config.ledger_url is not None:
        from liber_features.ledger.store import Ledger  # the parent checked it exists (liber serve)

        ledger = Ledger(config.ledger_url.get_secret_value(), schema=config.ledger_schema)
    slot = ScorerSlot(scorer or load_scorer(config), config.model_dir,
                      loader=lambda d: load_scorer(config, d), shared=config.reload_file)
    slot.follow()
    return create_app(slot, ledger, limits=config.limits, admin_token=_plain(config.admin_token),
                      token=_plain(config.token), multiprocess_metrics=config.multiprocess_metrics)


def app_from_env():
    """uvicorn's factory in each worker process: the config the parent wrote, then :func:`build_app`."""
    import gc

    from liber_features.serving.logs import configure_logging

    config = ServeConfig.model_validate_json(Path(os.environ[CONFIG_ENV]).read_text())
    configure_logging(access=config.access_log)
    app = build_app(config)
    gc.collect()  # what is loaded lives as long as the worker: keep full collections off it
    gc.freeze()
    return app


def serve(config: ServeConfig, host: str, port: int, workers: int) -> None:
    """Write the run directory, start uvicorn with ``workers`` processes, clean up on exit."""
    import uvicorn

    run_dir = Path(tempfile.mkdtemp(prefix="liber-serve-"))
    try:
        metrics = run_dir / "metrics"
        metrics.mkdir()
        config = config.model_copy(update={"reload_file": str(run_dir / "reload.json"),
                                           "multiprocess_metrics": True})
        path = run_dir / "serve.json"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(_dump(config))
        os.environ[CONFIG_ENV] = str(path)
        # Both names: prometheus_client reads the second; Feast (imported by the workers) keeps
        # a directory already named instead of making its own.
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = os.environ["PROMETHEUS_MULTIPROCESS_DIR"] = str(metrics)
        # uvloop + httptools when installed (uvicorn's "auto"). uvicorn's access log stays off:
        # ours (serving.logs.AccessLog) has the time taken. What uvicorn.run does for workers > 1,
        # with our supervisor (SIGHUP reloads instead of restarting every worker).
        ucfg = uvicorn.Config("liber_features.serving.server:app_from_env", factory=True, host=host,
                              port=port, workers=workers, log_level="warning", access_log=False)
        slot = ScorerSlot(None, config.model_dir, loader=lambda d: load_scorer(config, d),
                          shared=config.reload_file)
        _supervisor(ucfg, slot, listening_sockets(host, port, workers)).run()
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


def listening_sockets(host: str, port: int, n: int, backlog: int = 2048) -> list[socket.socket]:
    """``n`` listening sockets on ``host:port``, one per worker, sharing the port with ``SO_REUSEPORT``.

    Port 0 binds the first to a free port and the others to the same one. Where the platform has no
    ``SO_REUSEPORT`` it is one socket that every worker shares (uvicorn's own way).
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    reuse = hasattr(socket, "SO_REUSEPORT")
    out: list[socket.socket] = []
    try:
        for _ in range(n if reuse else 1):
            sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
            out.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((host, port))
            port = sock.getsockname()[1]  # port 0: the others join the one the kernel chose
            sock.listen(backlog)
            sock.set_inheritable(True)  # handed to the spawned workers
    except OSError as exc:
        for sock in out:
            sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    return out


def _supervisor(ucfg, slot: ScorerSlot, sockets: list[socket.socket]):
    """uvicorn's process supervisor with one listening socket per worker (module docstring), whose
    SIGHUP loads ``slot``'s model, checks it and announces it.

    The workers follow the announcement (``ScorerSlot.follow``) and swap without dropping a
    connection; a model that fails the check is refused in the supervisor and never reaches them.
    A worker that dies is replaced on its own socket.
    """
    from uvicorn.supervisors import Multiprocess
    from uvicorn.supervisors import multiprocess as mp

    class Supervisor(Multiprocess):
        def handle_hup(self) -> None:
            reload_in_background(slot)

        def init_processes(self) -> None:
            for i in range(self.processes_num):
                self.processes.append(self._start(i))

        def keep_subprocess_alive(self) -> None:
            # uvicorn's own, except that a worker that died is replaced on its own socket.
            for i, process in enumerate(self.processes):
                if self.should_exit.is_set():
                    return
                if process.is_alive(timeout=self.config.timeout_worker_healthcheck):
                    continue
                process.kill()  # hung: kill it
                process.join()
                if process.exitcode == mp.STARTUP_FAILURE:  # would fail the same way again
                    mp.logger.error(f"Child process [{process.pid}] failed to start, stopping the parent process.")
                    self.should_exit.set()
                    return
                mp.logger.info(f"Child process [{process.pid}] died")
                self.processes[i] = self._start(i)

        def _start(self, i: int):
            process = mp.Process(self.config, [sockets[i % len(sockets)]])
            process.start()
            return process

    return Supervisor(ucfg, sockets=sockets[:1])


def _dump(config: ServeConfig) -> str:
    """JSON with the secrets' plain text (the file is the workers' own, mode 0600)."""
    import json

    data = config.model_dump(mode="json")
    for key in ("ledger_url", "admin_token", "token"):
        data[key] = _plain(getattr(config, key))
    return json.dumps(data)


def _plain(secret: SecretStr | None) -> str | None:
    return secret.get_secret_value() if secret is not None else None
