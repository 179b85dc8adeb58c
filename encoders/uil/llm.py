"""LLM backends behind one small protocol: chat prompts in, texts + token counts out.

The torch-free job code (UIL in ``liber_features``) only sees :class:`LLM`; torch and transformers
are imported inside :class:`TransformersLLM`, so importing this module stays cheap.

``llm_id`` names the weights (a content hash, see ``checkpoints.fingerprint``) and ``decoding`` the
settings; both are recorded with every output, so a ledger row says what wrote it.

Spec grammar of :func:`load_llm`::

    None | "" | "smollm2"        the packaged SmolLM2-135M-Instruct (cached plain checkpoint)
    "openai:<base_url>#<model>"  an OpenAI-compatible server, e.g. openai:http://gpu1:8000#Qwen/Qwen2.5-7B-Instruct
                                 (API key from $LIBER_LLM_API_KEY, else $OPENAI_API_KEY)
    "<dir>"                      a local transformers checkpoint folder
    "<dir>/<file>.gguf"          a GGUF file, loaded through transformers (dequantised)
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import httpx
import tenacity
from pydantic import BaseModel, ConfigDict, Field, model_validator

from encoders.uil import checkpoints
from liber_features.errors import ConfigError, EncoderError, LLMUnavailable
from liber_features.redact import redact_text, redact_url, strip_credentials

__all__ = ["LLM", "DecodingConfig", "Generation", "OpenAICompatLLM", "TransformersLLM", "load_llm"]

Prompt = list[dict[str, str]]  # chat messages: [{"role": "system" | "user" | "assistant", "content": ...}]
_ROLES = {"system", "user", "assistant"}


@dataclass(frozen=True)
class Generation:
    """One completion; token counts as the backend's tokenizer saw them (pads excluded)."""

    text: str
    prompt_tokens: int
    completion_tokens: int


@runtime_checkable
class LLM(Protocol):
    llm_id: str
    decoding: dict

    def generate(self, prompts: list[Prompt]) -> list[Generation]:
        """One :class:`Generation` per prompt, in the prompts' order."""
        ...


class DecodingConfig(BaseModel):
    """How text is decoded. Greedy by default: summaries must be reproducible run to run."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_new_tokens: int = Field(64, ge=1, le=512, description="Hard cap on completion length.")
    min_new_tokens: int = Field(0, ge=0, description="EOS is suppressed before this many tokens.")
    repetition_penalty: float = Field(1.1, gt=0, description="1.0 = off; ~1.1 stops small models looping.")
    do_sample: bool = Field(False, description="False = greedy (temperature must then be 0).")
    temperature: float = Field(0.0, ge=0, description="Sampling temperature; > 0 iff do_sample.")
    batch_size: int = Field(8, ge=1, description="Prompts per forward pass (local) — not recorded.")

    @model_validator(mode="after")
    def _consistent(self) -> DecodingConfig:
        if self.do_sample != (self.temperature > 0):
            raise ValueError("do_sample=True needs temperature > 0; greedy needs temperature 0")
        if self.min_new_tokens > self.max_new_tokens:
            raise ValueError("min_new_tokens exceeds max_new_tokens")
        return self

    def recorded(self) -> dict:
        # batch_size changes speed, not the intended decoding: keeping it out means a new batch
        # size does not look like a new decoding to whoever compares recorded settings.
        return self.model_dump(exclude={"batch_size"})


def _check_prompts(prompts: list[Prompt]) -> None:
    for i, messages in enumerate(prompts):
        if not messages or any(
            set(m) != {"role", "content"} or m["role"] not in _ROLES or not isinstance(m["content"], str)
            for m in messages
        ):
            raise EncoderError(f"prompt {i} is not a non-empty list of {{role, content}} chat messages")


class TransformersLLM:
    """Any local transformers checkpoint folder, or a folder + ``gguf_file``.

    CUDA runs bf16 (fp16 where bf16 is unsupported), CPU runs fp32. Prompts are rendered with the
    checkpoint's chat template, left-padded (decoder-only models continue from the last position)
    and generated in chunks of ``decoding.batch_size``.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        gguf_file: str | None = None,
        device: str | None = None,
        decoding: DecodingConfig | None = None,
        name: str | None = None,
    ) -> None:
        os.environ["HF_HUB_OFFLINE"] = "1"  # hubs are unreachable; never try, never hang
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = Path(path)
        if not path.is_dir() or (gguf_file is not None and not (path / gguf_file).is_file()):
            raise EncoderError(f"no checkpoint at {path / (gguf_file or '')}")
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if self.device.type == "cuda":
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        else:
            dtype = torch.float32
        self.tokenizer = AutoTokenizer.from_pretrained(path, gguf_file=gguf_file)
        if not self.tokenizer.chat_template:
            raise EncoderError(f"{path} has no chat template: it is not an instruct/chat checkpoint")
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token  # masked out; any id will do
        model = AutoModelForCausalLM.from_pretrained(path, gguf_file=gguf_file, dtype=dtype)
        self.model = model.to(self.device).eval()
        self.config = decoding or DecodingConfig()
        self.decoding = self.config.recorded()
        stem = name or (Path(gguf_file).stem if gguf_file else path.name)
        self.llm_id = f"transformers:{stem}@{checkpoints.fingerprint(path, gguf_file=gguf_file)}"
        self.special_tokens = special_tokens(self.tokenizer)

    def prompt_ids(self, messages: Prompt) -> list[int]:
        """The token ids the model sees for one chat prompt (template + generation prompt)."""
        enc = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        ids = enc["input_ids"] if hasattr(enc, "keys") else enc
        return [int(i) for i in ids]

    def _generation_config(self):
        from transformers import GenerationConfig

        gen = self.model.generation_config
        c = self.config
        # A fresh config, not the checkpoint's: its own sampling defaults must not leak into
        # outputs that we record as greedy.
        kwargs = dict(max_new_tokens=c.max_new_tokens, min_new_tokens=c.min_new_tokens,
                      repetition_penalty=c.repetition_penalty, do_sample=c.do_sample)
        if c.do_sample:
            kwargs["temperature"] = c.temperature
        return GenerationConfig(
            **kwargs,
            bos_token_id=gen.bos_token_id,
            eos_token_id=gen.eos_token_id if gen.eos_token_id is not None else self.tokenizer.eos_token_id,
            pad_token_id=self.tokenizer.pad_token_id,
        )

    def _eos_ids(self, gen_config) -> set[int]:
        eos = gen_config.eos_token_id
        return set(eos if isinstance(eos, list) else [eos])

    def generate(self, prompts: list[Prompt]) -> list[Generation]:
        """Chat prompts → generations in the same order. Each chunk: ``input_ids (B, L)`` →
        ``output (B, L + T)``; the first ``L`` columns (the left-padded prompt) are dropped."""
        import torch

        _check_prompts(prompts)
        gen_config = self._generation_config()
        eos_ids = self._eos_ids(gen_config)
        limit = getattr(self.model.config, "max_position_embeddings", None)
        out: list[Generation] = []
        for start in range(0, len(prompts), self.config.batch_size):
            chunk = prompts[start : start + self.config.batch_size]
            enc = self.tokenizer.apply_chat_template(
                chunk, add_generation_prompt=True, padding=True, return_tensors="pt", return_dict=True
            ).to(self.device)
            width = enc["input_ids"].shape[1]
            if limit is not None and width + self.config.max_new_tokens > limit:
                raise EncoderError(
                    f"prompt of {width} tokens + {self.config.max_new_tokens} new exceeds the "
                    f"model's context of {limit}"
                )
            with torch.inference_mode():
                ids = self.model.generate(**enc, generation_config=gen_config)
            for prompt_len, row in zip(enc["attention_mask"].sum(dim=1).tolist(), ids[:, width:].tolist()):
                # Finished rows are padded up to the longest one: count up to and with the first EOS.
                n = next((i + 1 for i, t in enumerate(row) if t in eos_ids), len(row))
                text = self.tokenizer.decode(row[:n], skip_special_tokens=True).strip()
                out.append(Generation(text, int(prompt_len), n))
        return out


def special_tokens(tokenizer) -> tuple[str, ...]:
    """The tokenizer's own control strings, asked of the tokenizer (no hand-kept list).

    Every special token, plus every added token that is special or looks like a marker (holds
    ``<``, ``>``, ``[``, ``]`` or ``|``): a tokenizer matches added tokens before ordinary text,
    so a title holding ``<file_sep>`` would otherwise reach SmolLM2 as its control token. Added
    tokens that are plain words or whitespace are harmless and stay.
    """
    found = set(tokenizer.all_special_tokens)
    for token in getattr(tokenizer, "added_tokens_decoder", {}).values():
        content = getattr(token, "content", str(token))
        if getattr(token, "special", False) or any(c in content for c in "<>[]|"):
            found.add(content)
    return tuple(sorted((t for t in found if t and t.strip()), key=lambda t: (-len(t), t)))


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
        _check_prompts(prompts)
        with ThreadPoolExecutor(max_workers=self.max_concurrency) as pool:
            return list(pool.map(self._one, prompts))  # map keeps the prompts' order

    def close(self) -> None:
        self._client.close()


def load_llm(
    spec: str | None, *, device: str | None = None, decoding: DecodingConfig | None = None
) -> LLM:
    """Build the backend a spec names (grammar in the module docstring)."""
    if spec is None or spec in ("", "smollm2"):
        path = checkpoints.smollm2_checkpoint()
        return TransformersLLM(path, device=device, decoding=decoding, name="SmolLM2-135M-Instruct")
    if spec.startswith("openai:"):
        base_url, sep, model = spec[len("openai:") :].partition("#")
        if not sep or not model or not base_url.startswith(("http://", "https://")):
            raise ConfigError(f"LLM spec {redact_url(spec)!r}: expected openai:http(s)://host:port#model")
        from liber_features.settings import get_settings

        key = get_settings().llm_api_key
        api_key = key.get_secret_value() if key is not None else os.environ.get("OPENAI_API_KEY")
        return OpenAICompatLLM(base_url, model, api_key=api_key, decoding=decoding)
    path = Path(spec).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return TransformersLLM(path.parent, gguf_file=path.name, device=device, decoding=decoding)
    if path.is_dir():
        return TransformersLLM(path, device=device, decoding=decoding)
    raise ConfigError(
        f"LLM spec {redact_url(spec)!r} is neither 'smollm2', 'openai:<url>#<model>', a checkpoint folder "
        "nor a .gguf file"
    )
