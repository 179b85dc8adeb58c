"""The ranking metrics every backbone is measured with: AUC, LogLoss (sklearn) and GAUC."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import log_loss, roc_auc_score

__all__ = ["metrics"]


def metrics(y: np.ndarray, p: np.ndarray, users: np.ndarray) -> dict[str, float]:
    """AUC, LogLoss (sklearn) and GAUC: per-user AUC weighted by the user's samples; users whose
    samples are all one class have no AUC and are skipped (and counted)."""
    p = np.clip(p.astype(np.float64), 1e-7, 1 - 1e-7)
    num = den = 0.0
    skipped = 0
    order = np.argsort(users, kind="stable")
    bounds = np.flatnonzero(np.r_[True, users[order][1:] != users[order][:-1], True])
    for a, b in zip(bounds[:-1], bounds[1:]):
        sel = order[a:b]
        if y[sel].min() == y[sel].max():
            skipped += 1
            continue
        num += roc_auc_score(y[sel], p[sel]) * len(sel)
        den += len(sel)
    return {"auc": float(roc_auc_score(y, p)), "logloss": float(log_loss(y, p, labels=[0, 1])),
            "gauc": float(num / den) if den else float("nan"), "gauc_users_skipped": skipped,
            "samples": len(y)}
