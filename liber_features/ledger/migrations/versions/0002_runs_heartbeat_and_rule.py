"""Fold what existed only for lack of a column: the heartbeat moves onto ``runs``, and a ledger
without a stored partition rule gets its first ingest run's rule.

Release 0.1.0 added tables, never columns, so a run's heartbeat and counters lived in
``run_heartbeats``, and ``runs`` readers joined it and fell back to a default lease (and to the
run's summary) for runs recorded before heartbeats; ingest read the first ingest run's params when
``settings`` had no ``partition_rule``. This revision moves every ``run_heartbeats`` row onto its
run, gives runs without one what those fallbacks assumed (heartbeat = start, the default 300 s
lease, the counts of the run's summary, no call counted uncommitted), writes the missing rule, and
drops ``run_heartbeats`` — so the runtime fallbacks are gone.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-04
"""

from __future__ import annotations

import json
import time

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

DEFAULT_LEASE_US = 300_000_000  # what 0.1.0 judged runs without a heartbeat against (frozen)
_COUNTERS = ("partitions_done", "llm_calls", "llm_calls_committed", "rejected_commits")
_HEARTBEAT = ("worker", "lease_us", "heartbeat_us", *_COUNTERS)


def _runs(schema: str | None) -> sa.TableClause:
    return sa.table("runs", *(sa.column(c) for c in ("id", "kind", "started_us", "params", "summary",
                                                     *_HEARTBEAT)), schema=schema)


def _heartbeats(schema: str | None) -> sa.TableClause:
    return sa.table("run_heartbeats", *(sa.column(c) for c in ("run_id", *_HEARTBEAT)), schema=schema)


def _heartbeat_of(run: sa.Row, beat: sa.Row | None) -> dict[str, object]:
    if beat is not None:
        return {c: getattr(beat, c) for c in _HEARTBEAT}
    old = json.loads(run.summary or "{}")  # a finished run's summary has its counts
    calls = int(old.get("llm_calls", 0) or 0)
    return {"worker": None, "lease_us": DEFAULT_LEASE_US, "heartbeat_us": run.started_us,
            "partitions_done": int(old.get("partitions_done", 0) or 0), "llm_calls": calls,
            "llm_calls_committed": calls, "rejected_commits": 0}


def _fix_partition_rule(conn: sa.Connection, schema: str | None) -> None:
    settings = sa.table("settings", sa.column("key"), sa.column("value"), sa.column("run_id"),
                        sa.column("set_us"), schema=schema)
    if conn.execute(sa.select(settings.c.key).where(settings.c.key == "partition_rule")).first():
        return
    runs = _runs(schema)
    first = conn.execute(sa.select(runs.c.id, runs.c.params).where(runs.c.kind == "ingest")
                         .order_by(runs.c.id).limit(1)).first()
    rule = json.loads(first.params or "{}").get("rule") if first is not None else None
    if rule is not None:
        conn.execute(settings.insert().values(key="partition_rule", value=json.dumps(rule, sort_keys=True),
                                              run_id=first.id, set_us=time.time_ns() // 1000))


def upgrade() -> None:
    schema = op.get_context().version_table_schema
    for name in ("worker", "lease_us", "heartbeat_us"):
        op.add_column("runs", sa.Column(name, sa.String(256) if name == "worker" else sa.BigInteger),
                      schema=schema)
    for name in _COUNTERS:
        op.add_column("runs", sa.Column(name, sa.Integer, nullable=False, server_default="0"),
                      schema=schema)
    conn, runs, beats = op.get_bind(), _runs(schema), _heartbeats(schema)
    by_run = {b.run_id: b for b in conn.execute(sa.select(beats))}
    rows = [{"b_id": r.id, **{f"b_{k}": v for k, v in _heartbeat_of(r, by_run.get(r.id)).items()}}
            for r in conn.execute(sa.select(runs.c.id, runs.c.started_us, runs.c.summary))]
    if rows:
        conn.execute(runs.update().where(runs.c.id == sa.bindparam("b_id"))
                     .values({c: sa.bindparam(f"b_{c}") for c in _HEARTBEAT}), rows)
    op.drop_table("run_heartbeats", schema=schema)
    _fix_partition_rule(conn, schema)


def downgrade() -> None:
    schema = op.get_context().version_table_schema
    op.create_table(
        "run_heartbeats",
        sa.Column("run_id", sa.Integer, primary_key=True),
        sa.Column("worker", sa.String(256), nullable=False),
        sa.Column("lease_us", sa.BigInteger, nullable=False),
        sa.Column("heartbeat_us", sa.BigInteger, nullable=False),
        *(sa.Column(c, sa.Integer, nullable=False) for c in _COUNTERS), schema=schema)
    runs = _runs(schema)
    op.get_bind().execute(_heartbeats(schema).insert().from_select(
        ["run_id", *_HEARTBEAT], sa.select(runs.c.id, *(runs.c[c] for c in _HEARTBEAT))
        .where(runs.c.worker.is_not(None))))
    for name in reversed(_HEARTBEAT):
        op.drop_column("runs", name, schema=schema)
