"""UIL — the cascaded interest job: once per sealed partition, a summary, then a shift.

The job is torch-free: it drives any ``LLM`` and ``TextEncoder`` (``encoders/`` supplies the real
ones; tests may pass fakes). It runs in *waves*: a partition is ready when it has no output for
the current (prompt version, LLM id) and its predecessor's summary exists — so one wave holds
the next partition of many users, and batches mix users.

Exactly once, with any number of workers on one ledger: a batch is claimed with a lease before
any LLM call (claims.py), and its texts and vectors commit in one transaction together with the
claim turning ``done`` — rejected if another worker took the lease over. A rerun makes zero LLM
calls for committed work; a worker killed mid-batch costs only that batch, redone by whoever
takes its expired lease. A batch whose generation raises is recorded as ``failed`` and released:
the next run (or another worker) retries it, this one does not.

Where a batch is *generated* is a ``BatchRunner``: in this process one at a time (``run_encode``),
or on a pool of Ray actors with several batches in flight (``rayjob.py``). Claiming, committing
and the cascade order stay here, in ``encode_loop``, whichever runner generates.
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select
from tqdm import tqdm

from liber_features.errors import LiberError, VectorShapeError
from liber_features.ledger.store import Ledger
from liber_features.ledger.store import interests as int_t
from liber_features.ledger.store import items as items_t
from liber_features.ledger.store import partitions as parts_t
from liber_features.redact import redact_text
from liber_features.uil.claims import Lease, poll_interval
from liber_features.uil.interest_store import LostBatch, done_summaries, fill_vectors, settle_batch
from liber_features.uil.interest_store import calls_needed as _calls
from liber_features.uil.prompts import (
    FIRST_SHIFT,
    ItemLine,
    PromptConfig,
    prompt_version,
    shift_messages,
    summary_messages,
)

__all__ = ["BatchRunner", "EncodeConfig", "EncodeSummary", "LLMLike", "LostBatch", "TextEncoderLike",
           "encode_loop", "run_encode"]


class LLMLike(Protocol):
    llm_id: str
    decoding: dict

    def generate(self, prompts: list[list[dict[str, str]]]) -> list[Any]: ...


class TextEncoderLike(Protocol):
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
    partitions_done: int = 0
    llm_calls: int = 0
    skipped_already_done: int = 0
    failed: int = 0
    rejected_commits: int = 0  # batches finished after another worker took their lease over
    partitions_lost: int = 0  # in batches whose process (a Ray actor) died: left for a rerun
    vectors_written: int = 0
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
class _Part:
    id: int
    user_id: str
    seq: int
    events: list


def _load(ledger: Ledger, cfg: EncodeConfig, pv: str, llm_id: str):
    """All candidate partitions plus the summaries already done, keyed by (user, seq)."""
    with ledger.engine.connect() as conn:
        q = select(parts_t.c.id, parts_t.c.user_id, parts_t.c.seq, parts_t.c.events_json)
        if cfg.users:
            q = q.where(parts_t.c.user_id.in_(cfg.users))
        parts = [_Part(r.id, r.user_id, r.seq, json.loads(r.events_json))
                 for r in conn.execute(q.order_by(parts_t.c.seq, parts_t.c.user_id))]
        done = {r.partition_id: r.summary for r in conn.execute(
            select(int_t.c.partition_id, int_t.c.summary).where(
                int_t.c.prompt_version == pv, int_t.c.llm_id == llm_id, int_t.c.status == "done"))}
        catalog = {r.item_id: (r.title, r.categories) for r in conn.execute(select(items_t))}
    return parts, done, catalog


def _lines(part: _Part, catalog: dict[str, tuple[str, str]]) -> list[ItemLine]:
    out = []
    for _event_id, item_id, ts_us, rating in part.events:
        title, cats = catalog.get(item_id, (f"item {item_id}", ""))
        out.append(ItemLine(title=title, categories=cats, rating=rating, ts_us=ts_us))
    return out


def _text(gen: Any, cap: int) -> str:
    # Stored as generated, only trimmed and length-capped.
    return str(gen.text).strip()[:cap]


def _run_batch(batch: list[_Part], prev: dict[tuple[str, int], str], catalog, llm: LLMLike,
               enc: TextEncoderLike, cfg: EncodeConfig, s: EncodeSummary):
    """Summaries, then shifts (needing the same batch's summaries), then vectors."""
    p = cfg.prompts
    # The backend's own control tokens (a local tokenizer's; none known for a remote server).
    special = tuple(getattr(llm, "special_tokens", ()))
    t0 = time.perf_counter()
    prompts = [summary_messages(_lines(x, catalog), p, special) for x in batch]
    gens = llm.generate(prompts)
    summaries = [_text(g, p.output_chars) for g in gens]
    need = [i for i, x in enumerate(batch) if x.seq > 0]
    shift_prompts = [shift_messages(prev[(batch[i].user_id, batch[i].seq - 1)], summaries[i], p,
                                    special) for i in need]  # fmt: skip
    shift_gens = llm.generate(shift_prompts) if need else []
    s.seconds_llm += time.perf_counter() - t0
    s.llm_calls += len(gens) + len(shift_gens)
    shifts = [FIRST_SHIFT] * len(batch)
    tokens = [[g.prompt_tokens, g.completion_tokens] for g in gens]
    for i, g in zip(need, shift_gens):
        shifts[i] = _text(g, p.output_chars)
        tokens[i][0] += g.prompt_tokens
        tokens[i][1] += g.completion_tokens
    t1 = time.perf_counter()
    vecs = np.asarray(enc.encode(summaries + shifts), dtype=np.float32)
    s.seconds_encoder += time.perf_counter() - t1
    if vecs.shape != (2 * len(batch), enc.dim):
        raise VectorShapeError(f"text encoder {enc.encoder_id} returned {vecs.shape}, "
                               f"expected {(2 * len(batch), enc.dim)}")
    seen = [(x.id, "summary", m) for x, m in zip(batch, prompts)]
    seen += [(batch[i].id, "shift", m) for i, m in zip(need, shift_prompts)]
    return summaries, shifts, tokens, vecs, seen


def _ready(parts: list[_Part], prev: dict, skip: set[int]) -> list[_Part]:
    """Partitions without an output whose predecessor's summary exists (one wave), in order."""
    return [x for x in parts if (x.user_id, x.seq) not in prev and x.id not in skip
            and (x.seq == 0 or (x.user_id, x.seq - 1) in prev)]


class BatchRunner(Protocol):
    """Where batches are generated. ``wait`` blocks until a batch finishes and returns the finished
    ones (none if the runner sent a lost one out again), each with its outcome: ``_run_batch``'s
    output, the exception it raised, or a ``LostBatch``; it adds their LLM and encoder counters
    to ``s``."""

    def free(self) -> bool: ...

    def submit(self, batch: list[_Part], prev: dict[tuple[str, int], str], catalog: dict) -> None: ...

    def pending(self) -> bool: ...

    def wait(self, s: EncodeSummary) -> list[tuple[list[_Part], Any]]: ...


class _InProcess:
    """One batch at a time, generated here by the caller's LLM and text encoder."""

    def __init__(self, llm: LLMLike, enc: TextEncoderLike, cfg: EncodeConfig) -> None:
        self.llm, self.enc, self.cfg = llm, enc, cfg
        self._next: tuple | None = None

    def free(self) -> bool:
        return self._next is None

    def pending(self) -> bool:
        return self._next is not None

    def submit(self, batch, prev, catalog) -> None:
        self._next = (batch, prev, catalog)

    def wait(self, s: EncodeSummary) -> list[tuple[list[_Part], Any]]:
        batch, prev, catalog = self._next
        self._next = None
        try:
            return [(batch, _run_batch(batch, prev, catalog, self.llm, self.enc, self.cfg, s))]
        except Exception as exc:  # judged by encode_loop, which raises what is not a batch's fault
            return [(batch, exc)]


def run_encode(ledger: Ledger, llm: LLMLike, enc: TextEncoderLike, cfg: EncodeConfig | None = None,
               *, progress: bool | None = None) -> EncodeSummary:
    """Encode every ready partition (bounded by ``cfg.users`` / ``cfg.limit``).

    Safe to run as several workers on one ledger: each batch is claimed first (claims.py), so
    no partition is generated twice unless its worker died holding it.
    """
    cfg = cfg or EncodeConfig()
    return encode_loop(ledger, _InProcess(llm, enc, cfg), llm, enc, cfg, progress=progress)


def encode_loop(ledger: Ledger, runner: BatchRunner, llm: LLMLike, enc: TextEncoderLike,
                cfg: EncodeConfig, *, progress: bool | None = None, summary: EncodeSummary | None = None,
                params: dict[str, Any] | None = None) -> EncodeSummary:
    """Claim ready batches, hand them to ``runner``, commit what comes back (one run in the ledger).

    ``llm`` / ``enc`` name the backends (``llm_id``, ``decoding``, ``encoder_id``, ``dim``); ``enc``
    also encodes texts generated earlier but not yet encoded. A batch is in flight from its claim
    to its commit; its partitions' successors wait for it (the cascade needs their summaries).
    """
    started = time.perf_counter()
    pv = prompt_version(cfg.prompts)
    s = summary or EncodeSummary()
    s.prompt_version, s.llm_id = pv, llm.llm_id
    run_id = ledger.start_run("encode", {"prompt_version": pv, "llm_id": llm.llm_id,
                                         "encoder_id": enc.encoder_id, "decoding": llm.decoding,
                                         **cfg.model_dump(exclude={"prompts"}), **(params or {})},
                              lease_s=cfg.lease_s)
    lease = Lease(ledger, run_id, pv, llm.llm_id, cfg.lease_s)
    status = "ok"
    bar = None
    try:
        with lease.heartbeat():
            s.vectors_written += fill_vectors(ledger, enc, pv, llm.llm_id, cfg, s)
            parts, done, catalog = _load(ledger, cfg, pv, llm.llm_id)
            prev = {(x.user_id, x.seq): done[x.id] for x in parts if x.id in done}
            s.skipped_already_done = len(prev)
            given_up: set[int] = set()  # failed or lost in this run: the next run retries them
            busy: set[int] = set()  # claimed by another live worker when we last tried
            flying: set[int] = set()  # claimed by us, handed to the runner, not yet back
            budget = cfg.limit if cfg.limit is not None else len(parts)
            bar = tqdm(total=min(budget, len(parts) - len(prev)), unit="part", desc="encode",
                       disable=None if progress is None else not progress)
            by_id = {x.id: x for x in parts}
            while True:
                while budget > 0 and runner.free():
                    ready = _ready(parts, prev, given_up | busy | flying)
                    if not ready:
                        break
                    want = ready[:min(cfg.batch_size, budget)]
                    mine = lease.claim([x.id for x in want])
                    busy.update(x.id for x in want if x.id not in mine)
                    batch = [x for x in want if x.id in mine]
                    if batch:
                        budget -= len(batch)
                        lease.count_calls(_calls(batch))
                        flying.update(x.id for x in batch)
                        runner.submit(batch, prev, catalog)
                if runner.pending():
                    for batch, outcome in runner.wait(s):
                        flying.difference_update(x.id for x in batch)
                        bar.update(settle_batch(ledger, lease, batch, outcome, prev, given_up, pv,
                                                llm, enc, run_id, s))
                    bar.set_postfix(tok_s=f"{s.completion_tokens / max(s.seconds_llm, 1e-9):.1f}")
                    continue
                if budget <= 0:
                    break
                # Nothing of ours in flight, nothing ready: other workers may have finished
                # partitions (ours to continue from), still hold some, or have died.
                prev.update(done_summaries(ledger, pv, llm.llm_id, by_id))
                waited_on_others = bool(busy)
                busy.clear()
                if not _ready(parts, prev, given_up):
                    if not lease.others_holding(cfg.users):
                        break
                    time.sleep(poll_interval(cfg.lease_s))
                elif waited_on_others:  # what is ready may still be theirs: do not spin on it
                    time.sleep(poll_interval(cfg.lease_s))
    except BaseException as exc:
        status = "failed"
        s.errors.append(redact_text(f"{type(exc).__name__}: {exc}")[:300])
        raise
    finally:
        if bar is not None:
            bar.close()
        s.seconds_llm = round(s.seconds_llm, 3)
        s.seconds_encoder = round(s.seconds_encoder, 3)
        s.seconds_total = round(time.perf_counter() - started, 3)
        s.tokens_per_s = round(s.completion_tokens / s.seconds_llm, 2) if s.seconds_llm else 0.0
        with contextlib.suppress(LiberError):  # the ledger may be what failed; leases then expire
            lease.release_all()
        ledger.finish_run(run_id, status, s.as_dict())
    return s

