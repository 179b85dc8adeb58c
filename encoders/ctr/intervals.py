"""Paired bootstrap intervals over test users: is a difference in AUC or GAUC more than noise?

One test split of ~10k samples from 610 users: the AUC moves by about ±0.005 between splits, and
samples of one user are not independent. So the unit resampled is the *user* (all their test
samples go in or out together), and every model is scored on the same resampled users — the
interval of a difference then carries the split's noise once, not twice.

A resample is a multiplicity per user, so no rows are copied: AUC takes it as sample weights, and
GAUC (per-user AUC weighted by samples) reuses each user's own AUC, which a resample does not
change. With several seeds per model, a resample's value is the mean over seeds.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_auc_score

__all__ = ["Interval", "paired_user_bootstrap", "verdict"]

Interval = dict  # {"delta": float, "lo": float, "hi": float}


def _per_user(y: np.ndarray, p: np.ndarray, inv: np.ndarray, n_users: int) -> tuple[np.ndarray, np.ndarray]:
    """Each user's AUC (nan where their samples are one class) and sample count."""
    auc = np.full(n_users, np.nan)
    count = np.bincount(inv, minlength=n_users).astype(np.float64)
    order = np.argsort(inv, kind="stable")
    bounds = np.r_[0, np.cumsum(count).astype(np.int64)]
    for k in range(n_users):
        sel = order[bounds[k]:bounds[k + 1]]
        if 0 < y[sel].sum() < len(sel):
            auc[k] = roc_auc_score(y[sel], p[sel])
    return auc, count


def paired_user_bootstrap(y: np.ndarray, users: np.ndarray, preds: dict[str, list[np.ndarray]],
                          pairs: list[tuple[str, str]], n: int = 1000, seed: int = 0) -> dict[str, dict]:
    """``preds``: model → its test predictions, one array per seed. For each ``(a, b)`` in
    ``pairs``: ``ΔAUC = AUC(a) - AUC(b)`` and ``ΔGAUC`` (means over seeds) with 95 % intervals,
    keyed ``"a - b"``."""
    uniq, inv = np.unique(users, return_inverse=True)
    rng = np.random.default_rng(seed)
    mult = rng.multinomial(len(uniq), np.full(len(uniq), 1 / len(uniq)), size=n).astype(np.float64)
    per_user = {m: [_per_user(y, p, inv, len(uniq)) for p in ps] for m, ps in preds.items()}

    def auc(m: str, w: np.ndarray | None) -> float:
        return float(np.mean([roc_auc_score(y, p, sample_weight=None if w is None else w[inv])
                              for p in preds[m]]))

    def gauc(m: str, w: np.ndarray | None) -> float:
        vals = []
        for a, c in per_user[m]:
            weight = c * (1.0 if w is None else w)
            ok = ~np.isnan(a) & (weight > 0)
            vals.append(float((a[ok] * weight[ok]).sum() / weight[ok].sum()))
        return float(np.mean(vals))

    needed = {m for pair in pairs for m in pair}
    boots = {m: (np.array([auc(m, w) for w in mult]), np.array([gauc(m, w) for w in mult])) for m in needed}
    out = {}
    for a, b in pairs:
        da, dg = boots[a][0] - boots[b][0], boots[a][1] - boots[b][1]
        out[f"{a} - {b}"] = {
            "auc": {"delta": auc(a, None) - auc(b, None), "lo": float(np.percentile(da, 2.5)),
                    "hi": float(np.percentile(da, 97.5))},
            "gauc": {"delta": gauc(a, None) - gauc(b, None), "lo": float(np.percentile(dg, 2.5)),
                     "hi": float(np.percentile(dg, 97.5))},
        }
    return out


def verdict(iv: Interval) -> str:
    """The interval in words."""
    if iv["lo"] > 0:
        return "higher"
    if iv["hi"] < 0:
        return "lower"
    return "not distinguishable from zero"
