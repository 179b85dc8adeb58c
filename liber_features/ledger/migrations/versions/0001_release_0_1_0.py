"""Release 0.1.0's schema (commit b064d38), frozen: what ``metadata.create_all`` made then.

A ledger made by that release has these tables and no ``alembic_version``; ``ledger.migrate``
checks its columns against :func:`v1_metadata` and runs this revision on it, which creates only the
tables it lacks (an older ledger's, exactly as the old ``create_all`` did) and keeps every row.

Revision ID: 0001
Revises:
Create Date: 2026-12-04
"""

from __future__ import annotations

from alembic import op
from sqlalchemy import (
    BigInteger,
    Column,
    Float,
    ForeignKey,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def v1_metadata() -> MetaData:
    """The 0.1.0 tables (never edit: later changes are later revisions).

    Without a schema, as 0.1.0 defined them: it mapped them into a PostgreSQL schema with
    ``schema_translate_map``, and its index names (``ix_claims_lease_until_us``) carry none.
    """
    meta = MetaData()
    Table(
        "runs", meta,
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("kind", String(16), nullable=False),
        Column("status", String(16), nullable=False),  # running | ok | failed
        Column("started_us", BigInteger, nullable=False),
        Column("finished_us", BigInteger),
        Column("params", Text),
        Column("summary", Text),
    )
    Table(
        "events", meta,
        # Kept for exactly-once ingestion (dedupe across runs) and for replay.
        Column("event_id", String(64), primary_key=True),
        Column("user_id", String(128), nullable=False, index=True),
        Column("item_id", String(128), nullable=False),
        Column("ts_us", BigInteger, nullable=False),
        Column("rating", Float),
        Column("run_id", Integer, nullable=False),
    )
    Table(
        "items", meta,
        Column("item_id", String(128), primary_key=True),
        Column("title", Text, nullable=False),
        Column("categories", Text, nullable=False),
    )
    Table(
        "partitions", meta,
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("user_id", String(128), nullable=False),
        Column("seq", Integer, nullable=False),
        Column("start_us", BigInteger, nullable=False),
        Column("end_us", BigInteger, nullable=False),
        Column("sealed_at_us", BigInteger, nullable=False, index=True),
        Column("n_events", Integer, nullable=False),
        Column("events_json", Text, nullable=False),  # [[event_id, item_id, ts_us, rating], ...]
        Column("content_hash", String(32), nullable=False),
        Column("rule", String(8), nullable=False),
        Column("run_id", Integer, nullable=False),
        UniqueConstraint("user_id", "seq", name="uq_partition_user_seq"),
    )
    Table(
        "user_cache", meta,
        Column("user_id", String(128), primary_key=True),
        Column("next_seq", Integer, nullable=False),
        Column("last_seal_us", BigInteger),
        Column("cache_json", Text, nullable=False),
        Column("n_cached", Integer, nullable=False),
        Column("late_total", Integer, nullable=False),
        Column("updated_run", Integer, nullable=False),
    )
    Table(
        "quarantine", meta,
        Column("id", Integer, primary_key=True, autoincrement=True),
        # sha1(source, row, raw): the same bad row quarantined twice is one row.
        Column("key", String(40), nullable=False, unique=True),
        Column("run_id", Integer, nullable=False),
        Column("source", Text, nullable=False),
        Column("row", BigInteger, nullable=False),
        Column("field", String(64), nullable=False),
        Column("reason", Text, nullable=False),
        Column("raw", Text, nullable=False),
    )
    Table(
        "interests", meta,
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("partition_id", Integer, ForeignKey("partitions.id"), nullable=False),
        Column("prompt_version", String(32), nullable=False),
        Column("llm_id", String(256), nullable=False),
        Column("status", String(8), nullable=False),  # done | failed
        Column("summary", Text),
        Column("shift", Text),
        Column("decoding", Text),
        Column("prompt_tokens", Integer, nullable=False, default=0),
        Column("completion_tokens", Integer, nullable=False, default=0),
        Column("error", Text),
        Column("attempts", Integer, nullable=False, default=1),
        Column("run_id", Integer, nullable=False),
        Column("updated_us", BigInteger, nullable=False),
        UniqueConstraint("partition_id", "prompt_version", "llm_id", name="uq_interest_version"),
    )
    Table(
        "vectors", meta,
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("interest_id", Integer, ForeignKey("interests.id"), nullable=False),
        Column("encoder_id", String(128), nullable=False),
        Column("dim", Integer, nullable=False),
        Column("summary_vec", LargeBinary, nullable=False),  # float32 little-endian
        Column("shift_vec", LargeBinary, nullable=False),
        Column("created_us", BigInteger, nullable=False),
        UniqueConstraint("interest_id", "encoder_id", name="uq_vector_encoder"),
    )
    # The tables below are new tables, never new columns on old ones: create_all adds missing tables
    # to an existing ledger (a pre-built SQLite file keeps working), it never adds columns.
    Table(
        "claims", meta,
        # One row per unit of encoder work, keyed like ``interests``. ``held`` rows belong to run_id
        # until lease_until_us; a ``done`` row is never claimed again. See claims.py.
        Column("partition_id", Integer, ForeignKey("partitions.id"), primary_key=True),
        Column("prompt_version", String(32), primary_key=True),
        Column("llm_id", String(256), primary_key=True),
        Column("run_id", Integer, nullable=False),
        Column("status", String(8), nullable=False),  # held | done
        Column("lease_until_us", BigInteger, nullable=False, index=True),
        Column("takeovers", Integer, nullable=False, default=0),
    )
    Table(
        "run_heartbeats", meta,
        # The heartbeat of a run (a row of its own: old ledgers' ``runs`` has no such column).
        Column("run_id", Integer, primary_key=True),
        Column("worker", String(256), nullable=False),  # host:pid
        Column("lease_us", BigInteger, nullable=False),
        Column("heartbeat_us", BigInteger, nullable=False),
        Column("partitions_done", Integer, nullable=False, default=0),
        Column("llm_calls", Integer, nullable=False, default=0),  # counted *before* each generation
        Column("llm_calls_committed", Integer, nullable=False, default=0),
        Column("rejected_commits", Integer, nullable=False, default=0),
    )
    Table(
        "settings", meta,
        # Ledger-wide settings fixed on first use (the partition rule): written once, then checked.
        Column("key", String(64), primary_key=True),
        Column("value", Text, nullable=False),
        Column("run_id", Integer),
        Column("set_us", BigInteger, nullable=False),
    )
    Table(
        "online_sync", meta,
        # Per (Feast project, feature view): the newest source row (created_at) known to be online.
        Column("project", String(128), primary_key=True),
        Column("view", String(128), primary_key=True),
        Column("synced_created_us", BigInteger, nullable=False),
        Column("updated_us", BigInteger, nullable=False),
        Column("rows_written", BigInteger, nullable=False, default=0),
    )
    Table(
        "locks", meta,
        # Named cross-process (and cross-host, on PostgreSQL) locks: a row held FOR UPDATE.
        Column("name", String(64), primary_key=True),
        Column("holder", String(256)),
        Column("at_us", BigInteger),
    )


    Table(
        "prompt_audit", meta,
        # What the model saw for each output: its own table, so existing ledgers gain it through
        # create_all (which adds missing tables, never missing columns).
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("partition_id", Integer, nullable=False),
        Column("prompt_version", String(32), nullable=False),
        Column("llm_id", String(256), nullable=False),
        Column("kind", String(8), nullable=False),  # summary | shift
        Column("prompt_sha256", String(64), nullable=False),  # prompts.prompt_hash of the messages
        Column("prompt", Text, nullable=False),  # the messages as JSON, capped
        Column("run_id", Integer, nullable=False),
        Column("created_us", BigInteger, nullable=False),
        UniqueConstraint("partition_id", "prompt_version", "llm_id", "kind", name="uq_prompt_audit"),
    )

    return meta


def _bind():  # noqa: ANN202 - the migration's connection, mapped into the ledger's schema
    schema = op.get_context().version_table_schema
    bind = op.get_bind()
    return bind.execution_options(schema_translate_map={None: schema}) if schema else bind


def upgrade() -> None:
    v1_metadata().create_all(_bind(), checkfirst=True)


def downgrade() -> None:
    v1_metadata().drop_all(_bind(), checkfirst=True)
