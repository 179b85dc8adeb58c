"""An OpenAI-compatible LLM server as a backend (vLLM, llama.cpp, ...): ``openai:<url>#<model>``.

Many calls in flight from a thread pool, retried with backoff on what a busy or restarting server
answers (connection errors, timeouts, 429, 5xx); the id names model and host, never credentials.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
import tenacity

from encoders.uil.generation import DecodingConfig, Generation, Prompt, check_prompts
from liber_features.errors import ConfigError, EncoderError, LLMUnavailable
from liber_features.redact import redact_text, redact_url, strip_credentials

__all__ = ["OpenAICompatLLM"]


def _retryable(exc: BaseException) -> bool:
    if isinstance(exc, httpx.HTTPStatusError):
        return exc.response.status_code == 429 or exc.response.status_code >= 500
    return isinstance(exc, httpx.TransportError)  # refused, reset, timeouts


class OpenAICompatLLM:
    """``POST {base_url}/v1/chat/completions`` on an OpenAI-compatible server (vLLM, llama.cpp, ...).

    Up to ``max_concurrency`` requests in flight; connection errors, timeouts, 429 and 5xx are
    retried ``retries`` times with exponential backoff (``backoff_s``, 2×, 4×, ... capped at 30 s),
    then :class:`LLMUnavailable` names the URL. ``repetition_penalty`` and ``min_tokens`` are vLLM
    extensions: they are sent only when not neutral (set ``repetition_penalty=1.0`` for OpenAI).
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str | None = None,
        timeout_s: float = 60,
        max_concurrency: int = 4,
        retries: int = 4,
        decoding: DecodingConfig | None = None,
        backoff_s: float = 0.5,
    ) -> None:
        if max_concurrency < 1 or retries < 0:
            raise ConfigError("max_concurrency must be ≥ 1 and retries ≥ 0")
        base = base_url.rstrip("/")
        base = base.removesuffix("/v1")  # accept both spellings
        self.url = f"{base}/v1/chat/completions"
        try:
            _ = httpx.URL(self.url).port  # a bad port or host fails here, as one ConfigError line
        except (httpx.InvalidURL, ValueError, TypeError) as exc:
            raise ConfigError(f"malformed LLM server URL {redact_url(base_url)!r}: "
                              f"{redact_text(str(exc))}") from None
        # What messages show: the password masked. The id names model and host only: never
        # credentials, and unchanged when a password rotates.
        self.shown_url = redact_url(self.url)
        self.model = model
        self.config = decoding or DecodingConfig()
        self.decoding = self.config.recorded()
        self.llm_id = f"openai:{strip_credentials(base)}/{model}"
        self.special_tokens: tuple[str, ...] = ()  # the server's tokenizer is unknown here
        self.max_concurrency = max_concurrency
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.Client(timeout=timeout_s, headers=headers)
        self._retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception(_retryable),
            stop=tenacity.stop_after_attempt(retries + 1),
            wait=tenacity.wait_exponential(multiplier=backoff_s, max=30),
            reraise=True,
        )

    def _body(self, messages: Prompt) -> dict:
        c = self.config
        body = {"model": self.model, "messages": messages, "max_tokens": c.max_new_tokens,
                "temperature": c.temperature if c.do_sample else 0.0}
        if c.repetition_penalty != 1.0:
            body["repetition_penalty"] = c.repetition_penalty
        if c.min_new_tokens:
            body["min_tokens"] = c.min_new_tokens
        return body

    def _post(self, messages: Prompt) -> dict:
        response = self._client.post(self.url, json=self._body(messages))
        response.raise_for_status()
        return response.json()

    def _one(self, messages: Prompt) -> Generation:
        try:
            data = self._retrying.copy()(self._post, messages)  # a copy per thread: own state
        except httpx.HTTPStatusError as exc:
            status = exc.response.status_code
            if _retryable(exc):
                raise LLMUnavailable(f"{self.shown_url} answered HTTP {status} after retries") from exc
            raise EncoderError(f"{self.shown_url} refused the request: HTTP {status}: "
                               f"{redact_text(exc.response.text[:200])}") from exc
        except httpx.TransportError as exc:
            raise LLMUnavailable(f"cannot reach {self.shown_url} after retries: "
                                 f"{redact_text(repr(exc))}") from exc
        try:
            usage = data["usage"]
            return Generation(
                text=(data["choices"][0]["message"]["content"] or "").strip(),
                prompt_tokens=int(usage["prompt_tokens"]),
                completion_tokens=int(usage["completion_tokens"]),
            )
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise EncoderError(f"{self.shown_url} returned an unexpected body (needs choices and usage): "
                               f"{redact_text(repr(exc))}") from exc

    def generate(self, prompts: list[Prompt]) -> list[Generation]:
        check_prompts(prompts)
        with ThreadPoolExecutor(max_workers=self.max_concurrency) as pool:
            return list(pool.map(self._one, prompts))  # map keeps the prompts' order

    def close(self) -> None:
        self._client.close()
