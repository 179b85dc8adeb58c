"""Event → ledger commit and event → online write latencies, on the broker's own clock.

Each time starts when the broker stored the event (``Delivery.broker_us``) and ends at the ledger
commit that holds it (``Consumer(on_commit=...)``) or at the end of the online write that carried
its user's cache (``Flusher(on_flush=...)``). ``liber demo --stream`` prints them; bench_stream
measures with them.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = ["Freshness", "percentiles"]


def percentiles(ms: list[float]) -> dict[str, float | int]:
    """n, p50 / p99 / max in ms (rounded to 0.1); only n = 0 when nothing was measured."""
    a = np.asarray(ms, dtype=float)
    if not len(a):
        return {"n": 0}
    return {"n": int(len(a)), "p50": round(float(np.percentile(a, 50)), 1),
            "p99": round(float(np.percentile(a, 99)), 1), "max": round(float(a.max()), 1)}


class Freshness:
    """Pass ``on_commit`` to the consumer and ``on_flush`` to its flusher; read the lists after."""

    def __init__(self) -> None:
        self.commit_ms: list[float] = []
        self.online_ms: list[float] = []
        self._waiting: dict[str, list[int]] = {}  # user → broker times committed, not yet online

    def on_commit(self, ev: pd.DataFrame, commit_us: int) -> None:
        broker_us = ev["broker_us"].to_numpy()
        self.commit_ms.extend(((commit_us - broker_us) / 1000).tolist())
        for user, b in zip(ev["user_id"], broker_us):
            self._waiting.setdefault(user, []).append(int(b))

    def on_flush(self, users: list[str], done_us: int) -> None:
        for u in users:
            self.online_ms.extend((done_us - b) / 1000 for b in self._waiting.pop(u, []))

    def summary(self) -> dict[str, dict]:
        return {"commit_ms": percentiles(self.commit_ms), "online_ms": percentiles(self.online_ms)}
