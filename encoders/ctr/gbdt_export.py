"""Saving a trained LightGBM ranker and exporting it to ONNX with its model card.

``liber train --backbone lgbm`` saves three files: the booster in LightGBM's own text format
(``model.lgb.txt``, cut at the best validation iteration), the item table its features are built
from (``ranker_items.npz``: unit text vectors, genres, categories; ``model.ranker_features``) and the
checkpoint's metadata (``gbdt.json``, plain JSON, the same keys as a neural checkpoint's plus the
feature names). ``liber export`` turns the booster into ``model.onnx`` with onnxmltools — one
``TreeEnsembleClassifier`` that takes the ``(N, F)`` feature rows and returns ``score (N,)``, the
positive class's probability — and writes the card. The item table stays a file beside the graph
(named on the card) because the scorer builds the rows in numpy with the training code, not in the
graph: a tree's splits are exact thresholds, and only the same arithmetic gives the same rows.

Nothing here needs torch.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from liber_features.errors import ConfigError
from liber_features.model.card import MODEL_FILE, ModelCard, TensorSpec
from liber_features.model.ranker_features import RankerItems

__all__ = ["BOOSTER_FILE", "GBDT_META", "ITEM_TABLE", "export_gbdt", "load_gbdt", "save_gbdt"]

BOOSTER_FILE = "model.lgb.txt"
GBDT_META = "gbdt.json"
ITEM_TABLE = "ranker_items.npz"
OPSET = 15  # the newest default-domain opset onnxmltools' LightGBM converter targets


def save_gbdt(booster, meta: dict[str, Any], items: RankerItems, model_dir: str | Path) -> Path:
    """Write the booster (best iteration only), its item table and ``meta`` into ``model_dir``."""
    out = Path(model_dir)
    out.mkdir(parents=True, exist_ok=True)
    booster.save_model(str(out / BOOSTER_FILE), num_iteration=booster.best_iteration or None)
    items.save(out / ITEM_TABLE)
    try:
        (out / GBDT_META).write_text(json.dumps(meta, indent=1, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"checkpoint metadata must be plain JSON types: {exc}") from exc
    return out / GBDT_META


def load_gbdt(model_dir: str | Path):
    """(booster, meta) of a saved LightGBM ranker."""
    import lightgbm as lgb

    d = Path(model_dir)
    if not (d / GBDT_META).is_file() or not (d / BOOSTER_FILE).is_file():
        raise ConfigError(f"no trained LightGBM ranker in {d}: run `liber train --backbone lgbm --out {d}`")
    return lgb.Booster(model_file=str(d / BOOSTER_FILE)), json.loads((d / GBDT_META).read_text())


def _score_output(model) -> None:
    """Replace the converter's outputs (label, probabilities ``(N, 2)``) by ``score (N,)``."""
    from onnx import TensorProto, helper, numpy_helper

    g = model.graph
    probs = next(o.name for o in g.output if o.name == "probabilities")
    g.initializer.extend([numpy_helper.from_array(np.array([1], np.int64), "score_col"),
                          numpy_helper.from_array(np.array([2], np.int64), "score_end"),
                          numpy_helper.from_array(np.array([1], np.int64), "score_axis")])
    g.node.extend([helper.make_node("Slice", [probs, "score_col", "score_end", "score_axis"], ["score_2d"]),
                   helper.make_node("Squeeze", ["score_2d", "score_axis"], ["score"])])
    del g.output[:]
    g.output.append(helper.make_tensor_value_info("score", TensorProto.FLOAT, ["N"]))
    # The converter's graph is all ai.onnx.ml and may declare no default-domain opset (or 1).
    default = [o for o in model.opset_import if o.domain in ("", "ai.onnx")]
    if default:
        default[0].version = max(default[0].version, OPSET)
    else:
        model.opset_import.append(helper.make_opsetid("", OPSET))


def export_gbdt(model_dir: str | Path) -> ModelCard:
    """``model.onnx`` + ``model_card.json`` from a saved ranker; return the card."""
    import onnx
    from onnxmltools import convert_lightgbm
    from onnxmltools.convert.common.data_types import FloatTensorType

    out = Path(model_dir)
    booster, meta = load_gbdt(out)
    names = meta["features"]
    if booster.num_feature() != len(names):
        raise ConfigError(f"{out / BOOSTER_FILE} takes {booster.num_feature()} features, its metadata "
                          f"names {len(names)}")
    model = convert_lightgbm(booster, initial_types=[("features", FloatTensorType([None, len(names)]))],
                             target_opset=OPSET, zipmap=False)
    _score_output(model)
    onnx.checker.check_model(model)
    onnx.save(model, str(out / MODEL_FILE))
    card = ModelCard.from_checkpoint(
        meta, backbone="lgbm",
        inputs=[TensorSpec(name="features", dtype="float32", shape=["N", len(names)])],
        outputs=[TensorSpec(name="score", dtype="float32", shape=["N"])], opset=OPSET,
        item_vectors=f"{ITEM_TABLE} beside the graph: unit text vectors (title + genres, the interests' "
                     "text encoder), genres and categories by item index",
        item_table=ITEM_TABLE, features=names)
    card.save(out)
    return card
