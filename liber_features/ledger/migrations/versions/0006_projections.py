"""Add ``projections``: D′ projections of a text encoder's vectors, stored with what they were fitted on.

A projection's vectors are ordinary ``vectors`` rows under a derived encoder id
(``uil/projection.py``); this table keeps the matrix itself, so every D′ vector can be recomputed
and checked, and a refit is a new row (a new id) instead of an edit. Nothing existing changes.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    schema = op.get_context().version_table_schema
    op.create_table(
        "projections",
        sa.Column("encoder_id", sa.String(128), primary_key=True),
        sa.Column("source_encoder_id", sa.String(128), nullable=False),
        sa.Column("in_dim", sa.Integer, nullable=False),
        sa.Column("out_dim", sa.Integer, nullable=False),
        sa.Column("mean", sa.LargeBinary, nullable=False),
        sa.Column("components", sa.LargeBinary, nullable=False),
        sa.Column("fitted_on", sa.Text, nullable=False),
        sa.Column("created_us", sa.BigInteger, nullable=False),
        schema=schema,
    )


def downgrade() -> None:
    op.drop_table("projections", schema=op.get_context().version_table_schema)
