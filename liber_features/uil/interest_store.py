"""The UIL job's ledger side: what a run reads, a batch's outputs under its claims, late vectors.

Split from ``interest.py`` so that the job's loop (one process, or a Ray driver in ``rayjob.py``)
and what it commits read apart. Each batch's write is one transaction, so a crash leaves all or
nothing of a batch. Every write takes the run (:class:`RunContext`), never its parts one by one.
"""

from __future__ import annotations

import json

from sqlalchemy import and_, select
from sqlalchemy.engine import Connection

from liber_features.errors import EncoderError, LLMUnavailable, VectorShapeError
from liber_features.ledger.fieldrules import cap_text
from liber_features.ledger.store import Ledger, now_us
from liber_features.ledger.store import interests as int_t
from liber_features.ledger.store import items as items_t
from liber_features.ledger.store import partitions as parts_t
from liber_features.ledger.store import prompt_audit as audit_t
from liber_features.ledger.store import vectors as vec_t
from liber_features.redact import redact_text
from liber_features.uil.batch import BatchOutput, Finished, LostBatch, encode_texts
from liber_features.uil.context import RunContext
from liber_features.uil.prompts import prompt_hash, sanitize
from liber_features.uil.types import Part, Settled

__all__ = ["commit_batch", "done_summaries", "fill_vectors", "load_catalog", "load_partitions",
           "record_failure", "settle_batch"]

# A batch that raises one of these is recorded as failed and the job goes on; anything else stops it.
_BATCH_ERRORS = (EncoderError, VectorShapeError, RuntimeError, ValueError, OSError)
_AUDIT_CHARS = 16_000  # a stored prompt is capped; its hash covers the whole of it


def load_partitions(ledger: Ledger, users: list[str] | None) -> list[Part]:
    """Every sealed partition in scope, in wave order (seq, then user)."""
    q = select(parts_t.c.id, parts_t.c.user_id, parts_t.c.seq, parts_t.c.events_json)
    if users:
        q = q.where(parts_t.c.user_id.in_(users))
    with ledger.engine.connect() as conn:
        return [Part(r.id, r.user_id, r.seq, json.loads(r.events_json))
                for r in conn.execute(q.order_by(parts_t.c.seq, parts_t.c.user_id))]


def load_catalog(ledger: Ledger) -> dict[str, tuple[str, str]]:
    """item id → (title, categories): what the prompts name items by."""
    with ledger.engine.connect() as conn:
        return {r.item_id: (r.title, r.categories) for r in conn.execute(select(items_t))}


def done_summaries(ledger: Ledger, pv: str, llm_id: str) -> dict[int, str]:
    """partition id → summary of every done partition for (pv, llm_id), other workers' included."""
    with ledger.engine.connect() as conn:
        return dict(conn.execute(select(int_t.c.partition_id, int_t.c.summary).where(
            int_t.c.prompt_version == pv, int_t.c.llm_id == llm_id, int_t.c.status == "done")).all())


def _attempts(conn: Connection, ctx: RunContext, ids: list[int]) -> dict[int, int]:
    """Tries already recorded (failed rows of earlier runs) per partition id."""
    return dict(conn.execute(select(int_t.c.partition_id, int_t.c.attempts).where(
        int_t.c.partition_id.in_(ids or [-1]), int_t.c.prompt_version == ctx.pv,
        int_t.c.llm_id == ctx.llm.llm_id)).all())


def commit_batch(ctx: RunContext, parts: list[Part], out: BatchOutput) -> set[int]:
    """Write the batch's texts and vectors for the claims still ours; return their partition ids.

    Insert-or-nothing: a ``done`` row is never touched (its id, and so its vectors, stay put); only
    a ``failed`` row of an earlier run is replaced, in place, its ``attempts`` counting this try.
    """
    stamp = now_us()
    ledger, pv, llm_id, n = ctx.ledger, ctx.pv, ctx.llm.llm_id, len(parts)
    decoding = json.dumps(ctx.llm.decoding, sort_keys=True)
    with ctx.lease.transaction() as conn:
        accepted = ctx.lease.accept(conn, [x.id for x in parts])
        keep = [i for i, x in enumerate(parts) if x.id in accepted]
        tried = _attempts(conn, ctx, sorted(accepted))
        ledger.upsert(conn, int_t, [{
            "partition_id": parts[i].id, "prompt_version": pv, "llm_id": llm_id,
            "status": "done", "summary": out.summaries[i], "shift": out.shifts[i], "decoding": decoding,
            "prompt_tokens": out.tokens[i][0], "completion_tokens": out.tokens[i][1], "error": None,
            "attempts": tried.get(parts[i].id, 0) + 1, "run_id": ctx.run_id, "updated_us": stamp}
            for i in keep], ["partition_id", "prompt_version", "llm_id"], where=int_t.c.status != "done")
        ids = dict(conn.execute(select(int_t.c.partition_id, int_t.c.id).where(and_(
            int_t.c.partition_id.in_(list(accepted) or [-1]), int_t.c.prompt_version == pv,
            int_t.c.llm_id == llm_id))).all())
        ledger.insert_ignore(conn, vec_t, [{
            "interest_id": ids[parts[i].id], "encoder_id": ctx.enc.encoder_id, "dim": ctx.enc.dim,
            "summary_vec": out.vectors[i].tobytes(), "shift_vec": out.vectors[n + i].tobytes(),
            "created_us": stamp} for i in keep], ["interest_id", "encoder_id"])
        ledger.upsert(conn, audit_t, [{
            "partition_id": pid, "prompt_version": pv, "llm_id": llm_id, "kind": kind,
            "prompt_sha256": prompt_hash(messages),
            "prompt": cap_text(json.dumps(messages, ensure_ascii=False), _AUDIT_CHARS),
            "run_id": ctx.run_id, "created_us": stamp}
            for pid, kind, messages in out.prompts if pid in accepted],
            ["partition_id", "prompt_version", "llm_id", "kind"])
        ctx.lease.count(conn, partitions_done=len(keep),
                        llm_calls_committed=sum(parts[i].calls for i in keep),
                        rejected_commits=n - len(keep))
    return accepted


def record_failure(ctx: RunContext, parts: list[Part], exc: BaseException) -> None:
    """Mark the batch failed with the error and give up its claims; ``attempts`` counts tries."""
    message = sanitize(redact_text(f"{type(exc).__name__}: {exc}"), 2000)
    with ctx.lease.transaction() as conn:
        held = ctx.lease.release(conn, [x.id for x in parts])  # first: the write lock on SQLite
        tried = _attempts(conn, ctx, [x.id for x in parts])
        ctx.ledger.upsert(conn, int_t, [{
            "partition_id": x.id, "prompt_version": ctx.pv, "llm_id": ctx.llm.llm_id,
            "status": "failed", "summary": None, "shift": None,
            "decoding": json.dumps(ctx.llm.decoding, sort_keys=True),
            "prompt_tokens": 0, "completion_tokens": 0, "error": message,
            "attempts": tried.get(x.id, 0) + 1, "run_id": ctx.run_id, "updated_us": now_us()}
            for x in parts if x.id in held], ["partition_id", "prompt_version", "llm_id"],
            where=int_t.c.status != "done")


def fill_vectors(ctx: RunContext) -> int:
    """Vectors for texts already generated but not yet encoded by *this* text encoder.

    A new text encoder must not cost a single LLM call: the texts are in the ledger.
    """
    enc, cfg = ctx.enc, ctx.cfg
    q = (select(int_t.c.id, int_t.c.summary, int_t.c.shift)
         .select_from(int_t.join(parts_t, parts_t.c.id == int_t.c.partition_id)
                      .outerjoin(vec_t, and_(vec_t.c.interest_id == int_t.c.id,
                                             vec_t.c.encoder_id == enc.encoder_id)))
         .where(int_t.c.prompt_version == ctx.pv, int_t.c.llm_id == ctx.llm.llm_id,
                int_t.c.status == "done", vec_t.c.id.is_(None)))
    if cfg.users:
        q = q.where(parts_t.c.user_id.in_(cfg.users))
    with ctx.ledger.engine.connect() as conn:
        todo = conn.execute(q).all()
    chunk = max(cfg.batch_size, 64)
    for i in range(0, len(todo), chunk):
        rows = todo[i:i + chunk]
        vecs = encode_texts(enc, [r.summary for r in rows] + [r.shift for r in rows], ctx.summary)
        with ctx.ledger.begin() as conn:
            # Insert-or-nothing: a worker that filled the same texts first keeps its rows.
            ctx.ledger.insert_ignore(conn, vec_t, [{
                "interest_id": r.id, "encoder_id": enc.encoder_id, "dim": enc.dim,
                "summary_vec": vecs[j].tobytes(), "shift_vec": vecs[len(rows) + j].tobytes(),
                "created_us": now_us()} for j, r in enumerate(rows)], ["interest_id", "encoder_id"])
    return len(todo)


def settle_batch(ctx: RunContext, done: Finished) -> Settled:
    """Commit a finished batch, record it failed, or release a lost one."""
    s, parts, outcome = ctx.summary, done.parts, done.outcome
    if isinstance(outcome, LostBatch):
        # Nothing was committed: give the claims back so the next run need not wait for a lease.
        ctx.lease.release_all([x.id for x in parts])
        s.partitions_lost += len(parts)
        s.errors.append(redact_text(outcome.reason)[:300])
        return Settled(given_up=True)
    if isinstance(outcome, BaseException):
        if isinstance(outcome, LLMUnavailable) or not isinstance(outcome, _BATCH_ERRORS):
            # The backend is down, not this batch bad (or a bug): stop, mark nothing failed, and
            # let the next run (or another worker, at once) pick up exactly here.
            raise outcome
        record_failure(ctx, parts, outcome)
        s.failed += len(parts)
        s.errors.append(redact_text(f"{type(outcome).__name__}: {outcome}")[:300])
        return Settled(given_up=True)
    accepted = commit_batch(ctx, parts, outcome)
    s.rejected_commits += len(parts) - len(accepted)
    committed = {}
    for i, x in enumerate(parts):
        if x.id in accepted:
            committed[x.id] = outcome.summaries[i]
            s.partitions_done += 1
            s.vectors_written += 1
            s.prompt_tokens += outcome.tokens[i][0]
            s.completion_tokens += outcome.tokens[i][1]
    return Settled(committed)
