"""Add ``stream_online``: per stream consumer, the oldest change it committed and has not yet written online.

``liber stream --repo`` commits each batch to the ledger and writes the changed users' short-term
caches online afterwards (the flusher). What is committed but not yet online lived only in the
consumer's memory; this table makes it visible to ``liber status`` and to the next consumer of the
same source, which re-sends a dead consumer's unwritten users. One row per consumer run. A new
table only, so an older ledger upgrades without touching its rows.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    schema = op.get_context().version_table_schema
    op.create_table(
        "stream_online",
        sa.Column("run_id", sa.Integer, primary_key=True),
        sa.Column("source", sa.String(256), nullable=False),
        sa.Column("pending_since_us", sa.BigInteger),
        sa.Column("pending_users", sa.Integer, nullable=False, server_default="0"),
        sa.Column("written_us", sa.BigInteger),
        sa.Column("users_written", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("updated_us", sa.BigInteger, nullable=False),
        schema=schema,
    )


def downgrade() -> None:
    op.drop_table("stream_online", schema=op.get_context().version_table_schema)
