"""What ``liber stream`` is told (``StreamConfig``) and what one run did (``StreamSummary``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["StreamConfig", "StreamSummary"]


class StreamConfig(BaseModel):
    """How ``liber stream`` consumes."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    batch: int = Field(500, ge=1)
    """Messages per fetch, and per ledger transaction."""
    fetch_timeout_s: float = Field(0.05, gt=0)
    """Longest wait for a batch's first message: the loop flushes and sweeps between fetches."""
    max_seconds: float | None = Field(None, gt=0)
    """Stop after this long (None: run until SIGTERM or ``until_idle_s``)."""
    until_idle_s: float | None = Field(None, gt=0)
    """Stop once no message arrived for this long."""
    sweep_every_s: float = Field(1.0, gt=0)
    """How often the quiet-user sweep runs (only with a time rule)."""
    retry_max_s: float = Field(5.0, gt=0)
    """The longest pause between retries while the broker is away."""


@dataclass
class StreamSummary:
    """What one ``liber stream`` run did; ``fetched == accepted + duplicates + quarantined``."""

    fetched: int = 0
    accepted: int = 0
    duplicates: int = 0
    quarantined: int = 0
    late: int = 0
    partitions_sealed: int = 0
    swept: int = 0  # of partitions_sealed, those the quiet-user sweep sealed
    batches: int = 0
    users_flushed: int = 0
    broker_retries: int = 0
    seconds: float = 0.0
    events_per_s: float = 0.0
    run_id: int = 0
    position: str | None = None
    stopped: str = ""

    def as_dict(self) -> dict:
        return asdict(self)
