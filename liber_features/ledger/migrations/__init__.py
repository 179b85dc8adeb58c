"""Alembic scripts for the ledger schema: ``env.py`` and ``versions/`` (run by ``ledger.migrate``).

A package so setuptools ships it with the wheel; alembic finds it as
``liber_features.ledger:migrations``.
"""
