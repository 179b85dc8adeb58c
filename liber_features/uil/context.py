"""One encode run as the loop and its ledger writes share it: ledger, run row, lease, backends.

Before this object the loop threaded the same eleven values through every call; now a function
that writes for the run takes the run.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Any

from liber_features.errors import LiberError
from liber_features.ledger.store import Ledger
from liber_features.uil.claims import Lease
from liber_features.uil.prompts import prompt_version
from liber_features.uil.types import EncodeConfig, EncodeSummary, LLMLike, TextEncoderLike

__all__ = ["RunContext"]


@dataclass
class RunContext:
    """A started encode run. ``llm`` / ``enc`` name the backends (``llm_id``, ``decoding``,
    ``encoder_id``, ``dim``); ``enc`` also encodes texts generated earlier but never encoded."""

    ledger: Ledger
    run_id: int
    lease: Lease
    cfg: EncodeConfig
    llm: LLMLike
    enc: TextEncoderLike
    summary: EncodeSummary
    started: float = field(default_factory=time.perf_counter)

    @property
    def pv(self) -> str:
        """The prompt version: with ``llm.llm_id``, the key of every output of this run."""
        return self.lease.pv

    @classmethod
    def start(cls, ledger: Ledger, llm: LLMLike, enc: TextEncoderLike, cfg: EncodeConfig,
              summary: EncodeSummary, params: dict[str, Any] | None = None) -> RunContext:
        """A ``running`` run row (with the backends' ids and the config) and its lease."""
        started = time.perf_counter()
        pv = prompt_version(cfg.prompts)
        summary.prompt_version, summary.llm_id = pv, llm.llm_id
        domain = cfg.prompts.domain
        # The domain is hashed into the prompt version, which cannot be read back: the run names
        # it so `liber status` and the report can say which domain encoded the ledger.
        run_id = ledger.start_run("encode", {"prompt_version": pv, "llm_id": llm.llm_id,
                                             "encoder_id": enc.encoder_id, "decoding": llm.decoding,
                                             "domain": domain.label, "domain_sha256": domain.fingerprint,
                                             **cfg.model_dump(exclude={"prompts"}), **(params or {})},
                                  lease_s=cfg.lease_s)
        lease = Lease(ledger, run_id, pv, llm.llm_id, cfg.lease_s)
        return cls(ledger, run_id, lease, cfg, llm, enc, summary, started)

    @contextlib.contextmanager
    def running(self):
        """The run's body: the lease heartbeat while it runs, then the run row closed ``ok``, or
        ``failed`` with the error recorded (redacted) before it propagates."""
        from liber_features.redact import redact_text

        status = "ok"
        try:
            with self.lease.heartbeat():
                yield self
        except BaseException as exc:
            status = "failed"
            self.summary.errors.append(redact_text(f"{type(exc).__name__}: {exc}")[:300])
            raise
        finally:
            self.finish(status)

    def finish(self, status: str) -> None:
        """Round the counters, give back what is still claimed, close the run row."""
        s = self.summary
        s.seconds_llm = round(s.seconds_llm, 3)
        s.seconds_encoder = round(s.seconds_encoder, 3)
        s.seconds_total = round(time.perf_counter() - self.started, 3)
        s.tokens_per_s = round(s.completion_tokens / s.seconds_llm, 2) if s.seconds_llm else 0.0
        with contextlib.suppress(LiberError):  # the ledger may be what failed; leases then expire
            self.lease.release_all()
        self.ledger.finish_run(self.run_id, status, s.as_dict())
