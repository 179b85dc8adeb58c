"""UIL — User Interest Learning: once per sealed partition, an LLM summary then a shift, then vectors.

torch-free: the job drives any ``LLM`` / ``TextEncoder`` (``encoders.uil`` supplies the real ones).
``interest`` is the loop, ``interest_store`` its ledger writes, ``claims`` the leases that let
several workers share a ledger, ``prompts`` the versioned templates, ``rayjob`` the Ray driver.
"""
