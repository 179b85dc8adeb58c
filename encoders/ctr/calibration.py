"""Platt scaling of a backbone's logits, fitted on the validation split and kept inside the graph.

Early stopping picks the epoch with the best validation *AUC*, a ranking measure; the epoch it
picks is often already over-confident, which costs LogLoss (DIN with the side row: AUC 0.771 but
LogLoss 0.577 against the boosted tree's 0.576, docs/model.md). ``p = σ(a·z + b)`` with (a, b)
fitted by logistic regression of the labels on the validation logits fixes the calibration without
touching the order of any user's candidates (a > 0: AUC and GAUC are unchanged). The two numbers
are a buffer of the model (``Backbone.calibration``), so the exported graph and the scorer apply
them too. The test split is never read here.
"""

from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression

__all__ = ["fit_calibration"]


def fit_calibration(logits: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """(a, b) minimising the validation log loss of ``σ(a·logits + b)``; (1, 0) where it cannot
    be fitted (one class only) or would reverse the order (a ≤ 0: keep the model's ranking)."""
    y = np.asarray(labels)
    if len(np.unique(y)) < 2:
        return 1.0, 0.0
    # Unregularised: two parameters on ~10k validation rows need no shrinkage, and a penalty would
    # pull a towards 0 (flatter, worse-calibrated probabilities).
    lr = LogisticRegression(penalty=None, solver="lbfgs", max_iter=1000)
    lr.fit(np.asarray(logits, np.float64).reshape(-1, 1), y)
    a, b = float(lr.coef_[0, 0]), float(lr.intercept_[0])
    return (a, b) if a > 0 else (1.0, 0.0)
