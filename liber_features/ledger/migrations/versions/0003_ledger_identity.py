"""Give every ledger an identity: a UUID4 hex stored once in ``settings`` under ``ledger_id``.

The files a ledger derives into a Feast repo (the long-term table, the short-term cache history)
carry this id (``features/ownership.py``), so a second ledger pointed at the same repo is refused
instead of mixing its users into the first one's files. The id must exist before any file is
written and never change afterwards, so it is data, written here: a new ledger gets it on its
first open, a ledger made by an older release gets it on its upgrade. A ledger that somehow has
one already keeps it (the insert only runs when the key is missing).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-04
"""

from __future__ import annotations

import time
import uuid

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

KEY = "ledger_id"


def _settings(schema: str | None) -> sa.TableClause:
    return sa.table("settings", sa.column("key"), sa.column("value"), sa.column("run_id"),
                    sa.column("set_us"), schema=schema)


def upgrade() -> None:
    schema = op.get_context().version_table_schema
    conn, settings = op.get_bind(), _settings(schema)
    if conn.execute(sa.select(settings.c.key).where(settings.c.key == KEY)).first() is None:
        conn.execute(settings.insert().values(key=KEY, value=uuid.uuid4().hex, run_id=None,
                                              set_us=time.time_ns() // 1000))


def downgrade() -> None:
    # The id is removed with the revision: files stamped with it then read as another ledger's,
    # which is the safe side (refused, never mixed).
    schema = op.get_context().version_table_schema
    settings = _settings(schema)
    op.get_bind().execute(settings.delete().where(settings.c.key == KEY))
