"""ONNX export: onnxruntime equals torch on real samples, for 1 to 1,000 candidates; the card."""

from __future__ import annotations

import json

import numpy as np
import pytest
from modelkit import random_item_text, small_training_set

from liber_features.features.memory import versions_of
from liber_features.features.repo import LiberFeatureConfig
from liber_features.model.card import ModelCard
from liber_features.model.inputs import INPUT_NAMES

SHAPE = LiberFeatureConfig(memory_slots=3, vector_dim=4, history_length=6)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from encoders.ctr.side import side_rows
    from encoders.ctr.train import TrainConfig, train

    tmp = tmp_path_factory.mktemp("export")
    ledger, ts = small_training_set(tmp, SHAPE)
    text = random_item_text(ts)
    out = {}
    _SIDE[:] = [side_rows(ts, text)]
    for backbone in ("din", "dcnv2"):
        r = train(ts, text, TrainConfig(backbone=backbone, liber="both", epochs=2, batch_size=64,
                                        device="cpu"), log=lambda _m: None, side=_SIDE[0])
        out[backbone] = r
    # The versions of the vectors trained on, as `liber train` names them on the card.
    return ts, out, versions_of(ledger, ts.encoder_version)


def one_user(ts, i, items):
    """User ``i``'s feeds against ``items``, with real side rows (raw counts, seconds, rates) drawn
    from the training set, so the graph's own log-and-standardise is part of what parity checks."""
    rows = ts.slot_rows[i][None]
    summ, shift = ts.vectors(rows)
    dense = _SIDE[0].x[np.random.default_rng(len(items)).integers(0, len(_SIDE[0].x), len(items))]
    return {"user_idx": ts.user_idx[i:i + 1], "summary": summ, "shift": shift,
            "partition_count": ts.partition_count[i:i + 1], "hist_idx": ts.hist_idx[i:i + 1],
            "item_idx": items, "dense": dense}


_SIDE: list = []  # the side rows, built by the fixture


@pytest.mark.slow  # the module's fixture trains DIN and DCNv2
@pytest.mark.parametrize("backbone", ["din", "dcnv2"])
def test_onnx_matches_torch_for_1_100_1000_candidates(trained, backbone, tmp_path):
    import onnxruntime as ort

    from encoders.ctr.export import export_onnx, torch_scores
    from liber_features.training.prepare import checkpoint_meta

    ts, results, versions = trained
    r = results[backbone]
    meta = checkpoint_meta(ts, r, versions, _Ledger())
    card = export_onnx(r.model, meta, tmp_path)
    sess = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == [*INPUT_NAMES, "dense"]
    assert card.features == r.features and len(r.features) == len(_SIDE[0].names) > 20
    assert card.item_table == "ranker_items.npz"
    zero = int(np.flatnonzero(ts.partition_count == 0)[0])
    full = int(np.flatnonzero(ts.partition_count >= SHAPE.memory_slots)[0])
    rng = np.random.default_rng(1)
    for i in (zero, full):
        for n in (1, 100, 1000):
            items = rng.integers(1, ts.item_vocab.size, n).astype(np.int64)
            feeds = one_user(ts, i, items)
            got = sess.run(None, feeds)[0]
            want = torch_scores(r.model, feeds)
            assert got.shape == (n,) and got.dtype == np.float32
            assert np.abs(got - want).max() <= 1e-5
    # The card is what a scorer needs, and it round-trips.
    back = ModelCard.load(tmp_path)
    assert back == card and back.memory_slots == 3 and back.history_length == 6
    assert back.item_vocab == ts.item_vocab and back.oov_item_index == 1
    assert back.feature_service == "liber_ranker_v1" and back.opset >= 17
    assert [(t.name, t.shape) for t in back.inputs][-2:] == [("item_idx", ["N"]), ("dense", ["N", len(_SIDE[0].names)])]
    assert json.loads((tmp_path / "model_card.json").read_text())["backbone"] == backbone


class _Ledger:
    def safe_url(self):
        return "sqlite:///test"


@pytest.mark.slow  # the module's fixture trains DIN and DCNv2
def test_checkpoint_round_trips_under_weights_only_and_refuses_pickled_objects(trained, tmp_path):
    import torch

    from encoders.ctr.export import CHECKPOINT, load_checkpoint, save_checkpoint, torch_scores
    from liber_features.errors import ConfigError
    from liber_features.training.prepare import checkpoint_meta

    ts, results, versions = trained
    r = results["din"]
    meta = checkpoint_meta(ts, r, versions, _Ledger())
    feeds = one_user(ts, int(np.flatnonzero(ts.partition_count >= 2)[0]), np.arange(2, 40, dtype=np.int64))
    save_checkpoint(r.model, meta, tmp_path / "new")
    model, back = load_checkpoint(tmp_path / "new")
    assert back == meta and np.array_equal(torch_scores(model, feeds), torch_scores(r.model, feeds))
    # A checkpoint written before weights_only (same layout, torch.save of the raw meta) still loads.
    torch.save({"state": r.model.state_dict(), "item_text": r.model.items.text.cpu(), "meta": meta},
               (tmp_path / "old").mkdir() or tmp_path / "old" / CHECKPOINT)
    with pytest.raises(ConfigError, match="takes the side row, built from ranker_items.npz beside it: the file "
                                          "is missing"):
        load_checkpoint(tmp_path / "old")
    (tmp_path / "old" / "ranker_items.npz").write_bytes((tmp_path / "new" / "ranker_items.npz").read_bytes())
    old, _ = load_checkpoint(tmp_path / "old")
    assert np.array_equal(torch_scores(old, feeds), torch_scores(r.model, feeds))
    # Metadata that would need pickle (a numpy array) is refused when saving, and when loading.
    with pytest.raises(ConfigError, match="plain JSON types.*ndarray"):
        save_checkpoint(r.model, {**meta, "extra": np.zeros(2)}, tmp_path / "bad")
    torch.save({"state": r.model.state_dict(), "item_text": r.model.items.text.cpu(),
                "meta": {**meta, "extra": np.zeros(2)}}, (tmp_path / "bad").mkdir() or tmp_path / "bad" / CHECKPOINT)
    with pytest.raises(ConfigError, match="holds more than tensors and plain JSON metadata"):
        load_checkpoint(tmp_path / "bad")
    # The item table must have the rows the item vocabulary needs (PAD, OOV, then the items).
    torch.save({"state": r.model.state_dict(), "item_text": r.model.items.text[:-1].cpu(), "meta": meta},
               (tmp_path / "short").mkdir() or tmp_path / "short" / CHECKPOINT)
    with pytest.raises(ConfigError, match=f"item table has {ts.item_vocab.size - 1} rows, its item vocabulary "
                                          f"needs {ts.item_vocab.size}"):
        load_checkpoint(tmp_path / "short")
