"""liber-features core (torch-free): LIBER user-interest features for Feast-backed rankers.

One stage per subpackage, in data-flow order (``docs/architecture.md``): ``ingest`` (validation,
quarantine, UBSP partitioning) → ``ledger`` (the SQL source of truth) → ``uil`` (the cascaded LLM
interest job) → ``features`` (the Feast views and the online writers) → ``model`` (the model
inputs and card shared by training and serving) → ``training`` (the leak-free set) → ``serving``
(the scorer and ``liber serve``); ``report`` and ``cli`` sit on top. ``errors``, ``settings``,
``redact`` and ``testing`` are shared by all of them. import-linter (``make test``) holds the order.
"""
