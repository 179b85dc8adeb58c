"""Paired user-bootstrap intervals (encoders/ctr/intervals.py)."""

from __future__ import annotations

import numpy as np
import pytest

from encoders.ctr.intervals import paired_user_bootstrap, verdict
from encoders.ctr.metrics import metrics


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    users = np.repeat([f"u{i}" for i in range(60)], 20)
    y = (rng.random(len(users)) < 0.5).astype(np.float32)
    # Probabilities, as models give (metrics() clips scores to (0, 1) for its LogLoss).
    signal = 1 / (1 + np.exp(-(2 * y - 1 + rng.normal(0, 1.5, len(y)))))
    return y, users, signal, rng


def test_points_are_the_metrics_of_the_whole_split_and_a_copy_differs_by_exactly_zero(data):
    y, users, signal, rng = data
    noise = rng.random(len(y))
    out = paired_user_bootstrap(y, users, {"a": [signal], "b": [signal.copy()], "n": [noise]},
                                [("a", "b"), ("a", "n")], n=200)
    same = out["a - b"]
    assert same["auc"] == {"delta": 0.0, "lo": 0.0, "hi": 0.0} and same["gauc"] == {"delta": 0.0, "lo": 0.0, "hi": 0.0}
    m_a, m_n = metrics(y, signal, users), metrics(y, noise, users)
    assert out["a - n"]["auc"]["delta"] == pytest.approx(m_a["auc"] - m_n["auc"], abs=1e-12)
    assert out["a - n"]["gauc"]["delta"] == pytest.approx(m_a["gauc"] - m_n["gauc"], abs=1e-12)
    assert 0 < out["a - n"]["auc"]["lo"] < out["a - n"]["auc"]["delta"] < out["a - n"]["auc"]["hi"]
    assert verdict(out["a - n"]["auc"]) == "higher" and verdict(same["auc"]) == "not distinguishable from zero"


def test_seeds_are_averaged_and_resampling_is_by_user(data):
    y, users, signal, rng = data
    other = np.clip(signal + rng.normal(0, 0.1, len(y)), 0.001, 0.999)
    out = paired_user_bootstrap(y, users, {"a": [signal, other], "b": [signal, signal]}, [("a", "b")], n=300)
    want = (metrics(y, other, users)["auc"] - metrics(y, signal, users)["auc"]) / 2
    assert out["a - b"]["auc"]["delta"] == pytest.approx(want, abs=1e-12)
    # Resampling users, not rows: with one user holding every sample there is no spread at all.
    one = paired_user_bootstrap(y, np.full(len(y), "u"), {"a": [signal], "n": [other]}, [("a", "n")], n=50)
    iv = one["a - n"]["auc"]
    assert iv["lo"] == pytest.approx(iv["delta"], abs=1e-12) and iv["hi"] == pytest.approx(iv["delta"], abs=1e-12)
    assert verdict({"lo": -0.2, "hi": -0.1}) == "lower"
