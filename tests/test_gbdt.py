"""The LightGBM backbone's features (encoders/ctr/gbdt.py): point-in-time, and LIBER as affinities."""

from __future__ import annotations

import numpy as np
import pytest
from modelkit import small_training_set

from encoders.ctr.gbdt import BASE, LIBER, gbdt_features, train_gbdt
from liber_features.features.repo import LiberFeatureConfig
from liber_features.model.inputs import STAT_NAMES

SHAPE = LiberFeatureConfig(memory_slots=3, vector_dim=4, history_length=6)


@pytest.fixture(scope="module")
def ts(tmp_path_factory):
    return small_training_set(tmp_path_factory.mktemp("gbdt"), SHAPE)[1]


def test_liber_affinities_are_cosines_to_the_candidates_text(ts):
    text = np.random.default_rng(0).standard_normal((ts.item_vocab.size, 4)).astype(np.float32)
    text[:2] = 0
    plain, names0 = gbdt_features(ts, text, None)
    x, names = gbdt_features(ts, text, (ts.summary_table, ts.shift_table))
    assert names0[:len(BASE)] == BASE and names[:len(BASE) + len(LIBER)] == BASE + LIBER
    assert x.shape == (len(ts.label), len(names)) and plain.shape[1] == len(names) - len(LIBER)
    assert np.array_equal(x[:, :len(BASE)], plain[:, :len(BASE)])
    col = {n: x[:, i] for i, n in enumerate(names)}
    assert np.array_equal(col["partition_count"], ts.partition_count.astype(np.float32))
    unit = text / np.maximum(np.linalg.norm(text, axis=1, keepdims=True), 1e-30)
    full = int(np.flatnonzero(ts.partition_count >= 3)[0])
    rows = ts.slot_rows[full]
    s = ts.summary_table[rows] / np.linalg.norm(ts.summary_table[rows], axis=1, keepdims=True)
    cos = s @ unit[ts.item_idx[full]]
    assert col["summary_cos_newest"][full] == pytest.approx(cos[0], abs=1e-6)
    assert col["summary_cos_max"][full] == pytest.approx(cos.max(), abs=1e-6)
    assert col["summary_cos_mean"][full] == pytest.approx(cos.mean(), abs=1e-6)
    empty = np.flatnonzero(ts.partition_count == 0)
    assert empty.size and not x[empty][:, len(BASE) + 1:len(BASE) + len(LIBER)].any()
    # The statistics are the training set's point-in-time join (tests/test_stats.py checks that one
    # against brute force), column for column; the first sample of each user sees no earlier event.
    assert np.array_equal(np.column_stack([col[n] for n in STAT_NAMES]), ts.stats)
    first = [int(np.flatnonzero(ts.user_ids == u)[np.argmin(ts.ts_us[ts.user_ids == u])]) for u in ("1", "5", "8")]
    assert col["user_label_count"][first].tolist() == [0, 0, 0]
    assert col["seconds_since_previous"][first].tolist() == [-1, -1, -1]
    later = int(np.flatnonzero(ts.user_ids == "5")[-1])
    assert col["user_label_count"][later] == np.count_nonzero((ts.user_ids == "5") & (ts.ts_us < ts.ts_us[later]))


def test_boosted_backbone_trains_and_scores_the_test_split(ts):
    from encoders.ctr.metrics import metrics

    text = np.random.default_rng(0).standard_normal((ts.item_vocab.size, 4)).astype(np.float32)
    res, p = train_gbdt(ts, text, (ts.summary_table, ts.shift_table), rounds=30)
    test = ts.split == 2
    assert p.shape == (int(test.sum()),) and ((p > 0) & (p < 1)).all()
    assert res["test"] == metrics(ts.label[test], p, ts.user_ids[test])
    assert res["features"][:len(BASE) + len(LIBER)] == BASE + LIBER
    assert all(f.startswith("genre=") for f in res["features"][len(BASE) + len(LIBER):])
    # Fixed seed, two threads: the same model again, prediction for prediction.
    again, p2 = train_gbdt(ts, text, (ts.summary_table, ts.shift_table), rounds=30)
    assert np.array_equal(p, p2) and again["best_epoch"] == res["best_epoch"]


def test_vectors_of_another_space_are_refused(ts):
    from liber_features.errors import ConfigError

    text = np.zeros((ts.item_vocab.size, 8), np.float32)
    with pytest.raises(ConfigError, match=r"memory vectors \(D=4\) in the item text vectors' space \(D=8\)"):
        gbdt_features(ts, text, (ts.summary_table, ts.shift_table))
