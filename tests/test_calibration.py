"""Platt scaling (encoders/ctr/calibration.py): recovers a known scale, keeps the ranking, is fitted
on validation only and travels in the model."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from modelkit import random_item_text, small_training_set

from encoders.ctr.calibration import fit_calibration
from liber_features.features.repo import LiberFeatureConfig

SHAPE = LiberFeatureConfig(memory_slots=3, vector_dim=4, history_length=6)


def test_recovers_the_scale_and_bias_of_a_known_model():
    rng = np.random.default_rng(0)
    z = rng.standard_normal(200_000)
    y = (rng.random(z.size) < 1 / (1 + np.exp(-(0.4 * z - 0.7)))).astype(np.float32)
    a, b = fit_calibration(z, y)
    assert abs(a - 0.4) < 0.01 and abs(b + 0.7) < 0.01


def test_identity_where_it_cannot_fit_or_would_reverse_the_order():
    z = np.linspace(-2, 2, 100)
    assert fit_calibration(z, np.ones(100)) == (1.0, 0.0)
    assert fit_calibration(z, (z < 0).astype(np.float32)) == (1.0, 0.0)  # a < 0: the ranking is kept


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    ts = small_training_set(tmp_path_factory.mktemp("calibration"), SHAPE)[1]
    text = random_item_text(ts)
    return ts, text


@pytest.mark.slow  # trains three small models
def test_fitted_on_validation_only_and_the_ranking_unchanged(small):
    from encoders.ctr.side import side_rows
    from encoders.ctr.train import Batches, TrainConfig, predict, train

    ts, text = small
    side = side_rows(ts, text)
    cfg = dict(backbone="din", liber="both", epochs=2, batch_size=64, device="cpu")
    plain = train(ts, text, TrainConfig(**cfg, calibrate=False), log=lambda _m: None, side=side)
    cal = train(ts, text, TrainConfig(**cfg), log=lambda _m: None, side=side)
    val = np.flatnonzero(ts.mask("validation"))
    data = Batches(ts, (ts.summary_table, ts.shift_table), torch.device("cpu"), side)
    a, b = fit_calibration(predict(plain.model, data, val, logits=True), ts.label[val])
    assert cal.model.calibration.tolist() == pytest.approx([a, b], abs=1e-6) and (a, b) != (1.0, 0.0)
    # Same seed, same weights: only the last affine map differs, so AUC and GAUC are the same.
    assert cal.validation["auc"] == pytest.approx(plain.validation["auc"], abs=1e-9)
    assert cal.test["gauc"] == pytest.approx(plain.test["gauc"], abs=1e-9)
    assert cal.validation["logloss"] < plain.validation["logloss"]
    # Every test label flipped: the calibration (and so the model) is the same.
    flipped = dataclasses.replace(ts, label=np.where(ts.mask("test"), 1 - ts.label, ts.label).astype(ts.label.dtype))
    again = train(flipped, text, TrainConfig(**cfg), log=lambda _m: None, side=side)
    assert torch.equal(again.model.calibration, cal.model.calibration)
