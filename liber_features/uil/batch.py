"""One batch's generation: summaries, then shifts (which need the summaries), then vectors.

Pure work on the backends, no ledger: it runs in the encode process (``interest.InProcess``)
or in a Ray actor (``rayjob``), and its :class:`BatchOutput` goes back to the loop, which
commits it (``interest_store``). What a batch reads travels with it as a :class:`BatchJob`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from liber_features.errors import EncoderError, VectorShapeError
from liber_features.uil.prompts import ItemLine, PromptConfig, first_shift, shift_messages, summary_messages
from liber_features.uil.types import EncodeSummary, LLMLike, Part, TextEncoderLike

__all__ = ["BatchJob", "BatchOutput", "Finished", "LostBatch", "encode_texts", "run_batch"]


@dataclass
class BatchJob:
    """A claimed batch and what generating it reads.

    ``prev`` holds (user, seq) → summary for at least each partition's predecessor; ``catalog``
    item id → (title, categories) for at least its items.
    """

    parts: list[Part]
    prev: dict[tuple[str, int], str]
    catalog: dict[str, tuple[str, str]]

    def trimmed(self) -> BatchJob:
        """Only what this batch reads (what a Ray actor is sent)."""
        prev = {(x.user_id, x.seq - 1): self.prev[(x.user_id, x.seq - 1)] for x in self.parts if x.seq > 0}
        items = {e[1] for x in self.parts for e in x.events}
        return BatchJob(self.parts, prev, {i: self.catalog[i] for i in items if i in self.catalog})


@dataclass
class BatchOutput:
    """What a generated batch commits, index-aligned with its parts."""

    summaries: list[str]
    shifts: list[str]  # the domain's first shift for a partition 0
    tokens: list[list[int]]  # [prompt, completion] per partition, its summary and shift together
    vectors: np.ndarray  # (2n, dim) float32: the n summaries' rows, then the n shifts'
    prompts: list[tuple[int, str, list[dict[str, str]]]]  # (partition id, kind, messages): the audit


@dataclass
class LostBatch:
    """A batch's outcome when the process generating it died: nothing of it was committed."""

    reason: str


@dataclass
class Finished:
    """A batch back from a runner: its output, the exception it raised, or ``LostBatch``."""

    parts: list[Part]
    outcome: BatchOutput | LostBatch | BaseException


def encode_texts(enc: TextEncoderLike, texts: list[str], s: EncodeSummary) -> np.ndarray:
    """``enc.encode`` as float32, timed into ``s``; refused unless exactly (len(texts), enc.dim)."""
    t0 = time.perf_counter()
    vecs = np.asarray(enc.encode(texts), dtype=np.float32)
    s.seconds_encoder += time.perf_counter() - t0
    if vecs.shape != (len(texts), enc.dim):
        raise VectorShapeError(f"text encoder {enc.encoder_id} returned {vecs.shape}, "
                               f"expected {(len(texts), enc.dim)}")
    return vecs


def _lines(part: Part, catalog: dict[str, tuple[str, str]]) -> list[ItemLine]:
    out = []
    # A row is [event id, item, ts µs, rating] and, when the log has event types, the type.
    for _event_id, item_id, ts_us, rating, *typed in part.events:
        title, cats = catalog.get(item_id, (f"item {item_id}", ""))
        out.append(ItemLine(title=title, categories=cats, rating=rating, ts_us=ts_us,
                            event_type=typed[0] if typed else None))
    return out


def _text(gen: Any, cap: int) -> str:
    # Stored as generated, only trimmed and length-capped.
    return str(gen.text).strip()[:cap]


def run_batch(job: BatchJob, llm: LLMLike, enc: TextEncoderLike, p: PromptConfig,
              s: EncodeSummary) -> BatchOutput:
    """Summaries, then shifts (quoting the predecessor's summary), then vectors; counters into ``s``."""
    batch = job.parts
    # The backend's own control tokens (a local tokenizer's; none known for a remote server).
    special = tuple(getattr(llm, "special_tokens", ()))
    t0 = time.perf_counter()
    prompts = [summary_messages(_lines(x, job.catalog), p, special) for x in batch]
    gens = llm.generate(prompts)
    if len(gens) != len(batch):
        raise EncoderError(f"LLM {llm.llm_id} answered {len(gens)} of {len(batch)} prompts")
    summaries = [_text(g, p.output_chars) for g in gens]
    need = [i for i, x in enumerate(batch) if x.seq > 0]
    shift_prompts = [shift_messages(job.prev[(batch[i].user_id, batch[i].seq - 1)], summaries[i], p,
                                    special) for i in need]  # fmt: skip
    shift_gens = llm.generate(shift_prompts) if need else []
    s.seconds_llm += time.perf_counter() - t0
    s.llm_calls += len(gens) + len(shift_gens)
    shifts = [first_shift(p)] * len(batch)
    tokens = [[g.prompt_tokens, g.completion_tokens] for g in gens]
    for i, g in zip(need, shift_gens):
        shifts[i] = _text(g, p.output_chars)
        tokens[i][0] += g.prompt_tokens
        tokens[i][1] += g.completion_tokens
    vecs = encode_texts(enc, summaries + shifts, s)
    seen = [(x.id, "summary", m) for x, m in zip(batch, prompts)]
    seen += [(batch[i].id, "shift", m) for i, m in zip(need, shift_prompts)]
    return BatchOutput(summaries, shifts, tokens, vecs, seen)
