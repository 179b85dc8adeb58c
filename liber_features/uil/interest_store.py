"""The UIL job's ledger side: a batch's outputs under its claims, a failed or lost batch, late vectors.

Split from ``interest.py`` so that the job's loop (one process, or a Ray driver in ``rayjob.py``)
and what it commits read apart. Each batch's write is one transaction, so a crash leaves all or
nothing of a batch.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy import and_, select

from liber_features.errors import EncoderError, LLMUnavailable, VectorShapeError
from liber_features.ledger.fieldrules import cap_text
from liber_features.ledger.store import Ledger, now_us
from liber_features.ledger.store import interests as int_t
from liber_features.ledger.store import partitions as parts_t
from liber_features.ledger.store import prompt_audit as audit_t
from liber_features.ledger.store import vectors as vec_t
from liber_features.redact import redact_text
from liber_features.uil.prompts import prompt_hash, sanitize

if TYPE_CHECKING:
    from liber_features.uil.claims import Lease
    from liber_features.uil.interest import EncodeConfig, EncodeSummary, TextEncoderLike, _Part

__all__ = ["LostBatch", "calls_needed", "commit_batch", "done_summaries", "fill_vectors", "record_failure",
           "settle_batch"]


@dataclass
class LostBatch:
    """A batch's outcome when the process generating it died: nothing of it was committed."""

    reason: str


# A batch that raises one of these is recorded as failed and the job goes on; anything else stops it.
_BATCH_ERRORS = (EncoderError, VectorShapeError, RuntimeError, ValueError, OSError)


def calls_needed(batch: list[_Part]) -> int:
    """LLM calls a batch costs: a summary each, a shift after partition 0."""
    return len(batch) + sum(1 for x in batch if x.seq > 0)


def done_summaries(ledger: Ledger, pv: str, llm_id: str, by_id: dict[int, _Part]) -> dict:
    """(user, seq) → summary of every done partition in scope (other workers' included)."""
    with ledger.engine.connect() as conn:
        rows = conn.execute(select(int_t.c.partition_id, int_t.c.summary).where(
            int_t.c.prompt_version == pv, int_t.c.llm_id == llm_id, int_t.c.status == "done")).all()
    return {(by_id[r.partition_id].user_id, by_id[r.partition_id].seq): r.summary
            for r in rows if r.partition_id in by_id}


_AUDIT_CHARS = 16_000  # a stored prompt is capped; its hash covers the whole of it


def commit_batch(ledger: Ledger, lease: Lease, batch, summaries, shifts, tokens, vecs, pv, llm, enc,
                 run_id, seen=()) -> set[int]:
    """Write the batch's texts and vectors for the claims still ours; return their partition ids.

    Insert-or-nothing: a ``done`` row is never touched (its id, and so its vectors, stay put); only
    a ``failed`` row of an earlier run is replaced, in place.
    """
    stamp = now_us()
    decoding = json.dumps(llm.decoding, sort_keys=True)
    with lease._tx() as conn:
        accepted = lease.accept(conn, [x.id for x in batch])
        keep = [i for i, x in enumerate(batch) if x.id in accepted]
        ledger.upsert(conn, int_t, [{
            "partition_id": batch[i].id, "prompt_version": pv, "llm_id": llm.llm_id,
            "status": "done", "summary": summaries[i], "shift": shifts[i], "decoding": decoding,
            "prompt_tokens": tokens[i][0], "completion_tokens": tokens[i][1], "error": None,
            "attempts": 1, "run_id": run_id, "updated_us": stamp} for i in keep],
            ["partition_id", "prompt_version", "llm_id"], where=int_t.c.status != "done")
        ids = dict(conn.execute(select(int_t.c.partition_id, int_t.c.id).where(and_(
            int_t.c.partition_id.in_(list(accepted) or [-1]), int_t.c.prompt_version == pv,
            int_t.c.llm_id == llm.llm_id))).all())
        n = len(batch)
        ledger.insert_ignore(conn, vec_t, [{
            "interest_id": ids[batch[i].id], "encoder_id": enc.encoder_id, "dim": enc.dim,
            "summary_vec": vecs[i].tobytes(), "shift_vec": vecs[n + i].tobytes(),
            "created_us": stamp} for i in keep], ["interest_id", "encoder_id"])
        ledger.upsert(conn, audit_t, [{
            "partition_id": pid, "prompt_version": pv, "llm_id": llm.llm_id, "kind": kind,
            "prompt_sha256": prompt_hash(messages),
            "prompt": cap_text(json.dumps(messages, ensure_ascii=False), _AUDIT_CHARS),
            "run_id": run_id, "created_us": stamp} for pid, kind, messages in seen if pid in accepted],
            ["partition_id", "prompt_version", "llm_id", "kind"])
        lease.count(conn, partitions_done=len(keep),
                    llm_calls_committed=calls_needed([batch[i] for i in keep]),
                    rejected_commits=n - len(keep))
    return accepted


def record_failure(ledger: Ledger, lease: Lease, batch, pv, llm, run_id, exc: BaseException) -> None:
    """Mark the batch failed with the error and give up its claims; ``attempts`` counts tries."""
    message = sanitize(redact_text(f"{type(exc).__name__}: {exc}"), 2000)
    with lease._tx() as conn:
        held = lease.release(conn, [x.id for x in batch])  # first: the write lock on SQLite
        tried = dict(conn.execute(select(int_t.c.partition_id, int_t.c.attempts).where(
            int_t.c.partition_id.in_([x.id for x in batch]), int_t.c.prompt_version == pv,
            int_t.c.llm_id == llm.llm_id)).all())
        ledger.upsert(conn, int_t, [{
            "partition_id": x.id, "prompt_version": pv, "llm_id": llm.llm_id, "status": "failed",
            "summary": None, "shift": None, "decoding": json.dumps(llm.decoding, sort_keys=True),
            "prompt_tokens": 0, "completion_tokens": 0, "error": message,
            "attempts": tried.get(x.id, 0) + 1, "run_id": run_id, "updated_us": now_us()}
            for x in batch if x.id in held], ["partition_id", "prompt_version", "llm_id"],
            where=int_t.c.status != "done")


def fill_vectors(ledger: Ledger, enc: TextEncoderLike, pv: str, llm_id: str, cfg: EncodeConfig,
                  s: EncodeSummary) -> int:
    """Vectors for texts already generated but not yet encoded by *this* text encoder.

    A new text encoder must not cost a single LLM call: the texts are in the ledger.
    """
    q = (select(int_t.c.id, int_t.c.summary, int_t.c.shift)
         .select_from(int_t.join(parts_t, parts_t.c.id == int_t.c.partition_id)
                      .outerjoin(vec_t, and_(vec_t.c.interest_id == int_t.c.id,
                                             vec_t.c.encoder_id == enc.encoder_id)))
         .where(int_t.c.prompt_version == pv, int_t.c.llm_id == llm_id,
                int_t.c.status == "done", vec_t.c.id.is_(None)))
    if cfg.users:
        q = q.where(parts_t.c.user_id.in_(cfg.users))
    with ledger.engine.connect() as conn:
        todo = conn.execute(q).all()
    chunk = max(cfg.batch_size, 64)
    for i in range(0, len(todo), chunk):
        rows = todo[i:i + chunk]
        t0 = time.perf_counter()
        vecs = np.asarray(enc.encode([r.summary for r in rows] + [r.shift for r in rows]),
                          dtype=np.float32)
        s.seconds_encoder += time.perf_counter() - t0
        if vecs.shape != (2 * len(rows), enc.dim):
            raise VectorShapeError(f"text encoder {enc.encoder_id} returned {vecs.shape}, "
                                   f"expected {(2 * len(rows), enc.dim)}")
        with ledger.begin() as conn:
            # Insert-or-nothing: a worker that filled the same texts first keeps its rows.
            ledger.insert_ignore(conn, vec_t, [{
                "interest_id": r.id, "encoder_id": enc.encoder_id, "dim": enc.dim,
                "summary_vec": vecs[j].tobytes(), "shift_vec": vecs[len(rows) + j].tobytes(),
                "created_us": now_us()} for j, r in enumerate(rows)], ["interest_id", "encoder_id"])
    return len(todo)


def settle_batch(ledger: Ledger, lease: Lease, batch: list[_Part], outcome: Any, prev: dict,
                 given_up: set[int], pv: str, llm, enc, run_id: int, s: EncodeSummary) -> int:
    """Commit a finished batch, record it failed, or release a lost one; return partitions done."""
    ids = [x.id for x in batch]
    if isinstance(outcome, LostBatch):
        # Nothing was committed: give the claims back so the next run need not wait for a lease.
        with lease._tx() as conn:
            lease.release(conn, ids)
        given_up.update(ids)
        s.partitions_lost += len(batch)
        s.errors.append(redact_text(outcome.reason)[:300])
        return 0
    if isinstance(outcome, BaseException):
        if isinstance(outcome, LLMUnavailable) or not isinstance(outcome, _BATCH_ERRORS):
            # The backend is down, not this batch bad (or a bug): stop, mark nothing failed, and
            # let the next run (or another worker, at once) pick up exactly here.
            raise outcome
        record_failure(ledger, lease, batch, pv, llm, run_id, outcome)
        given_up.update(ids)
        s.failed += len(batch)
        s.errors.append(redact_text(f"{type(outcome).__name__}: {outcome}")[:300])
        return 0
    summaries, shifts, tokens, vecs, seen = outcome
    accepted = commit_batch(ledger, lease, batch, summaries, shifts, tokens, vecs, pv, llm, enc,
                            run_id, seen)
    s.rejected_commits += len(batch) - len(accepted)
    for i, (x, text) in enumerate(zip(batch, summaries)):
        if x.id in accepted:
            prev[(x.user_id, x.seq)] = text
            s.partitions_done += 1
            s.prompt_tokens += tokens[i][0]
            s.completion_tokens += tokens[i][1]
    return len(accepted)
