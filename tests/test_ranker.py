"""A LightGBM ranker served online (serving/ranker.py, encoders/ctr/gbdt_export.py): the ONNX graph
scores what the booster scores, and the scorer's feature row for a user, item and moment is the
training builder's row for that sample, bit for bit, through Feast's online store."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from modelkit import encoded_repo, replay_until, small_world

from encoders.ctr.gbdt import GbdtConfig, GbdtResult, fit_gbdt, gbdt_features
from encoders.ctr.gbdt_export import GBDT_META, ITEM_TABLE, export_gbdt, save_gbdt
from liber_features.errors import ConfigError
from liber_features.features.memory import versions_of
from liber_features.features.repo import LiberFeatureConfig
from liber_features.model.card import ModelCard
from liber_features.model.inputs import STAT_NAMES
from liber_features.model.ranker_features import BASE, LIBER, RankerItems
from liber_features.serving.scorer import LiberScorer, ScorerConfig, onnx_session
from liber_features.training.prepare import checkpoint_meta

SHAPE = LiberFeatureConfig(memory_slots=2, vector_dim=4, history_length=5)


@pytest.fixture(autouse=True)
def small_shape(monkeypatch):
    monkeypatch.setenv("LIBER_MEMORY_SLOTS", "2")
    monkeypatch.setenv("LIBER_VECTOR_DIM", "4")
    monkeypatch.setenv("LIBER_HISTORY_LENGTH", "5")


class _Ledger:
    def safe_url(self) -> str:
        return "sqlite:///test"


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    """Users 1 and 5, encoded at K = 7; a LightGBM ranker trained on them and exported."""
    tmp = tmp_path_factory.mktemp("ranker")
    events, catalog, ledger, ts = small_world(tmp / "full", SHAPE, ("1", "5"), k=7)
    text = np.random.default_rng(0).standard_normal((ts.item_vocab.size, 4)).astype(np.float32)
    text[:2] = 0
    items = RankerItems.from_catalog(ts.item_vocab, ts.catalog, text)
    tables = (ts.summary_table, ts.shift_table)
    cfg = GbdtConfig(rounds=40, categorical=["user", "item"])  # categorical splits exported too
    booster, res, _ = fit_gbdt(ts, text, tables, cfg, items=items)
    result = GbdtResult.of(res, cfg, len(ts.label))
    versions = versions_of(ledger, ts.encoder_version)
    meta = checkpoint_meta(ts, result, versions, _Ledger()) | {"features": res["features"]}
    model_dir = tmp / "model"
    save_gbdt(booster, meta, items, model_dir)
    card = export_gbdt(model_dir)
    x, names = gbdt_features(ts, text, tables, items)
    return {"events": events, "catalog": catalog, "ts": ts, "booster": booster, "x": x, "names": names,
            "card": card, "model_dir": model_dir}


def test_onnx_graph_scores_what_the_booster_scores(full):
    booster, x, card = full["booster"], full["x"], full["card"]
    assert card.backbone == "lgbm" and card.features == full["names"] and card.item_table == ITEM_TABLE
    assert card.features[:len(BASE) + len(LIBER)] == BASE + LIBER
    assert [(t.name, t.shape) for t in card.inputs] == [("features", ["N", len(full["names"])])]
    session = onnx_session(full["model_dir"] / "model.onnx", 1)
    assert [o.name for o in session.get_outputs()] == ["score"]
    got = session.run(None, {"features": x})[0]
    want = booster.predict(x)
    assert got.shape == (len(x),) and np.abs(got - want).max() <= 1e-5
    assert want.std() > 0.01  # the trees split: parity is over scores that differ


def test_the_card_names_what_the_booster_reads(full, tmp_path):
    import shutil

    broken = tmp_path / "m"
    shutil.copytree(full["model_dir"], broken)
    meta = json.loads((broken / GBDT_META).read_text())
    (broken / GBDT_META).write_text(json.dumps(meta | {"features": meta["features"][:-1]}))
    with pytest.raises(ConfigError, match=f"takes {len(full['names'])} features, its metadata names "
                                          f"{len(full['names']) - 1}"):
        export_gbdt(broken)


@pytest.mark.parametrize("moment_rank", [40, 110])
def test_online_row_equals_the_training_row_at_the_same_moment(full, tmp_path, moment_rank):
    """Replay the events before a sample's moment into a live repo, materialize it as the CLI does,
    and score the sample's candidate through ``LiberScorer`` (Feast's read of the memory, cache and
    user statistics; the item statistics table): its feature row is the builder's row for that
    sample, and its score is the booster's."""
    ts, events = full["ts"], full["events"]
    u = "1"
    t, sample, _, repo, store = replay_until(tmp_path / "live", events, full["catalog"], ts, u, moment_rank, SHAPE)
    scorer = LiberScorer.load(full["model_dir"], repo.root, store=store, config=ScorerConfig(fetch="feast"),
                              shape=SHAPE)
    cand = [ts.item_ids[sample], "never-seen"]
    row = scorer.fetcher.fetch([u])[0]
    x = scorer.ranker.rows(scorer.user_side(u, row), row, scorer.items.index(cand), cand, at_us=t * 1_000_000)
    assert np.array_equal(x[0], full["x"][sample])  # bit for bit, every feature
    col = dict(zip(full["names"], x[0]))
    assert col["partition_count"] == ts.partition_count[sample] > 0
    assert col["user_label_count"] == np.count_nonzero((events.user_id == u) & (events.timestamp < t))
    assert col["seconds_since_previous"] == t - events[(events.user_id == u) & (events.timestamp < t)].timestamp.max()
    unseen = dict(zip(full["names"], x[1]))
    assert (unseen["item"], unseen["item_unseen"], unseen["hist_cos_mean"]) == (1, 1, 0)
    assert [unseen[n] for n in STAT_NAMES[:5]] == [col[n] for n in STAT_NAMES[:5]]  # the same user
    res = scorer.score(u, cand, at_us=t * 1_000_000)
    assert abs(res.scores[0] - full["booster"].predict(full["x"][sample:sample + 1])[0]) <= 1e-5
    assert res.encoder_version == ModelCard.load(full["model_dir"]).encoder_version and res.unknown_items == [1]


def test_ranker_scorer_runs_with_torch_and_lightgbm_blocked(full, tmp_path):
    """The boosted ranker is served with onnxruntime alone: no torch, no lightgbm."""
    import os
    import subprocess

    _, repo, _ = encoded_repo(tmp_path / "live", full["events"], full["catalog"], k=7, shape=SHAPE)
    code = f"""
import sys
sys.modules["torch"] = None  # any import of torch (or lightgbm) now fails
sys.modules["lightgbm"] = None
from liber_features.serving.scorer import LiberScorer, ScorerConfig
s = LiberScorer.load({str(full['model_dir'])!r}, {str(repo.root)!r}, config=ScorerConfig(fetch="feast"))
r = s.score("1", ["1", "3", "6"])
assert r.scores.shape == (3,) and r.scores.dtype.name == "float32" and r.cold_start and not r.degraded
print("ok", s.card.backbone)
"""
    env = {**os.environ, **repo.env, "LIBER_MEMORY_SLOTS": "2", "LIBER_VECTOR_DIM": "4", "LIBER_HISTORY_LENGTH": "5"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120,
                         check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "ok lgbm"
