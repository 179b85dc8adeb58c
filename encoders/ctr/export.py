"""Checkpoints and ONNX export of a trained backbone, with its model card.

The exported graph scores one user against N candidates: user-side inputs have batch 1, the
candidate axis ``N`` is dynamic, the user side is computed once and broadcast inside the graph,
and the output is N probabilities. Item text vectors are folded into one ``(V, d)`` item table,
a constant of the graph. A model with the side row (``side.py``) also takes ``dense (N, F)``: the
scorer builds those rows with the training code from the item table beside the graph
(``ranker_items.npz``, named on the card with the row's columns, as for the boosted ranker).

A checkpoint (``model.pt``) holds tensors (the state dict, the item text table) and metadata in
plain JSON types only, so it loads with ``torch.load(weights_only=True)``: reading a model file
never runs code from it. Checkpoints written before this rule hold the same layout (their metadata
was already plain JSON), so they load unchanged; one that holds anything else is refused.
"""

from __future__ import annotations

import copy
import json
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from encoders.ctr.backbone import Backbone
from encoders.ctr.gbdt_export import ITEM_TABLE
from encoders.ctr.train import BACKBONES, TrainConfig, fusion_of
from liber_features.errors import ConfigError
from liber_features.model.card import MODEL_FILE, ModelCard, TensorSpec
from liber_features.model.inputs import INPUT_NAMES
from liber_features.model.ranker_features import RankerItems
from liber_features.model.vocab import ItemVocab, UserVocab

__all__ = ["CHECKPOINT", "OPSET", "export_onnx", "input_names", "load_checkpoint", "save_checkpoint"]

CHECKPOINT = "model.pt"
OPSET = 17


def save_checkpoint(model: Backbone, meta: dict[str, Any], model_dir: str | Path) -> Path:
    """``meta``: config, vocabularies, shape, versions, metrics, time range (plain JSON types)."""
    try:  # what weights_only can read back: a numpy scalar or array here would not load
        meta = json.loads(json.dumps(meta, allow_nan=True))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"checkpoint metadata must be plain JSON types: {exc}") from exc
    path = Path(model_dir) / CHECKPOINT
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state": model.state_dict(), "item_text": model.items.text.detach().cpu(), "meta": meta}, path)
    if model.side is not None:
        model.side_items.save(path.parent / ITEM_TABLE)
    return path


def input_names(model: Backbone) -> list[str]:
    """The graph's inputs: ``INPUT_NAMES``, and ``dense`` for a model with the side row."""
    return [*INPUT_NAMES, *(["dense"] if model.side is not None else [])]


def load_checkpoint(model_dir: str | Path) -> tuple[Backbone, dict[str, Any]]:
    path = Path(model_dir) / CHECKPOINT
    if not path.is_file():
        raise ConfigError(f"no trained model at {path}: run `liber train --out {model_dir}` first")
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:  # weights_only refused a type: not a checkpoint of ours
        raise ConfigError(f"{path} holds more than tensors and plain JSON metadata; refusing to load it "
                          f"(retrain with `liber train --out {model_dir}`): {exc}") from exc
    meta = ck["meta"]
    cfg = TrainConfig(**meta["config"])
    rows = ItemVocab.from_json(meta["item_vocab"]).size
    if ck["item_text"].shape[0] != rows:
        raise ConfigError(f"{path}: the item table has {ck['item_text'].shape[0]} rows, its item "
                          f"vocabulary needs {rows}")
    side = len(meta.get("features") or [])  # checkpoints from before the side row have none
    model = BACKBONES[cfg.backbone](
        n_users=UserVocab.from_json(meta["user_vocab"]).size, item_text=ck["item_text"],
        vector_dim=meta["vector_dim"], dim=cfg.dim,
        liber=fusion_of(cfg.liber), side_features=side, dropout=cfg.dropout)
    state = ck["state"]
    # Checkpoints from before calibration have no buffer for it: theirs is the identity.
    state.setdefault("calibration", torch.tensor([1.0, 0.0]))
    model.load_state_dict(state)
    if side:
        if not (path.parent / ITEM_TABLE).is_file():
            raise ConfigError(f"{path} takes the side row, built from {ITEM_TABLE} beside it: the file is "
                              f"missing (retrain with `liber train --out {model_dir}`)")
        model.side_items = RankerItems.load(path.parent / ITEM_TABLE)
    return model.eval(), meta


class _Scoring(torch.nn.Module):
    """The served function: probabilities, item table frozen."""

    def __init__(self, model: Backbone) -> None:
        super().__init__()
        self.model = copy.deepcopy(model).eval()
        self.model.items.freeze()

    # The graph's inputs in INPUT_NAMES order, ``dense`` last and only when the model takes it. The
    # exporter drops inputs a graph never reads (a liber="none" model's memory); the scorer feeds
    # only the inputs the session declares.
    def forward(self, user_idx, summary, shift, partition_count, hist_idx, item_idx, dense=None):
        return torch.sigmoid(self.model(user_idx, summary, shift, partition_count, hist_idx, item_idx, dense))


def example_inputs(M: int, D: int, L: int, n: int = 4, side: int = 0) -> tuple[torch.Tensor, ...]:
    return (torch.zeros(1, dtype=torch.long), torch.zeros(1, M, D), torch.zeros(1, M, D),
            torch.zeros(1, dtype=torch.long), torch.zeros(1, L, dtype=torch.long),
            torch.arange(ItemVocab.RESERVED, ItemVocab.RESERVED + n, dtype=torch.long),
            *([torch.zeros(n, side)] if side else []))


def export_onnx(model: Backbone, meta: dict[str, Any], model_dir: str | Path) -> ModelCard:
    """Write ``model.onnx`` and ``model_card.json`` into ``model_dir``; return the card."""
    import warnings

    M, D, L = meta["memory_slots"], meta["vector_dim"], meta["history_length"]
    names = input_names(model)
    features = list(meta.get("features") or [])
    F = model.side.proj.in_features if model.side is not None else 0
    if len(features) != F:
        raise ConfigError(f"the model takes {F} side features, its metadata names {len(features)}")
    out = Path(model_dir)
    out.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        # The TorchScript exporter is deprecated in favour of dynamo; it is the one that exports
        # this graph without onnxscript at run time, and its output is checked by the parity test.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _Scoring(model), example_inputs(M, D, L, side=F), str(out / MODEL_FILE),
            input_names=names, output_names=["score"],
            dynamic_axes={"item_idx": {0: "N"}, "dense": {0: "N"}, "score": {0: "N"}}, opset_version=OPSET,
            dynamo=False)
    shapes = {"user_idx": ("int64", [1]), "summary": ("float32", [1, M, D]),
              "shift": ("float32", [1, M, D]), "partition_count": ("int64", [1]),
              "hist_idx": ("int64", [1, L]), "item_idx": ("int64", ["N"]), "dense": ("float32", ["N", F])}
    if F:
        model.side_items.save(out / ITEM_TABLE)
    card = ModelCard.from_checkpoint(
        meta, backbone=meta["config"]["backbone"],
        inputs=[TensorSpec(name=n, dtype=shapes[n][0], shape=shapes[n][1]) for n in names],
        outputs=[TensorSpec(name="score", dtype="float32", shape=["N"])], opset=OPSET,
        item_vectors="inside model.onnx: text vectors (title + genres, the interests' text encoder) "
                     "folded with the id embeddings into one constant item table"
                     + (f"; the side row's item table is {ITEM_TABLE} beside the graph" if F else ""),
        item_table=ITEM_TABLE if F else None, features=features)
    card.save(out)
    return card


def torch_scores(model: Backbone, inputs: dict[str, np.ndarray]) -> np.ndarray:
    """The offline model's probabilities for one user's inputs (the parity reference)."""
    with torch.no_grad():
        args = [torch.from_numpy(np.asarray(inputs[n])) for n in input_names(model)]
        return torch.sigmoid(model.eval()(*args)).numpy()
