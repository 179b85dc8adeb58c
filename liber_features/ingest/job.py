"""Ingestion: validated events → UBSP partitioning → the ledger, exactly once.

Work is done in chunks of users, one transaction per chunk: the chunk's new events, the
partitions they seal and the users' cache states commit together. A crash loses at most the
chunk in flight; a rerun of the same input finds the committed events in the ledger, counts
them as duplicates and carries on — so running the same ingest twice adds nothing.

Event ids are global (see ``events``): an id the ledger already holds is a duplicate whichever
user the new row names, so the events table and the users' caches always hold the same events.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import select
from tqdm import tqdm

from liber_features.errors import ConfigError
from liber_features.ingest.events import LoadedEvents
from liber_features.ingest.partition import CachedEvent, PartitionRule, SealedPartition, UserState, advance
from liber_features.ledger.bulk import copy_new, known_keys
from liber_features.ledger.runs import fix_setting
from liber_features.ledger.store import Ledger, now_us
from liber_features.ledger.store import events as events_t
from liber_features.ledger.store import items as items_t
from liber_features.ledger.store import partitions as parts_t
from liber_features.ledger.store import quarantine as quarantine_t
from liber_features.ledger.store import runs as runs_t
from liber_features.ledger.store import user_cache as cache_t

__all__ = ["IngestSummary", "Written", "check_rule", "ingest", "load_states", "partition_row", "save_states",
           "states_where", "write_events"]


@dataclass
class IngestSummary:
    """What one ingest did. ``read == accepted + duplicates + quarantined`` always holds."""

    read: int = 0
    accepted: int = 0
    duplicates: int = 0
    quarantined: int = 0
    catalog_quarantined: int = 0  # catalog rows rejected (not part of ``read``)
    late: int = 0
    users: int = 0
    partitions_sealed: int = 0
    cached_events: int = 0  # events waiting in caches, ledger-wide, after this run
    seconds: float = 0.0
    events_per_s: float = 0.0
    run_id: int = 0
    ledger: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_rule(ledger: Ledger, rule: PartitionRule) -> None:
    # Changing K halfway through a user's history would make replay disagree with streaming.
    # The rule is stored once, on first use, and every later run is checked against it — also
    # after a first run that crashed (its partitions exist all the same). A ledger from before
    # the settings table got the rule of its first ingest run from migration 0002.
    stored = fix_setting(ledger, "partition_rule", rule.model_dump())
    if stored != rule.model_dump():
        raise ConfigError(
            f"this ledger was partitioned with {stored}; got {rule.model_dump()}. "
            "Use the same rule (--k/--max-span) or a new ledger.")


def load_states(conn, user_ids: list[str]) -> dict[str, UserState]:
    """The persisted partitioner state of these users (new users get a fresh state)."""
    states = {u: UserState(user_id=u) for u in user_ids}
    states.update(states_where(conn, cache_t.c.user_id.in_(user_ids)))
    return states


def states_where(conn, condition) -> dict[str, UserState]:
    """The persisted states of the users ``condition`` (on ``user_cache``) selects, without
    naming them: a query of every user whose cache is not empty needs no list of bound ids."""
    return {row.user_id: UserState(user_id=row.user_id, next_seq=row.next_seq, last_seal_us=row.last_seal_us,
                                   cache=[CachedEvent.from_row(r) for r in json.loads(row.cache_json)],
                                   late_total=row.late_total)
            for row in conn.execute(select(cache_t).where(condition))}


def partition_row(p: SealedPartition, run_id: int) -> dict[str, Any]:
    return {"user_id": p.user_id, "seq": p.seq, "start_us": p.start_us, "end_us": p.end_us,
            "sealed_at_us": p.sealed_at_us, "n_events": len(p.events),
            "events_json": json.dumps([e.to_row() for e in p.events]),
            "content_hash": p.content_hash, "rule": p.rule, "run_id": run_id}


def _write_side_tables(ledger: Ledger, loaded: LoadedEvents, run_id: int) -> None:
    with ledger.begin() as conn:
        if loaded.catalog is not None and len(loaded.catalog):
            ledger.upsert(conn, items_t, loaded.catalog[["item_id", "title", "categories"]]
                          .to_dict("records"), ["item_id"])
        q = loaded.quarantine
        if loaded.catalog_quarantine is not None:
            q = pd.concat([q, loaded.catalog_quarantine], ignore_index=True)
        rows = [{"key": hashlib.sha1(f"{r.source}\x1f{r.row}\x1f{r.raw}".encode()).hexdigest(),
                 "run_id": run_id, "source": r.source, "row": int(r.row), "field": r.field,
                 "reason": r.reason, "raw": r.raw} for r in q.itertuples(index=False)]
        ledger.insert_ignore(conn, quarantine_t, rows, ["key"])


@dataclass
class Written:
    """What one ``write_events`` call committed (with its transaction)."""

    accepted: int
    duplicates: int
    late: int
    partitions_sealed: int
    states: list[UserState]  # the cache states of the users that got new events
    sealed: list[SealedPartition]


def write_events(ledger: Ledger, conn, batch: dict[str, list[CachedEvent]], rule: PartitionRule,
                 run_id: int, labels: dict[str, float] | None = None) -> Written:
    """Insert one batch of users' events into the ledger inside the caller's transaction ``conn``:
    drop ids the ledger holds already (duplicates), advance each user's cache (UBSP), insert the
    partitions sealed and save the new cache states.

    The one write step of file ingest (a chunk of users) and of the stream consumer (a fetched
    batch), so replay and streaming partition by the same code. ``batch`` maps a user to events of
    that user; an id seen earlier in the batch (for any user) is a duplicate too. The new rows are
    COPYed on PostgreSQL (``ledger.bulk``): a concurrent writer that inserts one of them meanwhile
    fails this transaction (``LedgerError``). The caller commits, or rolls everything back.
    ``labels``: explicit labels by event id (implicit feedback, ``ingest/feedback.py``); none: NULL.
    """
    labels = labels or {}
    seen = known_keys(conn, events_t.c.event_id, [e.event_id for events in batch.values() for e in events])
    new_events, new_parts, states, sealed = [], [], [], []
    duplicates = late = accepted = 0
    current = load_states(conn, sorted(batch))
    for user in sorted(batch):
        fresh = []
        for e in batch[user]:  # ids are global: a second copy in the batch, any user's, is a duplicate
            if e.event_id not in seen:
                seen.add(e.event_id)
                fresh.append(e)
        duplicates += len(batch[user]) - len(fresh)
        if not fresh:
            continue
        out = advance(current[user], fresh, rule)
        accepted += len(fresh)
        late += out.late
        sealed += out.sealed
        new_events += [{"event_id": e.event_id, "user_id": user, "item_id": e.item_id,
                        "ts_us": e.ts_us, "rating": e.rating, "run_id": run_id,
                        "event_type": e.event_type, "label": labels.get(e.event_id)} for e in fresh]
        new_parts += [partition_row(p, run_id) for p in out.sealed]
        states.append(out.state)
    # New by the look-up above, in this transaction: COPY on PostgreSQL (ledger/bulk.py).
    copy_new(conn, events_t, new_events)
    copy_new(conn, parts_t, new_parts)
    save_states(ledger, conn, states, run_id)
    return Written(accepted, duplicates, late, len(new_parts), states, sealed)


def save_states(ledger: Ledger, conn, states: list[UserState], run_id: int) -> None:
    """Upsert users' cache states (``load_states`` reads them back)."""
    ledger.upsert(conn, cache_t, [{
        "user_id": st.user_id, "next_seq": st.next_seq, "last_seal_us": st.last_seal_us,
        "cache_json": json.dumps([e.to_row() for e in st.cache]), "n_cached": len(st.cache),
        "late_total": st.late_total, "updated_run": run_id} for st in states], ["user_id"])


def ingest(loaded: LoadedEvents, ledger: Ledger, rule: PartitionRule, *, chunk_users: int = 256,
           progress: bool | None = None,
           on_caches: Callable[[list[UserState]], None] | None = None) -> IngestSummary:
    """Partition ``loaded.events`` into the ledger; ``on_caches`` gets the changed users' cache states
    (``features.caches.cache_frame`` turns them into the short-term view's rows)."""
    check_rule(ledger, rule)
    started = time.perf_counter()
    run_id = ledger.start_run("ingest", {"source": loaded.source, "layout": loaded.layout,
                                         "rule": rule.model_dump()})
    s = IngestSummary(read=loaded.read, duplicates=loaded.duplicates,
                      quarantined=len(loaded.quarantine), run_id=run_id,
                      catalog_quarantined=len(loaded.catalog_quarantine)
                      if loaded.catalog_quarantine is not None else 0)  # fmt: skip
    try:
        _write_side_tables(ledger, loaded, run_id)
        ev = loaded.events
        ts_us = ((ev["ts"] - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(microseconds=1)).to_numpy()
        groups = ev.groupby("user_id", sort=True).indices  # user → row positions
        users = list(groups)
        ids, items_, ratings = (ev["event_id"].to_numpy(), ev["item_id"].to_numpy(),
                                ev["rating"].to_numpy(dtype="float64"))
        # Implicit feedback (ingest/feedback.py); a frame without the columns is untyped, unlabelled.
        kinds = ev["event_type"].to_numpy() if "event_type" in ev else np.full(len(ev), None, object)
        labels = ev["label"].to_numpy(dtype="float64") if "label" in ev else np.full(len(ev), np.nan)
        # disable=None: tqdm shows the bar on a terminal only.
        bar = tqdm(total=len(ev), unit="ev", desc="ingest",
                   disable=None if progress is None else not progress)
        touched: list[UserState] = []
        for start in range(0, len(users), chunk_users):
            chunk = users[start:start + chunk_users]
            batch = {user: [CachedEvent(ts_us=int(ts_us[i]), event_id=str(ids[i]), item_id=str(items_[i]),
                                        rating=None if np.isnan(ratings[i]) else float(ratings[i]),
                                        event_type=None if pd.isna(kinds[i]) else str(kinds[i]))
                            for i in groups[user]] for user in chunk}
            label_of = {str(ids[i]): float(labels[i]) for u in chunk for i in groups[u] if not np.isnan(labels[i])}
            with ledger.begin() as conn:
                w = write_events(ledger, conn, batch, rule, run_id, label_of)
                # The run's heartbeat: a killed ingest shows as stale in `liber status`.
                conn.execute(runs_t.update().where(runs_t.c.id == run_id).values(heartbeat_us=now_us()))
            s.accepted += w.accepted
            s.duplicates += w.duplicates
            s.late += w.late
            s.users += len(w.states)
            s.partitions_sealed += w.partitions_sealed
            touched += w.states
            bar.update(sum(len(groups[u]) for u in chunk))
        bar.close()
        if on_caches is not None and touched:
            on_caches(touched)
    except BaseException as exc:
        ledger.finish_run(run_id, "failed", {"error": repr(exc)})
        raise
    s.ledger = ledger.counts()
    s.cached_events = s.ledger["ledger_cached_events"]
    s.seconds = round(time.perf_counter() - started, 3)
    s.events_per_s = round(s.read / s.seconds, 1) if s.seconds else 0.0
    ledger.finish_run(run_id, "ok", s.as_dict())
    return s
