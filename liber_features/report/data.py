"""What ``liber report`` gathered: the one type that gathering, the page and the figures share.

It lives apart from :mod:`~liber_features.report.gather` so that :mod:`~liber_features.report.html`
and :mod:`~liber_features.report.plots` read it without importing the module that queries the
ledger and Feast (which in turn calls them): the report's modules form no import cycle, and
import-linter's "no import cycles inside any stage" contract keeps it so.

Plain dataclasses, no behaviour: every number is already final here; the page and the figures
only format and draw.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["ReportData", "Timeline"]


@dataclass
class Timeline:
    """One user's newest sealed partitions with their interest texts (section 3 of the page)."""

    user_id: str
    partitions: int  # sealed, in the ledger
    rows: list[dict[str, Any]]  # newest last: seq, sealed_at_us, n_events, status, summary, shift


@dataclass
class ReportData:
    """Everything the page and its figures show; a missing part is a ``notes`` entry, never an error."""

    generated_us: int
    ledger_url: str  # password already redacted (Ledger.safe_url)
    data: dict[str, int]
    top_reasons: list[tuple[str, str, int]]  # (field, reason, rows) of the quarantine, most rows first
    partitions_per_user: np.ndarray  # one entry per user, zeros included
    seal_times_us: np.ndarray
    cost: dict[str, Any]
    coverage: dict[str, int | None]  # sealed / encoded / online partitions; None = online not read
    encoded_age_s: np.ndarray  # per user with an encoded partition: now - newest vector's creation
    online_age_s: np.ndarray | None
    online_versions: dict[str, int] = field(default_factory=dict)  # encoder_version -> users online
    timelines: list[Timeline] = field(default_factory=list)
    evaluation: dict[str, Any] | None = None
    bench_online: dict[str, Any] | None = None
    card: Any = None  # ModelCard
    # per ingest / stream run, oldest first: run_id, kind, status, started_us, source, read,
    # accepted, duplicates, quarantined (None for a failed run)
    intake_runs: list[dict[str, Any]] = field(default_factory=list)
    notes: dict[str, str] = field(default_factory=dict)  # section -> why something is missing
    versions: tuple[str, str, str] | None = None  # (prompt_version, llm_id, encoder_id) reported on
