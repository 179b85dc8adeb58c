"""Swapping the served model without a failed request: load and check off to the side, then swap.

Why: restarting a worker to deploy a model drops the requests it holds and leaves a gap while
Feast and onnxruntime load. Here the new model directory is loaded by a ``loader`` (in
``liber serve``: ``LiberScorer.load`` with the running scorer's repo and config, which checks the
new card against the applied repo) while the old scorer keeps answering; only a scorer that loaded
and passed the check replaces it, in one attribute assignment. A request reads ``slot.scorer``
once, so it is scored wholly by the old model or wholly by the new one. A model that fails to load
or whose card disagrees is refused with the reason, and the old one keeps serving.

``kill -HUP`` on ``liber serve`` reloads the served model directory the same way (a deploy that
replaced the directory's files, or a symlink moved to a new one): :func:`reload_in_background`,
called from the process's SIGHUP handler. With several workers uvicorn's supervisor would answer
SIGHUP by restarting them all, dropping their open connections; ``serving.server`` overrides
that: the supervisor loads and checks the model itself, then announces it like a reload below.

With several worker processes, ``POST /admin/reload`` reaches one of them: that worker reloads,
then records the new model directory and a generation number in a small JSON file (written to a
temp name and renamed, so a reader never sees half of it) in the server's run directory. Every
worker watches that file (a ``stat`` every ``poll_s`` in a daemon thread) and reloads the same
way when the generation moves. A worker whose reload fails keeps its model and logs why.

The admin token is checked in ``serving.auth`` (constant time, never logged).
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from liber_features.errors import LiberError

__all__ = ["ScorerSlot", "reload_in_background"]

log = logging.getLogger("liber.serve")


class ScorerSlot:
    """The scorer in service now, and how to replace it (module docstring)."""

    def __init__(self, scorer: Any, model_dir: str | None = None,
                 loader: Callable[[str], Any] | None = None, shared: str | Path | None = None) -> None:
        self.scorer, self.model_dir, self.loader = scorer, model_dir, loader
        self.shared = Path(shared) if shared else None
        self.generation = 0
        self._lock = threading.Lock()  # one reload at a time per worker
        self._seen: int | None = None

    def reload(self, model_dir: str | None = None) -> Any:
        """Load ``model_dir`` (default: the one served), check it, swap; LiberError if refused."""
        if self.loader is None:
            raise LiberError("this server was started without a model loader: reload is not available")
        target = str(model_dir or self.model_dir)
        with self._lock:
            new = self.loader(target)  # raises (ConfigError: card vs repo) before anything changes
            self.scorer, self.model_dir = new, target  # the swap: one assignment
            self.generation += 1
            self._announce(target)
        return new

    def _announce(self, model_dir: str) -> None:
        if self.shared is None:
            return
        gen = self._read().get("generation", 0) + 1
        tmp = self.shared.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"generation": gen, "model_dir": model_dir}))
        os.replace(tmp, self.shared)
        self._seen = gen

    def _read(self) -> dict:
        try:
            return json.loads(self.shared.read_text()) if self.shared else {}
        except (OSError, ValueError):
            return {}

    def follow(self, poll_s: float = 0.5) -> threading.Thread | None:
        """Watch the shared file in a daemon thread; reload when another worker announced a model."""
        if self.shared is None or self.loader is None:
            return None
        self._seen = self._read().get("generation", 0)

        def watch() -> None:
            stop = threading.Event()
            while not stop.wait(poll_s):
                self.catch_up()

        t = threading.Thread(target=watch, name="liber-reload-watch", daemon=True)
        t.start()
        return t

    def catch_up(self) -> bool:
        """Reload if the shared file announces a generation this worker has not loaded; True if it did."""
        note = self._read()
        gen = note.get("generation", 0)
        if not gen or gen == self._seen:
            return False
        self._seen = gen
        try:
            with self._lock:
                self.scorer, self.model_dir = self.loader(note["model_dir"]), note["model_dir"]
                self.generation += 1
        except LiberError as exc:
            log.warning("reload of %s refused, the old model keeps serving: %s", note.get("model_dir"), exc)
            return False
        log.info("reloaded %s (announced by another worker)", note["model_dir"])
        return True


def reload_in_background(slot: ScorerSlot, why: str = "SIGHUP") -> threading.Thread:
    """Reload the slot's model directory in a daemon thread (a signal handler must return at once)."""
    def run() -> None:
        try:
            slot.reload()
        except LiberError as exc:
            log.warning("%s: reload of %s refused, the old model keeps serving: %s", why, slot.model_dir, exc)
            return
        log.info("%s: reloaded %s (generation %d)", why, slot.model_dir, slot.generation)

    t = threading.Thread(target=run, name="liber-reload", daemon=True)
    t.start()
    return t
