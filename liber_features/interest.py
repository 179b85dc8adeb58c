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
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import and_, select
from tqdm import tqdm

from .claims import Lease, poll_interval
from .errors import EncoderError, LiberError, LLMUnavailable, VectorShapeError
from .fieldrules import cap_text
from .ledger import Ledger, interests as int_t, items as items_t, now_us, partitions as parts_t
from .ledger import prompt_audit as audit_t, vectors as vec_t
from .prompts import (FIRST_SHIFT, ItemLine, PromptConfig, prompt_hash, prompt_version, sanitize,
                      shift_messages, summary_messages)
from .redact import redact_text

__all__ = ["EncodeConfig", "EncodeSummary", "LLMLike", "TextEncoderLike", "run_encode"]


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
    for event_id, item_id, ts_us, rating in part.events:
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


def _calls(batch: list[_Part]) -> int:
    return len(batch) + sum(1 for x in batch if x.seq > 0)  # a summary each, a shift after seq 0


def run_encode(ledger: Ledger, llm: LLMLike, enc: TextEncoderLike, cfg: EncodeConfig | None = None,
               *, progress: bool | None = None) -> EncodeSummary:
    """Encode every ready partition (bounded by ``cfg.users`` / ``cfg.limit``).

    Safe to run as several workers on one ledger: each batch is claimed first (claims.py), so
    no partition is generated twice unless its worker died holding it.
    """
    cfg = cfg or EncodeConfig()
    started = time.perf_counter()
    pv = prompt_version(cfg.prompts)
    s = EncodeSummary(prompt_version=pv, llm_id=llm.llm_id)
    run_id = ledger.start_run("encode", {"prompt_version": pv, "llm_id": llm.llm_id,
                                         "encoder_id": enc.encoder_id, "decoding": llm.decoding,
                                         **cfg.model_dump(exclude={"prompts"})}, lease_s=cfg.lease_s)
    lease = Lease(ledger, run_id, pv, llm.llm_id, cfg.lease_s)
    status = "ok"
    bar = None
    try:
        with lease.heartbeat():
            s.vectors_written += _fill_vectors(ledger, enc, pv, llm.llm_id, cfg, s)
            parts, done, catalog = _load(ledger, cfg, pv, llm.llm_id)
            prev = {(x.user_id, x.seq): done[x.id] for x in parts if x.id in done}
            s.skipped_already_done = len(prev)
            failed_now: set[int] = set()
            busy: set[int] = set()  # claimed by another live worker when we last tried
            budget = cfg.limit if cfg.limit is not None else len(parts)
            bar = tqdm(total=min(budget, len(parts) - len(prev)), unit="part", desc="encode",
                       disable=None if progress is None else not progress)
            by_id = {x.id: x for x in parts}
            while budget > 0:
                ready = _ready(parts, prev, failed_now | busy)
                if not ready:
                    # Other workers may have finished partitions (ours to continue from) or died.
                    prev.update(_done_summaries(ledger, pv, llm.llm_id, by_id))
                    busy.clear()
                    if not _ready(parts, prev, failed_now):
                        if not lease.others_holding(cfg.users):
                            break
                        time.sleep(poll_interval(cfg.lease_s))
                    continue
                want = ready[:min(cfg.batch_size, budget)]
                mine = lease.claim([x.id for x in want])
                busy.update(x.id for x in want if x.id not in mine)
                batch = [x for x in want if x.id in mine]
                if not batch:
                    if len(want) == len(ready):  # everything ready is someone else's: wait a bit
                        time.sleep(poll_interval(cfg.lease_s))
                    continue
                budget -= len(batch)
                lease.count_calls(_calls(batch))
                try:
                    summaries, shifts, tokens, vecs, seen = _run_batch(batch, prev, catalog, llm, enc,
                                                                       cfg, s)  # fmt: skip
                except LLMUnavailable:
                    # The backend is down, not this batch bad: stop, mark nothing failed, and
                    # let the next run (or another worker, at once) pick up exactly here.
                    raise
                except (EncoderError, VectorShapeError, RuntimeError, ValueError, OSError) as exc:
                    _record_failure(ledger, lease, batch, pv, llm, run_id, exc)
                    failed_now.update(x.id for x in batch)
                    s.failed += len(batch)
                    s.errors.append(redact_text(f"{type(exc).__name__}: {exc}")[:300])
                    continue
                accepted = _commit(ledger, lease, batch, summaries, shifts, tokens, vecs, pv, llm,
                                   enc, run_id, seen)
                s.rejected_commits += len(batch) - len(accepted)
                for i, (x, text) in enumerate(zip(batch, summaries)):
                    if x.id in accepted:
                        prev[(x.user_id, x.seq)] = text
                        s.partitions_done += 1
                        s.prompt_tokens += tokens[i][0]
                        s.completion_tokens += tokens[i][1]
                bar.update(len(accepted))
                bar.set_postfix(tok_s=f"{s.completion_tokens / max(s.seconds_llm, 1e-9):.1f}")
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


def _done_summaries(ledger: Ledger, pv: str, llm_id: str, by_id: dict[int, _Part]) -> dict:
    """(user, seq) → summary of every done partition in scope (other workers' included)."""
    with ledger.engine.connect() as conn:
        rows = conn.execute(select(int_t.c.partition_id, int_t.c.summary).where(
            int_t.c.prompt_version == pv, int_t.c.llm_id == llm_id, int_t.c.status == "done")).all()
    return {(by_id[r.partition_id].user_id, by_id[r.partition_id].seq): r.summary
            for r in rows if r.partition_id in by_id}


_AUDIT_CHARS = 16_000  # a stored prompt is capped; its hash covers the whole of it


def _commit(ledger, lease, batch, summaries, shifts, tokens, vecs, pv, llm, enc, run_id,
            seen=()) -> set[int]:
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
        lease.count(conn, partitions_done=len(keep), llm_calls_committed=_calls([batch[i] for i in keep]),
                    rejected_commits=n - len(keep))
    return accepted


def _record_failure(ledger, lease, batch, pv, llm, run_id, exc: BaseException) -> None:
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


def _fill_vectors(ledger: Ledger, enc: TextEncoderLike, pv: str, llm_id: str, cfg: EncodeConfig,
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
