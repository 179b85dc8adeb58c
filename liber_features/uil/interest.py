"""UIL — the cascaded interest job: once per sealed partition, a summary, then a shift.

The job is torch-free: it drives any ``LLM`` and ``TextEncoder`` (``encoders/`` supplies the real
ones; tests may pass fakes). It runs in *waves*: a partition is ready when it has no output for
the current (prompt version, LLM id) and its predecessor's summary exists — so one wave holds
the next partition of many users, and batches mix users (``scheduler.py``).

Exactly once, with any number of workers on one ledger: a batch is claimed with a lease before
any LLM call (claims.py), and its texts and vectors commit in one transaction together with the
claim turning ``done`` — rejected if another worker took the lease over. A rerun makes zero LLM
calls for committed work; a worker killed mid-batch costs only that batch, redone by whoever
takes its expired lease. A batch whose generation raises is recorded as ``failed`` and released:
the next run (or another worker) retries it, this one does not.

Where a batch is *generated* (``batch.run_batch``) is a ``BatchRunner``: in this process one at a
time (``run_encode``), or on a pool of Ray actors with several batches in flight (``rayjob.py``).
Claiming, committing and the cascade order stay here, in ``encode_loop``, whichever runner generates.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Protocol

from tqdm import tqdm

from liber_features.ledger.store import Ledger
from liber_features.uil.batch import BatchJob, Finished, LostBatch, run_batch
from liber_features.uil.claims import poll_interval
from liber_features.uil.context import RunContext
from liber_features.uil.interest_store import (
    done_summaries,
    fill_vectors,
    load_catalog,
    load_partitions,
    settle_batch,
)
from liber_features.uil.prompts import prompt_version
from liber_features.uil.scheduler import Scheduler
from liber_features.uil.types import EncodeConfig, EncodeSummary, LLMLike, Part, TextEncoderLike

__all__ = ["BatchRunner", "EncodeConfig", "EncodeSummary", "InProcess", "LLMLike", "LostBatch", "OnProgress",
           "TextEncoderLike", "encode_loop", "encode_pass", "prompt_version", "run_encode"]


class BatchRunner(Protocol):
    """Where batches are generated. ``wait`` blocks until a batch finishes and returns the finished
    ones (none if the runner sent a lost one out again), each with its outcome: ``run_batch``'s
    output, the exception it raised, or a ``LostBatch``; it adds their LLM and encoder counters
    to ``s``."""

    def free(self) -> bool: ...

    def submit(self, job: BatchJob) -> None: ...

    def pending(self) -> bool: ...

    def wait(self, s: EncodeSummary) -> list[Finished]: ...


class InProcess:
    """One batch at a time, generated here by the caller's LLM and text encoder."""

    def __init__(self, llm: LLMLike, enc: TextEncoderLike, cfg: EncodeConfig) -> None:
        self.llm, self.enc, self.cfg = llm, enc, cfg
        self.job: BatchJob | None = None

    def free(self) -> bool:
        return self.job is None

    def pending(self) -> bool:
        return self.job is not None

    def submit(self, job: BatchJob) -> None:
        self.job = job

    def wait(self, s: EncodeSummary) -> list[Finished]:
        job, self.job = self.job, None
        try:
            return [Finished(job.parts, run_batch(job, self.llm, self.enc, self.cfg.prompts, s))]
        except Exception as exc:  # judged by settle_batch, which raises what is not a batch's fault
            return [Finished(job.parts, exc)]


#: ``on_progress(partitions done, partitions to do, LLM calls so far)``: what a caller shows.
OnProgress = Callable[[int, int, int], None]


def run_encode(ledger: Ledger, llm: LLMLike, enc: TextEncoderLike, cfg: EncodeConfig | None = None,
               *, progress: bool | None = None, on_progress: OnProgress | None = None) -> EncodeSummary:
    """Encode every ready partition (bounded by ``cfg.users`` / ``cfg.limit``).

    Safe to run as several workers on one ledger: each batch is claimed first (claims.py), so
    no partition is generated twice unless its worker died holding it.
    """
    cfg = cfg or EncodeConfig()
    return encode_loop(ledger, InProcess(llm, enc, cfg), llm, enc, cfg, progress=progress,
                       on_progress=on_progress)


def encode_loop(ledger: Ledger, runner: BatchRunner, llm: LLMLike, enc: TextEncoderLike,
                cfg: EncodeConfig, *, progress: bool | None = None, summary: EncodeSummary | None = None,
                params: dict[str, Any] | None = None, on_progress: OnProgress | None = None) -> EncodeSummary:
    """Claim ready batches, hand them to ``runner``, commit what comes back (one run in the ledger).

    ``params`` go into the run row next to the config; ``progress`` / ``on_progress`` as in
    :func:`encode_pass`, the one pass this run makes over what is sealed now.
    """
    ctx = RunContext.start(ledger, llm, enc, cfg, summary or EncodeSummary(), params)
    with ctx.running():
        ctx.summary.skipped_already_done = encode_pass(ctx, runner, progress=progress, on_progress=on_progress)
    return ctx.summary


def _never() -> bool:
    return False


def encode_pass(ctx: RunContext, runner: BatchRunner, *, progress: bool | None = None,
                on_progress: OnProgress | None = None, stop: Callable[[], bool] = _never,
                on_commit: Callable[[list[Part]], None] | None = None) -> int:
    """Encode what is sealed when the pass starts, within the run ``ctx``; return how many of
    those partitions were done already (by this run's earlier passes or anyone else).

    A batch is in flight from its claim to its commit; its partitions' successors wait for it
    (the cascade needs their summaries). Once ``stop()`` is true no batch is claimed: those in
    flight are committed, then the pass returns (``liber encode --follow`` stops so on a signal).
    ``on_commit(parts)`` runs after each batch that committed partitions, with those partitions.
    ``progress`` shows the tqdm bar (None: when stderr is a terminal); ``on_progress(done, total,
    llm_calls)`` is called once the work is known (done = 0) and after every settled batch.
    """
    ledger, cfg, s, lease, llm_id = ctx.ledger, ctx.cfg, ctx.summary, ctx.lease, ctx.llm.llm_id
    s.vectors_backfilled += fill_vectors(ctx)
    parts, catalog = load_partitions(ledger, cfg.users), load_catalog(ledger)
    sched = Scheduler(parts, done_summaries(ledger, ctx.pv, llm_id), batch_size=cfg.batch_size, limit=cfg.limit)
    bar = tqdm(total=sched.todo, unit="part", desc="encode", disable=None if progress is None else not progress)
    total, finished = sched.todo, 0  # for on_progress: a disabled bar counts nothing
    try:
        if on_progress is not None:
            on_progress(0, total, s.llm_calls)
        while True:
            while runner.free() and not stop() and (batch := sched.claim(lease)):
                lease.count_calls(sum(x.calls for x in batch))  # before the calls are made
                runner.submit(BatchJob(batch, sched.prev, catalog))
            if runner.pending():
                for done in runner.wait(s):
                    settled = settle_batch(ctx, done)
                    n = sched.finished(done.parts, settled)
                    bar.update(n)
                    finished += n
                    if n and on_commit is not None:
                        on_commit([x for x in done.parts if x.id in settled.summaries])
                bar.set_postfix(tok_s=f"{s.completion_tokens / max(s.seconds_llm, 1e-9):.1f}")
                if on_progress is not None:
                    on_progress(finished, total, s.llm_calls)
                continue
            if sched.budget <= 0 or stop():
                break
            # Nothing of ours in flight, nothing ready: other workers may have finished
            # partitions (ours to continue from), still hold some, or have died.
            sched.learn(done_summaries(ledger, ctx.pv, llm_id))
            waited_on_others = sched.retry_busy()
            if not sched.ready():
                if not lease.others_holding(cfg.users):
                    break
                time.sleep(poll_interval(cfg.lease_s))
            elif waited_on_others:  # what is ready may still be theirs: do not spin on it
                time.sleep(poll_interval(cfg.lease_s))
    finally:
        bar.close()
    return sched.skipped
