"""The ledger's tables (SQLAlchemy Core): what each row means and which keys make writes idempotent.

This is the schema at the newest migration: ``ledger/migrations/versions`` reaches it from an
empty database or from release 0.1.0's ledger, and a test (``test_migrations``) proves the two
agree. A schema change is a new revision there *and* an edit here — columns may be added to old
tables, with a data migration that fills them for the rows already there. Times are integer
microseconds since the epoch (UTC), identical on SQLite and PostgreSQL.
"""

from __future__ import annotations

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

__all__ = [
    "claims", "events", "interests", "items", "locks", "metadata", "online_sync", "partitions",
    "projections", "prompt_audit", "quarantine", "runs", "settings", "stream_online", "stream_positions",
    "user_cache", "vectors",
]

metadata = MetaData()

runs = Table(
    "runs", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("kind", String(16), nullable=False),
    Column("status", String(16), nullable=False),  # running | ok | failed
    Column("started_us", BigInteger, nullable=False),
    Column("finished_us", BigInteger),
    Column("params", Text),
    Column("summary", Text),
    # The heartbeat (stamped every lease/3 while the run works) and the worker's counters. Runs
    # from before heartbeats got started_us and the default lease, and their summary's counts.
    Column("worker", String(256)),  # host:pid
    Column("lease_us", BigInteger),
    Column("heartbeat_us", BigInteger),
    Column("partitions_done", Integer, nullable=False, default=0, server_default="0"),
    # counted *before* each generation; committed ones once their batch is in the ledger
    Column("llm_calls", Integer, nullable=False, default=0, server_default="0"),
    Column("llm_calls_committed", Integer, nullable=False, default=0, server_default="0"),
    Column("rejected_commits", Integer, nullable=False, default=0, server_default="0"),
)
events = Table(
    "events", metadata,
    # Kept for exactly-once ingestion (dedupe across runs) and for replay.
    Column("event_id", String(64), primary_key=True),
    Column("user_id", String(128), nullable=False, index=True),
    Column("item_id", String(128), nullable=False),
    Column("ts_us", BigInteger, nullable=False),
    Column("rating", Float),
    Column("run_id", Integer, nullable=False),
    # Implicit feedback (revision 0005): view, purchase, … and an explicit 0/1 label; NULL when the
    # log has none (GroupLens ratings). Read by the training label rules.
    Column("event_type", String(32)),
    Column("label", Float),
)
items = Table(
    "items", metadata,
    Column("item_id", String(128), primary_key=True),
    Column("title", Text, nullable=False),
    Column("categories", Text, nullable=False),
)
partitions = Table(
    "partitions", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("user_id", String(128), nullable=False),
    Column("seq", Integer, nullable=False),
    Column("start_us", BigInteger, nullable=False),
    Column("end_us", BigInteger, nullable=False),
    Column("sealed_at_us", BigInteger, nullable=False, index=True),
    Column("n_events", Integer, nullable=False),
    # [[event_id, item_id, ts_us, rating], ...]; a typed event appends its event_type
    Column("events_json", Text, nullable=False),
    Column("content_hash", String(32), nullable=False),
    Column("rule", String(8), nullable=False),
    Column("run_id", Integer, nullable=False),
    UniqueConstraint("user_id", "seq", name="uq_partition_user_seq"),
)
user_cache = Table(
    "user_cache", metadata,
    Column("user_id", String(128), primary_key=True),
    Column("next_seq", Integer, nullable=False),
    Column("last_seal_us", BigInteger),
    Column("cache_json", Text, nullable=False),
    Column("n_cached", Integer, nullable=False),
    Column("late_total", Integer, nullable=False),
    Column("updated_run", Integer, nullable=False),
)
quarantine = Table(
    "quarantine", metadata,
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
interests = Table(
    "interests", metadata,
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
vectors = Table(
    "vectors", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("interest_id", Integer, ForeignKey("interests.id"), nullable=False),
    Column("encoder_id", String(128), nullable=False),
    Column("dim", Integer, nullable=False),
    Column("summary_vec", LargeBinary, nullable=False),  # float32 little-endian
    Column("shift_vec", LargeBinary, nullable=False),
    Column("created_us", BigInteger, nullable=False),
    UniqueConstraint("interest_id", "encoder_id", name="uq_vector_encoder"),
)
projections = Table(
    "projections", metadata,
    # D′ projections of a text encoder's vectors (uil/projection.py): the matrix and what it was
    # fitted on, keyed by the derived encoder id its vectors carry in ``vectors``.
    Column("encoder_id", String(128), primary_key=True),
    Column("source_encoder_id", String(128), nullable=False),
    Column("in_dim", Integer, nullable=False),
    Column("out_dim", Integer, nullable=False),
    Column("mean", LargeBinary, nullable=False),  # (in_dim,) float32 little-endian
    Column("components", LargeBinary, nullable=False),  # (in_dim, out_dim) float32, row-major
    Column("fitted_on", Text, nullable=False),  # JSON: rule, cut, partitions and vectors used
    Column("created_us", BigInteger, nullable=False),
)
claims = Table(
    "claims", metadata,
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
settings = Table(
    "settings", metadata,
    # Ledger-wide settings fixed on first use (the partition rule): written once, then checked.
    Column("key", String(64), primary_key=True),
    Column("value", Text, nullable=False),
    Column("run_id", Integer),
    Column("set_us", BigInteger, nullable=False),
)
online_sync = Table(
    "online_sync", metadata,
    # Per (Feast project, feature view): the newest source row (created_at) known to be online.
    Column("project", String(128), primary_key=True),
    Column("view", String(128), primary_key=True),
    Column("synced_created_us", BigInteger, nullable=False),
    Column("updated_us", BigInteger, nullable=False),
    Column("rows_written", BigInteger, nullable=False, default=0),
)
locks = Table(
    "locks", metadata,
    # Named cross-process (and cross-host, on PostgreSQL) locks: a row held FOR UPDATE.
    Column("name", String(64), primary_key=True),
    Column("holder", String(256)),
    Column("at_us", BigInteger),
)


prompt_audit = Table(
    "prompt_audit", metadata,
    # What the model saw for each output (one row per output and kind).
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


stream_positions = Table(
    "stream_positions", metadata,
    # Per broker source (``nats:STREAM:DURABLE``, ``redis:KEY:GROUP``) and shard (a Kafka partition;
    # '' otherwise): the newest position committed with its events, in the same transaction, before
    # the broker is acked. ``stream_time_us`` is the newest event time seen (the quiet-user sweep's clock).
    Column("source", String(256), primary_key=True),
    Column("shard", String(64), primary_key=True),
    Column("position", Text, nullable=False),
    Column("position_offset", BigInteger, nullable=False, default=-1, server_default="-1"),  # its integer form
    Column("stream_time_us", BigInteger),
    Column("events_total", BigInteger, nullable=False, default=0, server_default="0"),
    Column("quarantined_total", BigInteger, nullable=False, default=0, server_default="0"),
    Column("updated_us", BigInteger, nullable=False),
)
stream_online = Table(
    "stream_online", metadata,
    # Per ``liber stream`` run that writes caches online (``--repo``; revision 0007): the commit time
    # of the oldest change it committed and has not yet written online (NULL: none pending), how
    # many users wait, and its last successful online write. ``stream/online_mark.py`` keeps it.
    Column("run_id", Integer, primary_key=True),
    Column("source", String(256), nullable=False),
    Column("pending_since_us", BigInteger),
    Column("pending_users", Integer, nullable=False, default=0, server_default="0"),
    Column("written_us", BigInteger),
    Column("users_written", BigInteger, nullable=False, default=0, server_default="0"),
    Column("updated_us", BigInteger, nullable=False),
)
