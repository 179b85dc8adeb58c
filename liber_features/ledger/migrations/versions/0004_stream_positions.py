"""Add ``stream_positions``: where each broker source was consumed up to, committed with the events.

``liber stream`` saves a source's position in the same transaction as the events it read, before it
acks the broker: the ledger, not the broker, says how far the stream is in the ledger. One row per
(source, shard): NATS and Redis Streams have one shard (``''``), Kafka one per partition. A new
table only, so an older ledger upgrades without touching its rows.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    schema = op.get_context().version_table_schema
    op.create_table(
        "stream_positions",
        sa.Column("source", sa.String(256), primary_key=True),
        sa.Column("shard", sa.String(64), primary_key=True),
        sa.Column("position", sa.Text, nullable=False),
        sa.Column("position_offset", sa.BigInteger, nullable=False, server_default="-1"),
        sa.Column("stream_time_us", sa.BigInteger),
        sa.Column("events_total", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("quarantined_total", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("updated_us", sa.BigInteger, nullable=False),
        schema=schema,
    )


def downgrade() -> None:
    op.drop_table("stream_positions", schema=op.get_context().version_table_schema)
