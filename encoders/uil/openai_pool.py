"""A pool of OpenAI-compatible LLM servers (vLLM replicas): ``openai:URL1,URL2,...#model``.

Prompts are spread round-robin over the servers that answer, each with at most
``max_concurrency`` requests in flight. A server whose requests fail after its retries
(``LLMUnavailable``: refused, reset, timeouts, 429/5xx) is set aside and its unanswered prompts go
to the others, so a replica dying mid-batch costs only the requests it held; it is asked again
``revive_s`` later. Only when no server answers does the batch fail (the encode run stops, as
with one server).

Identity. The ledger keys every output by the LLM's id, so the id must name what generates, not
where: ``openai:<model>`` and, when the server reports a different ``root`` (vLLM: the checkpoint
it loaded, e.g. a snapshot path with its revision), ``openai:<model>@<root>``, read from each
server's ``GET /v1/models``. Adding or removing a replica re-encodes nothing; a server that
reports another model or root is refused, at start or when it comes back. A server without
``/v1/models`` (HTTP 404) is taken at the model name requested.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import httpx

from encoders.uil.generation import DecodingConfig, Generation, Prompt, check_prompts
from encoders.uil.openai_llm import OpenAICompatLLM
from liber_features.errors import ConfigError, LLMUnavailable
from liber_features.redact import redact_text

__all__ = ["OpenAIPool"]


@dataclass
class _Server:
    client: OpenAICompatLLM
    models_url: str
    slots: threading.Semaphore
    down_until: float = 0.0  # monotonic time; 0: up
    errors: list[str] = field(default_factory=list)


class OpenAIPool:
    """``generate`` over several OpenAI-compatible servers serving one model (module docstring).

    ``retries`` / ``backoff_s`` are each server's own (a refused connection is retried that many
    times before the server is set aside); ``max_concurrency`` is per server.
    """

    def __init__(self, base_urls: list[str], model: str, *, api_key: str | None = None,
                 timeout_s: float = 60, max_concurrency: int = 4, retries: int = 2, backoff_s: float = 0.25,
                 decoding: DecodingConfig | None = None, revive_s: float = 30.0) -> None:
        if not base_urls:
            raise ConfigError("an openai: LLM pool needs at least one server URL")
        self.model, self.revive_s, self.max_concurrency = model, revive_s, max_concurrency
        self.servers = [_Server(OpenAICompatLLM(url, model, api_key=api_key, timeout_s=timeout_s,
                                                max_concurrency=max_concurrency, retries=retries,
                                                decoding=decoding, backoff_s=backoff_s),
                                "", threading.Semaphore(max_concurrency)) for url in base_urls]
        for s in self.servers:
            s.models_url = s.client.url.removesuffix("/chat/completions") + "/models"
        self.config = self.servers[0].client.config
        self.decoding = self.servers[0].client.decoding
        self.special_tokens: tuple[str, ...] = ()  # the servers' tokenizer is unknown here
        self._next = 0  # round-robin position, kept across calls so batches spread evenly
        self._lock = threading.Lock()
        ids = {s.client.shown_url: self._identity(s) for s in self.servers}
        known = {i for i in ids.values() if i is not None}
        if not known:
            raise LLMUnavailable("no server of the LLM pool answers GET /v1/models: "
                                 + "; ".join(f"{s.client.shown_url}: {s.errors[-1]}" for s in self.servers))
        if len(known) > 1:
            raise ConfigError("the LLM pool's servers serve different models: "
                              + ", ".join(f"{url} → {i}" for url, i in ids.items() if i is not None))
        self.llm_id = known.pop()
        for s in self.servers:
            if ids[s.client.shown_url] is None:
                s.down_until = time.monotonic() + revive_s

    def _identity(self, s: _Server) -> str | None:
        """The id ``s`` reports for ``self.model`` (module docstring); None when it cannot be reached."""
        try:
            r = s.client._client.get(s.models_url)
        except httpx.TransportError as exc:
            s.errors.append(redact_text(repr(exc))[:200])
            return None
        if r.status_code == 404:
            return f"openai:{self.model}"
        try:
            r.raise_for_status()
            cards = {c["id"]: c for c in r.json()["data"]}
        except (httpx.HTTPStatusError, KeyError, TypeError, ValueError) as exc:
            s.errors.append(redact_text(repr(exc))[:200])
            return None
        if self.model not in cards:
            raise ConfigError(f"{s.client.shown_url} serves {', '.join(sorted(cards)) or 'no model'}, "
                              f"not {self.model!r}")
        root = cards[self.model].get("root")
        return f"openai:{self.model}" + (f"@{root}" if root and root != self.model else "")

    def _live(self) -> list[_Server]:
        """Servers up now; one set aside long enough is asked again, and kept only if it still
        serves this pool's model (an id check: a replica replaced by another model is refused)."""
        now, live = time.monotonic(), []
        for s in self.servers:
            if s.down_until and now >= s.down_until:
                try:
                    same = self._identity(s) == self.llm_id
                except ConfigError:
                    same = False
                s.down_until = 0.0 if same else now + self.revive_s
            if not s.down_until:
                live.append(s)
        return live

    def _one(self, s: _Server, messages: Prompt) -> Generation:
        with s.slots:  # at most max_concurrency in flight per server
            if s.down_until:  # it failed while this prompt waited: do not knock again
                raise LLMUnavailable(f"{s.client.shown_url} is set aside")
            try:
                return s.client._one(messages)
            except LLMUnavailable as exc:  # gone or drowning: set aside, the others take its prompts
                s.errors.append(redact_text(str(exc))[:200])
                s.down_until = s.down_until or time.monotonic() + self.revive_s
                raise

    def generate(self, prompts: list[Prompt]) -> list[Generation]:
        check_prompts(prompts)
        out: list[Generation | None] = [None] * len(prompts)
        todo = list(range(len(prompts)))
        while todo:
            live = self._live()
            if not live:
                raise LLMUnavailable("no server of the LLM pool answers: " + "; ".join(
                    f"{s.client.shown_url}: {s.errors[-1] if s.errors else 'down'}" for s in self.servers))
            with self._lock:
                start, self._next = self._next, self._next + len(todo)
            assigned = [(i, live[(start + k) % len(live)]) for k, i in enumerate(todo)]
            with ThreadPoolExecutor(max_workers=self.max_concurrency * len(live)) as pool:
                futures = [(i, pool.submit(self._one, s, prompts[i])) for i, s in assigned]
            todo = []
            for i, fut in futures:
                try:
                    out[i] = fut.result()
                except LLMUnavailable:  # its server was set aside (``_one``): another one takes it
                    todo.append(i)
        return out  # type: ignore[return-value]

    def close(self) -> None:
        for s in self.servers:
            s.client.close()
