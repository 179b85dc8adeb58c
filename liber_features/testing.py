"""Deterministic stand-ins for the LLM and the text encoder, shipped for tests (as httpx ships
MockTransport): they implement ``uil.types.LLMLike`` / ``TextEncoderLike`` without torch or models,
and :class:`FakeOpenAIServer` stands in for a vLLM / OpenAI-compatible endpoint over real HTTP.

Never used on the command line's path: ``liber encode`` only loads real models.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np

__all__ = ["CountingLLM", "FakeOpenAIServer", "Generation", "HashEncoder", "ScriptedLLM", "event_log", "fake_backends"]


@dataclass
class Generation:
    text: str
    prompt_tokens: int
    completion_tokens: int


class CountingLLM:
    """Answers each prompt with a digest of it (same prompt → same text, in any process).

    With ``calls_file`` every answered prompt is appended as one line ``<pid> <kind> <digest>``
    (O_APPEND writes of one line are atomic), so a test can count the calls of many processes,
    killed ones included. ``delay_s`` sleeps before each answer, to land a kill mid-batch.
    ``cpu_s`` burns that much CPU time of the calling thread per answer, like a model on CPU: a
    fixed cost per call that only more cores (processes, actors) can spread, not more threads.
    """

    def __init__(self, llm_id: str = "fake:counting@1", *, calls_file: str | Path | None = None,
                 delay_s: float = 0.0, cpu_s: float = 0.0) -> None:
        self.llm_id = llm_id
        self.decoding = {"max_new_tokens": 8}
        self.calls_file = Path(calls_file) if calls_file else None
        self.delay_s = delay_s
        self.cpu_s = cpu_s
        self.calls = 0

    def generate(self, prompts: list[list[dict[str, str]]]) -> list[Generation]:
        out = []
        for messages in prompts:
            body = messages[-1]["content"]
            if self.delay_s:
                time.sleep(self.delay_s)
            if self.cpu_s:
                # CPU time, not wall time: on an oversubscribed machine a call takes longer,
                # as a real model's would, instead of hiding the contention.
                until = time.thread_time() + self.cpu_s
                while time.thread_time() < until:
                    pass
            kind = "shift" if "Earlier interests: " in body else "summary"
            digest = hashlib.sha256(f"{self.llm_id}\x1f{body}".encode()).hexdigest()[:12]
            self.calls += 1
            if self.calls_file is not None:
                fd = os.open(self.calls_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
                try:
                    os.write(fd, f"{os.getpid()} {kind} {digest}\n".encode())
                finally:
                    os.close(fd)
            out.append(Generation(f"{kind} {digest}", len(body.split()), 2))
        return out


class ScriptedLLM:
    """Answers with ``reply(kind, n, body)`` (override it), records every prompt it answered, and
    raises ``EncoderError`` for any prompt that contains ``fail_on`` — a backend failing mid-batch.

    ``kind`` is ``summary`` or ``shift``; ``n`` counts answered prompts from 1 (in this object).
    """

    llm_id = "fake:scripted@1"

    def __init__(self, fail_on: str | None = None) -> None:
        self.decoding = {"max_new_tokens": 8}
        self.fail_on = fail_on
        self.prompts: list[str] = []

    def reply(self, kind: str, n: int, body: str) -> str:
        return f"{kind}#{n}"

    def tokens(self, body: str) -> tuple[int, int]:
        return len(body.split()), 3

    def generate(self, prompts: list[list[dict[str, str]]]) -> list[Generation]:
        from liber_features.errors import EncoderError

        out = []
        for messages in prompts:
            body = messages[-1]["content"]
            if self.fail_on and self.fail_on in body:
                raise EncoderError("backend exploded")
            self.prompts.append(body)
            kind = "shift" if "Earlier interests: " in body else "summary"
            out.append(Generation(self.reply(kind, len(self.prompts), body), *self.tokens(body)))
        return out


class HashEncoder:
    """Text → ``dim`` float32 values from its SHA-256 (deterministic, distinct per text)."""

    def __init__(self, encoder_id: str = "fake:hash@1", dim: int = 4) -> None:
        self.encoder_id, self.dim = encoder_id, dim

    def encode(self, texts: list[str]) -> np.ndarray:
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        for i, t in enumerate(texts):
            raw = hashlib.sha256(t.encode()).digest() * (self.dim * 4 // 32 + 1)
            out[i] = np.frombuffer(raw[:self.dim * 4], dtype=np.uint32) / np.float32(2**32)
        return out


def fake_backends(llm_id: str = "fake:counting@1", *, calls_file: str | Path | None = None,
                  delay_s: float = 0.0, cpu_s: float = 0.0, dim: int = 4) -> tuple[CountingLLM, HashEncoder]:
    """A ``CountingLLM`` and a ``HashEncoder``: a factory for ``rayjob.run_ray_encode`` (pass it
    with ``functools.partial``; it is pickled by reference and called inside each actor)."""
    return CountingLLM(llm_id, calls_file=calls_file, delay_s=delay_s, cpu_s=cpu_s), HashEncoder(dim=dim)


def event_log(users: int, per_user: int, *, items: int = 30, item_stride: int = 1, user_spacing_s: int = 100,
              source: str = "mem"):
    """A synthetic, already-loaded event log: user ``u{u}``'s ``i``-th event rates item
    ``i{(u * item_stride + i) % items}`` at second ``1_000_000 + user_spacing_s * u + i``, with ratings
    cycling 1–5, and a catalog of ``items`` titles — what ``events.load_events`` would return."""
    import pandas as pd

    from liber_features.ingest.events import LoadedEvents

    rows = [(f"u{u}e{i}", f"u{u}", f"i{(u * item_stride + i) % items}", 1_000_000 + user_spacing_s * u + i,
             1.0 + (i % 5)) for u in range(users) for i in range(per_user)]
    df = pd.DataFrame(rows, columns=["event_id", "user_id", "item_id", "ts", "rating"])
    df["ts"] = pd.to_datetime(df["ts"], unit="s", utc=True).astype("datetime64[us, UTC]")
    df["row"] = range(len(df))
    cat = pd.DataFrame({"item_id": [f"i{i}" for i in range(items)],
                        "title": [f"Movie {i}" for i in range(items)], "categories": ["Drama"] * items})
    q = pd.DataFrame(columns=["source", "row", "field", "reason", "raw"])
    return LoadedEvents(source, "csv", df, cat, q, len(df), 0)


def _echo(user: str) -> tuple[str, int]:
    return f" echo:{user} ", len(user)


class FakeOpenAIServer:
    """A local OpenAI-compatible ``/v1/chat/completions`` endpoint (what vLLM serves), as a context
    manager. ``reply(user_message) -> (text, prompt_tokens)`` answers (default: `` echo:<msg> ``);
    the first ``fail_first`` requests get HTTP 500. It records the request bodies, the
    Authorization headers and the peak number of requests in flight.

    ``GET /v1/models`` lists ``model`` (vLLM's card: ``id``, and ``root`` when given). With
    ``die_after`` n the server dies on its n-th completion request: it stops listening and drops
    that request's connection unanswered, as a vLLM replica killed mid-request would.
    """

    def __init__(self, fail_first: int = 0, delay_s: float = 0.0,
                 reply: Callable[[str], tuple[str, int]] = _echo, *, model: str = "tiny",
                 root: str | None = None, die_after: int | None = None) -> None:
        self.fail_first, self.delay_s, self.reply = fail_first, delay_s, reply
        self.model, self.root, self.die_after = model, root, die_after
        self.lock = threading.Lock()
        self.in_flight = self.peak = self.seen = self.answered = self.model_queries = 0
        self.dead = False
        self.bodies: list[dict] = []
        self.auth: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:  # keep test output clean
                pass

            def _send(self, status: int, payload: dict) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                if self.path.rstrip("/") != "/v1/models":
                    self._send(404, {"error": "not found"})
                    return
                with outer.lock:
                    outer.model_queries += 1
                card = {"id": outer.model, "object": "model", "owned_by": "fake"}
                if outer.root is not None:
                    card["root"] = outer.root
                self._send(200, {"object": "list", "data": [card]})

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with outer.lock:
                    outer.seen += 1
                    fail = outer.seen <= outer.fail_first
                    die = outer.die_after is not None and outer.seen >= outer.die_after
                    outer.in_flight += 1
                    outer.peak = max(outer.peak, outer.in_flight)
                    outer.bodies.append(body)
                    outer.auth.append(self.headers.get("Authorization", ""))
                if die:
                    outer.kill()  # no new connections; this request is dropped unanswered
                    with outer.lock:
                        outer.in_flight -= 1
                    self.close_connection = True
                    self.connection.close()
                    return
                time.sleep(outer.delay_s)
                with outer.lock:
                    outer.in_flight -= 1
                    outer.answered += 1
                text, prompt_tokens = outer.reply(body["messages"][-1]["content"])
                self._send(500 if fail else 200, {"choices": [{"message": {"role": "assistant", "content": text}}],
                                                  "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": 3}})

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def kill(self) -> None:
        """Stop listening now (idempotent): later connections are refused."""
        with self.lock:
            if self.dead:
                return
            self.dead = True
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> FakeOpenAIServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()
