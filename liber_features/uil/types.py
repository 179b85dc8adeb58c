"""What the UIL job's pieces pass each other: the partition, the config, the counters, the backends.

One module that the loop (``interest``), its ledger side (``interest_store``), the batch work
(``batch``), the bookkeeping (``scheduler``) and the Ray driver (``rayjob``) all import, so none
of them imports another for a type — the UIL folder has no import cycle, static ones included.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from liber_features.uil.prompts import PromptConfig

__all__ = ["EncodeConfig", "EncodeSummary", "LLMLike", "Part", "Settled", "TextEncoderLike"]


class LLMLike(Protocol):
    """An LLM backend: ``encoders.uil.llm`` or an OpenAI-compatible client; a fake in tests."""

    llm_id: str
    decoding: dict

    def generate(self, prompts: list[list[dict[str, str]]]) -> list[Any]: ...


class TextEncoderLike(Protocol):
    """A text encoder turning n texts into an (n, dim) float32 array."""

    encoder_id: str
    dim: int

    def encode(self, texts: list[str]) -> np.ndarray: ...


class EncodeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    batch_size: int = Field(8, ge=1)
    users: list[str] | None = None
    limit: int | None = Field(None, ge=0, description="stop after this many partitions")
    prompts: PromptConfig = PromptConfig()
    lease_s: float = Field(300.0, gt=0, description="a claim expires this long after the last "
                           "heartbeat (beats every lease/3); a dead worker's work waits this long")


@dataclass
class EncodeSummary:
    """One run's counters: what ``liber encode`` prints and the ledger's run row keeps."""

    partitions_done: int = 0
    llm_calls: int = 0
    skipped_already_done: int = 0
    failed: int = 0
    rejected_commits: int = 0  # batches finished after another worker took their lease over
    partitions_lost: int = 0  # in batches whose process (a Ray actor) died: left for a rerun
    vectors_written: int = 0  # vector rows (summary + shift) written with this run's new texts
    vectors_backfilled: int = 0  # vector rows written for texts an earlier run generated
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds_llm: float = 0.0
    seconds_encoder: float = 0.0
    seconds_total: float = 0.0
    tokens_per_s: float = 0.0
    prompt_version: str = ""
    llm_id: str = ""
    errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Part:
    """A sealed partition as the job reads it: ``events`` rows are (event id, item, ts µs, rating)."""

    id: int
    user_id: str
    seq: int
    events: list

    @property
    def calls(self) -> int:
        """LLM calls it costs: a summary, and a shift after partition 0."""
        return 1 if self.seq == 0 else 2


@dataclass
class Settled:
    """What became of a finished batch in the ledger, for the scheduler's bookkeeping.

    ``summaries``: partition id → summary of each committed partition (the rest were taken over
    by another worker); ``given_up``: failed or lost, left for the next run.
    """

    summaries: dict[int, str] = field(default_factory=dict)
    given_up: bool = False
