"""The stream consumer: fetch a batch → ONE ledger transaction → ack. Effectively once.

Per fetched batch, one transaction (``Ledger.begin``) takes the source's ``stream_positions`` row
first, then inserts the batch's events through ``ingest.job.write_events`` (the step file ingest
uses: global event ids, so a redelivered event is a duplicate and skipped), advances the users'
caches, seals partitions at K and by the time rule, quarantines bad messages with their position,
seals the caches of users who went quiet (the sweep, below), and saves the position. Only after
COMMIT is the batch acked. A crash before the commit redelivers the batch (nothing of it is in
the ledger); a crash between commit and ack redelivers it too, and every event is then a
duplicate. So delivery is at least once and the effect exactly once.

Taking the position row first serialises the commits of consumers sharing a source (PostgreSQL:
the row lock; SQLite: the write lock it starts): two processes on one durable or group share the
fetching, parsing and acking, and their transactions never interleave, so no event is counted
twice and no cache update is lost.

Sweep: with a time rule (``max_span_s``), every ``sweep_every_s`` the consumer seals each cache
whose oldest event is more than ``max_span_s`` older than the stream's clock (the newest event time
committed), stamped at that clock (``partition.seal_quiet``).

Online: with a flusher, each batch that leaves users waiting to be written online records, in the
same transaction, the commit time of the oldest such change (``online_mark.OnlineMark``; cleared
once a write leaves nothing pending), so ``liber status`` shows it and the next consumer of the
source writes the users a dead one left unwritten.

Stopping: SIGTERM (``ledger.stopping``) ends the loop between batches: a batch's commit and ack are
one critical section. A broker that goes away is retried with exponential backoff (tenacity), one
``warning:`` line per retry on stderr, never a traceback.
"""

from __future__ import annotations

import gc
import sys
import threading
import time
from collections.abc import Callable

import pandas as pd
from sqlalchemy import select
from tenacity import RetryCallState, Retrying, retry_if_exception_type, wait_exponential

from liber_features.errors import BrokerError
from liber_features.ingest.events import LoadConfig
from liber_features.ingest.job import check_rule, partition_row, save_states, states_where, write_events
from liber_features.ingest.partition import CachedEvent, PartitionRule, UserState, seal_quiet
from liber_features.ledger.bulk import copy_new
from liber_features.ledger.stopping import critical
from liber_features.ledger.store import Ledger, now_us
from liber_features.ledger.store import items as items_t
from liber_features.ledger.store import partitions as parts_t
from liber_features.ledger.store import quarantine as quarantine_t
from liber_features.ledger.store import runs as runs_t
from liber_features.ledger.store import stream_positions as positions_t
from liber_features.ledger.store import user_cache as cache_t
from liber_features.stream.config import StreamConfig, StreamSummary
from liber_features.stream.flusher import Flusher
from liber_features.stream.messages import parse_messages
from liber_features.stream.online_mark import OnlineMark
from liber_features.stream.source import Delivery, Source

__all__ = ["Consumer", "StreamConfig", "StreamSummary"]


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


class Consumer:
    """One source into one ledger (module docstring). ``on_commit(events, commit_us)`` sees each
    committed batch's accepted rows (with ``broker_us``): the benchmark's latency clock."""

    def __init__(self, source: Source, ledger: Ledger, rule: PartitionRule, cfg: StreamConfig | None = None,
                 *, flusher: Flusher | None = None, load_config: LoadConfig | None = None,
                 on_commit: Callable[[pd.DataFrame, int], None] | None = None,
                 say: Callable[[str], None] = _stderr) -> None:
        self.source, self.ledger, self.rule = source, ledger, rule
        self.cfg = cfg or StreamConfig()
        self.flusher, self.on_commit, self.say = flusher, on_commit, say
        self.load_config = load_config or LoadConfig()
        self.summary = StreamSummary()
        self.mark: OnlineMark | None = None  # with a flusher: what is committed but not online yet
        self._last_sweep = time.monotonic()
        with ledger.engine.connect() as conn:  # the catalog ingest wrote; none: items are not checked
            known = conn.execute(select(items_t.c.item_id)).scalars().all()
        self.catalog = pd.Series(known, dtype=object) if known else None
        source.bind_positions(self.stored_positions)

    def stored_positions(self) -> dict[str, int]:
        """The committed offset of each shard of this source (Kafka partitions), from the ledger."""
        with self.ledger.engine.connect() as conn:
            rows = conn.execute(select(positions_t.c.shard, positions_t.c.position_offset)
                                .where(positions_t.c.source == self.source.key, positions_t.c.shard != "")).all()
        return {r.shard: int(r.position_offset) for r in rows}

    # -- the loop ------------------------------------------------------------------------------
    def run(self) -> StreamSummary:
        check_rule(self.ledger, self.rule)
        s = self.summary
        s.run_id = self.ledger.start_run("stream", {"source": self.source.url, "key": self.source.key,
                                                    "rule": self.rule.model_dump(), **self.cfg.model_dump()})
        if self.flusher is not None:  # a dead consumer's unwritten users are this one's to write
            self.mark = OnlineMark(self.ledger, self.source.key, s.run_id)
            self.flusher.add(self.mark.adopt())
        # What is loaded by now (Feast, pandas, the registry, the caller's data) lives as long as the
        # loop; frozen out of the collector's generations, a full collection no longer walks it.
        # Measured (Redis -> PostgreSQL, 5,000 ev/s): one full collection mid-run took 187 ms, every
        # event fetched behind it waited that long, and it alone made the event -> online p99.
        gc.collect()
        gc.freeze()
        started = last_message = time.monotonic()
        try:
            while True:
                now = time.monotonic()
                if self.cfg.max_seconds is not None and now - started >= self.cfg.max_seconds:
                    s.stopped = "max-seconds"
                    break
                if self.cfg.until_idle_s is not None and now - last_message >= self.cfg.until_idle_s:
                    s.stopped = "idle"
                    break
                batch = self._fetch(started)
                if batch:
                    self.step(batch)
                    # Idle counts from the end of the last commit: a slow commit (a busy disk)
                    # must not read as a quiet stream and stop the run with messages pending.
                    last_message = time.monotonic()
                elif self.rule.max_span_s is not None and now - self._last_sweep >= self.cfg.sweep_every_s:
                    self.step([])  # a quiet stream still seals quiet users
                if self.flusher is not None:
                    self.flusher.flush_if_due()
                    self._mark_written()
        except BaseException as exc:
            s.stopped = "sigterm" if isinstance(exc, SystemExit) else f"error: {type(exc).__name__}"
            self._finish(started, "failed" if not isinstance(exc, SystemExit) else "ok")
            raise
        self._finish(started, "ok")
        return s

    def _finish(self, started: float, status: str) -> None:
        s = self.summary
        if self.flusher is not None:
            self.flusher.flush()
            self._mark_written()
            s.users_flushed = self.flusher.users_written
        s.seconds = round(time.monotonic() - started, 3)
        s.events_per_s = round(s.fetched / s.seconds, 1) if s.seconds else 0.0
        self.ledger.finish_run(s.run_id, status, s.as_dict())

    def _mark_written(self) -> None:
        if self.mark is not None:
            self.mark.written(len(self.flusher.pending), self.flusher.users_written)

    def _fetch(self, started: float) -> list[Delivery]:
        def stop(state: RetryCallState) -> bool:
            return self.cfg.max_seconds is not None and time.monotonic() - started >= self.cfg.max_seconds

        def report(state: RetryCallState) -> None:
            self.summary.broker_retries += 1
            pause = state.next_action.sleep if state.next_action else 0.0
            self.say(f"warning: {state.outcome.exception()}; retrying in {pause:.1f}s")

        retrying = Retrying(retry=retry_if_exception_type(BrokerError), stop=stop, before_sleep=report,
                            wait=wait_exponential(multiplier=0.1, max=self.cfg.retry_max_s), reraise=True)
        try:
            return retrying(self.source.fetch, self.cfg.batch, self.cfg.fetch_timeout_s)
        except BrokerError:
            if stop(None):  # the run's time is up while the broker is away: end it, reported above
                return []
            raise

    # -- one batch ---------------------------------------------------------------------------
    def step(self, batch: list[Delivery]) -> None:
        """Commit one fetched batch (possibly empty: a sweep only), then ack it."""
        s = self.summary
        parsed = parse_messages(batch, self.load_config, self.catalog)
        ev = parsed.events
        repeated = ev["event_id"].duplicated(keep="first")  # a redelivery inside one batch
        ev = ev[~repeated]
        ts_us = ((ev["ts"] - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(microseconds=1)).to_numpy()
        groups: dict[str, list[CachedEvent]] = {}
        labels = {}
        # Plain Python values (``tolist``): indexing numpy arrays per event cost as much as the rest.
        for eid, user, item, ts, rating, kind, label in zip(
                ev["event_id"].tolist(), ev["user_id"].tolist(), ev["item_id"].tolist(), ts_us.tolist(),
                ev["rating"].to_numpy(dtype="float64").tolist(), ev["event_type"].tolist(),
                ev["label"].to_numpy(dtype="float64").tolist()):
            groups.setdefault(user, []).append(CachedEvent(
                ts_us=ts, event_id=eid, item_id=item, rating=None if rating != rating else rating,  # NaN
                event_type=kind if isinstance(kind, str) else None if pd.isna(kind) else str(kind)))
            if label == label:  # not NaN
                labels[eid] = label
        newest: dict[str, Delivery] = {}  # per shard: the message with the highest offset
        for d in batch:
            if d.shard not in newest or d.offset > newest[d.shard].offset:
                newest[d.shard] = d
        # Heartbeat while committing: the broker must not redeliver a batch that is being committed.
        beat = threading.Timer(1.0, self.source.in_progress, [batch]) if batch else None
        since = None  # the commit time of the oldest change not yet online, if this batch records it
        with critical():  # commit and ack together: SIGTERM waits for both (ledger/stopping.py)
            if beat is not None:
                beat.daemon = True
                beat.start()
            try:
                with self.ledger.begin() as conn:
                    pos = self._take_position(conn)
                    w = write_events(self.ledger, conn, groups, self.rule, s.run_id, labels)
                    for row in parsed.quarantine:
                        row["run_id"] = s.run_id
                    self.ledger.insert_ignore(conn, quarantine_t, parsed.quarantine, ["key"])
                    clock = max(pos.stream_time_us or 0, int(ts_us.max())) if len(ts_us) else pos.stream_time_us
                    swept = self._sweep(conn, clock, s.run_id)
                    if self.mark is not None and (w.states or swept):  # committed here, online later
                        waiting = self.flusher.pending.keys() | {st.user_id for st in w.states + swept}
                        since = self.mark.committed(conn, len(waiting))
                    values = {"stream_time_us": clock, "updated_us": now_us(),
                              "events_total": pos.events_total + w.accepted,
                              "quarantined_total": pos.quarantined_total + len(parsed.quarantine)}
                    if "" in newest and newest[""].offset > pos.position_offset:
                        values.update(position=newest[""].position, position_offset=newest[""].offset)
                    conn.execute(positions_t.update().where(positions_t.c.source == self.source.key,
                                                            positions_t.c.shard == "").values(**values))
                    self._save_shards(conn, [d for shard, d in newest.items() if shard])
                    conn.execute(runs_t.update().where(runs_t.c.id == s.run_id).values(heartbeat_us=now_us()))
            finally:
                if beat is not None:
                    beat.cancel()
            commit_us = now_us()
            if since is not None:
                self.mark.confirm(since)
            if batch:
                try:
                    self.source.ack(batch)
                except BrokerError as exc:  # committed: a redelivery is a duplicate, skipped
                    self.say(f"warning: {exc} (the batch is committed; its redelivery will be skipped)")
        s.batches += 1 if batch else 0
        s.fetched += len(batch)
        s.accepted += w.accepted
        s.duplicates += w.duplicates + int(repeated.sum())
        s.quarantined += len(parsed.quarantine)
        s.late += w.late
        s.partitions_sealed += w.partitions_sealed + len(swept)
        s.swept += len(swept)
        if newest:
            s.position = max(newest.values(), key=lambda d: d.broker_us).position
        if self.flusher is not None:
            self.flusher.add(w.states + swept)
        if self.on_commit is not None and len(ev):
            self.on_commit(ev, commit_us)

    def _take_position(self, conn):
        """This source's position row, locked for the transaction (created on first use)."""
        key = self.source.key
        self.ledger.insert_ignore(conn, positions_t, [{
            "source": key, "shard": "", "position": "", "position_offset": -1, "stream_time_us": None,
            "events_total": 0, "quarantined_total": 0, "updated_us": now_us()}], ["source", "shard"])
        return conn.execute(select(positions_t).where(positions_t.c.source == key, positions_t.c.shard == "")
                            .with_for_update()).one()

    def _save_shards(self, conn, newest: list[Delivery]) -> None:
        """Per shard (Kafka partition), the newest committed offset: where a consumer resumes."""
        key = self.source.key
        for d in newest:
            self.ledger.insert_ignore(conn, positions_t, [{
                "source": key, "shard": d.shard, "position": "", "position_offset": -1,
                "stream_time_us": None, "events_total": 0, "quarantined_total": 0, "updated_us": now_us()}],
                ["source", "shard"])
            conn.execute(positions_t.update().where(
                positions_t.c.source == key, positions_t.c.shard == d.shard,
                positions_t.c.position_offset < d.offset).values(
                position=d.position, position_offset=d.offset, updated_us=now_us()))

    def _sweep(self, conn, clock: int | None, run_id: int) -> list[UserState]:
        """Seal quiet users' caches (module docstring); the states it changed."""
        if self.rule.max_span_s is None or clock is None:
            return []
        if time.monotonic() - self._last_sweep < self.cfg.sweep_every_s:
            return []
        self._last_sweep = time.monotonic()
        changed, rows = [], []
        for state in states_where(conn, cache_t.c.n_cached > 0).values():
            out = seal_quiet(state, clock, self.rule)
            if out.sealed:
                changed.append(out.state)
                rows += [partition_row(p, run_id) for p in out.sealed]
        if rows:
            copy_new(conn, parts_t, rows)
            save_states(self.ledger, conn, changed, run_id)
        return changed
