"""Deterministic stand-ins for the LLM and the text encoder, shipped for tests (as httpx ships
MockTransport): they implement ``interest.LLMLike`` / ``TextEncoderLike`` without torch or models.

Never used on the command line's path: ``liber encode`` only loads real models.
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["CountingLLM", "HashEncoder", "Generation", "fake_backends"]


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
