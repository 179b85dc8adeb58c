"""Features: the Feast side — the repo and its vector shape, the long-term memory and short-term cache
tables, the online writers (Feast and bulk Redis) and the sync state that never skips a row.
"""
