"""UIL — User Interest Learning: once per sealed partition, an LLM summary then a shift, then vectors.

torch-free: the job drives any ``LLM`` / ``TextEncoder`` (``encoders.uil`` supplies the real ones).
``interest`` is the loop (one screen), ``scheduler`` decides which partitions go next, ``batch``
generates one batch, ``interest_store`` reads and writes the ledger for it, ``context`` is the run
they share, ``types`` the types they all import, ``claims`` the leases that let several workers
share a ledger, ``prompts`` the versioned templates, ``rayjob`` the Ray driver.
"""
