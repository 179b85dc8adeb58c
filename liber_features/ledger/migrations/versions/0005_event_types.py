"""Implicit feedback on events: an optional ``event_type`` and an optional explicit ``label``.

Logs of views, clicks, carts, purchases and impressions carry no star rating; the training label
rules (``training/labels.py``) read the type and the label, and the prompts of a domain that
words event types read the type from the partitions. Both columns are nullable: every row
already there is an untyped, unlabelled event — which is exactly what it was — so no data
migration is needed and a MovieLens ledger reads as before.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    schema = op.get_context().version_table_schema
    # Nullable columns without a default: a plain ALTER TABLE ADD COLUMN on SQLite and PostgreSQL,
    # instant whatever the table's size (no row is rewritten).
    op.add_column("events", sa.Column("event_type", sa.String(32), nullable=True), schema=schema)
    op.add_column("events", sa.Column("label", sa.Float, nullable=True), schema=schema)


def downgrade() -> None:
    # batch mode: SQLite drops a column by copying the table.
    schema = op.get_context().version_table_schema
    with op.batch_alter_table("events", schema=schema) as batch:
        batch.drop_column("label")
        batch.drop_column("event_type")
