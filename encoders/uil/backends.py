"""The real UIL backends as ``liber encode`` loads them: an LLM from a spec and the text encoder.

A plain module-level function, so a Ray job can ship it to its actors by reference
(``functools.partial(model_backends, ...)``) and each actor builds its own backends.
"""

from __future__ import annotations

from encoders.uil.llm import DecodingConfig, load_llm
from encoders.uil.text import TextEncoder

__all__ = ["model_backends"]


def model_backends(llm_spec: str | None, encoder_path: str | None, device: str | None,
                   max_new_tokens: int, batch_size: int) -> tuple:
    """The real LLM and text encoder, as ``liber encode`` loads them (called inside each Ray actor)."""
    llm = load_llm(llm_spec, device=device,
                   decoding=DecodingConfig(max_new_tokens=max_new_tokens, batch_size=batch_size))
    return llm, TextEncoder(encoder_path, device=device)
