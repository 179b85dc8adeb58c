"""Serving (torch-free, latency-critical): one online read per request, one onnxruntime call.

``fetch`` reads a user through Feast or the Redis fast path, ``scorer`` is ``LiberScorer``,
``service`` is ``liber serve`` (FastAPI).
"""
