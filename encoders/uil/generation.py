"""What every LLM backend shares: chat prompts in, :class:`Generation` out, how text is decoded.

Its own module so that the backends (``llm.py``: transformers and the spec loader;
``openai_llm.py``: OpenAI-compatible servers) import it without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field, model_validator

from liber_features.errors import EncoderError

__all__ = ["LLM", "DecodingConfig", "Generation", "Prompt", "check_prompts"]

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


def check_prompts(prompts: list[Prompt]) -> None:
    for i, messages in enumerate(prompts):
        if not messages or any(
            set(m) != {"role", "content"} or m["role"] not in _ROLES or not isinstance(m["content"], str)
            for m in messages
        ):
            raise EncoderError(f"prompt {i} is not a non-empty list of {{role, content}} chat messages")
