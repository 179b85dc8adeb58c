"""Ingest: event and catalog files → validated rows (bad ones quarantined) → UBSP partitions in the ledger.

``partition`` is UBSP (the short-term cache, sealed into long-term partitions at K events or by the
time rule); ``job`` commits a chunk of users at a time, exactly once.
"""
