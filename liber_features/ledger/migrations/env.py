"""Alembic environment: runs the ledger's migrations on the connection ``ledger.migrate`` hands in.

Never opens a connection of its own: the caller has already taken the migration lock (a
PostgreSQL advisory lock, SQLite's write lock) in that connection's transaction, and every
revision runs inside that one transaction. The version table lives in the ledger's schema.
"""

from __future__ import annotations

from alembic import context

from liber_features.ledger.tables import metadata

connection = context.config.attributes["connection"]
schema = context.config.attributes.get("schema")
context.configure(connection=connection, target_metadata=metadata, version_table_schema=schema,
                  transactional_ddl=True)
with context.begin_transaction():
    context.run_migrations()
