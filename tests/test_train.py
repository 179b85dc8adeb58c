"""The training loop's regularisers (encoders/ctr/train.py): TrainConfig.dropout reaches the
backbones' MLP dropout, and TrainConfig.embedding_l2 adds exactly its penalty on the batch's user
and candidate item-id rows."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from modelkit import random_item_text, small_training_set
from pydantic import ValidationError

from encoders.ctr.train import DROPOUTS, Batches, TrainConfig, batch_loss, build_model, train
from liber_features.features.repo import LiberFeatureConfig

SHAPE = LiberFeatureConfig(memory_slots=3, vector_dim=4, history_length=6)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    ts = small_training_set(tmp_path_factory.mktemp("train"), SHAPE)[1]
    text = random_item_text(ts)
    return ts, text


@pytest.mark.parametrize("backbone", ["din", "dcnv2"])
def test_dropout_reaches_every_dropout_module_of_the_backbone(small, backbone):
    ts, text = small
    for p in (0.0, 0.37):
        model = build_model(TrainConfig(backbone=backbone, dropout=p, side=False), ts, text)
        drops = [m for m in model.modules() if isinstance(m, torch.nn.Dropout)]
        assert drops and all(m.p == p for m in drops)


@pytest.mark.parametrize("backbone", ["din", "dcnv2"])
def test_default_dropout_is_the_backbones_and_saved_resolved(small, backbone):
    ts, text = small
    cfg = TrainConfig(backbone=backbone, side=False)
    assert cfg.dropout == DROPOUTS[backbone] and cfg.embedding_l2 == 0.0
    assert TrainConfig(**cfg.model_dump()).dropout == DROPOUTS[backbone]  # a checkpoint's config: the value
    model = build_model(cfg, ts, text)
    assert all(m.p == DROPOUTS[backbone] for m in model.modules() if isinstance(m, torch.nn.Dropout))


def test_dropout_and_embedding_l2_are_bounded():
    for bad in ({"dropout": 1.0}, {"dropout": -0.1}, {"embedding_l2": -1e-6}):
        with pytest.raises(ValidationError):
            TrainConfig(**bad)


@pytest.mark.parametrize("backbone", ["din", "dcnv2"])
def test_embedding_l2_adds_exactly_its_penalty_on_the_batch_rows(small, backbone):
    ts, text = small
    model = build_model(TrainConfig(backbone=backbone, side=False), ts, text).eval()  # eval: no dropout noise
    data = Batches(ts, (ts.summary_table, ts.shift_table), torch.device("cpu"))
    idx = torch.arange(0, min(64, len(ts.label)))
    bce = torch.nn.BCEWithLogitsLoss()
    base = batch_loss(model, data, idx, 0.0, bce)
    with torch.no_grad():  # by hand, from the tables: the user row and the candidate's id row
        users = model.users.weight[data.user[idx]].pow(2).sum(-1)
        items = model.items.ids.weight[data.item[idx]].pow(2).sum(-1)
        expected = (users + items).mean()
    assert expected > 0
    for l2 in (1e-3, 0.5):
        got = batch_loss(model, data, idx, l2, bce)
        assert float(got - base) == pytest.approx(l2 * float(expected), rel=1e-5)


def test_train_applies_embedding_l2(small):
    """The loop itself takes the penalty: the trained rows come out shorter, everything else equal."""
    ts, text = small
    norms = []
    for l2 in (0.0, 1.0):
        cfg = TrainConfig(backbone="din", liber="none", epochs=1, batch_size=64, device="cpu", side=False,
                          calibrate=False, embedding_l2=l2)
        r = train(ts, text, cfg, log=lambda _m: None)
        assert r.config.embedding_l2 == l2
        rows = np.unique(ts.user_idx[ts.mask("train")])
        norms.append(float(r.model.users.weight[torch.from_numpy(rows)].norm(dim=-1).mean()))
    assert norms[1] < norms[0]
