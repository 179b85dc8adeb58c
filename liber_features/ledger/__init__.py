"""Ledger: the SQL source of truth (SQLite by default, PostgreSQL in production).

``tables`` defines the schema, ``store`` opens it, ``migrate`` creates or upgrades it on open
(Alembic scripts in ``migrations/``), ``runs`` tracks runs and settings fixed on first use,
``fieldrules`` the id and text rules every writer shares, ``bulk`` the hot path's COPY and key look-ups.
"""
