"""``model_card.json``: everything a scorer needs to use ``model.onnx`` correctly, and to refuse it.

Written by ``liber export`` next to the graph; read by ``liber_features.serving.scorer`` (torch-free). The
card pins the feature contract the model was trained on — FeatureService, M, D, L, and the
``encoder_version`` of the LIBER vectors (prompt version × LLM × text encoder) — so a scorer can
check it against what the online store holds before serving a single request.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from liber_features.errors import ConfigError
from liber_features.model.vocab import OOV, PAD, UNKNOWN_USER, ItemVocab, UserVocab

__all__ = ["CARD_FILE", "MODEL_FILE", "ModelCard", "TensorSpec"]

CARD_FILE = "model_card.json"
MODEL_FILE = "model.onnx"


class TensorSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    dtype: str
    shape: list[int | str]


class ModelCard(BaseModel):
    """The exported model's contract (see module docstring)."""

    model_config = ConfigDict(extra="forbid")

    format_version: int = 1
    backbone: str
    liber: str = Field(description="none | both | summary: which LIBER vectors the model reads")
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    opset: int
    memory_slots: int
    vector_dim: int
    history_length: int
    item_vocab: dict[str, int]
    pad_index: int = 0
    oov_item_index: int = 1
    user_vocab: dict[str, int]
    unknown_user_index: int = 0
    item_vectors: str = Field(description="where the item text vectors live")
    # A boosted ranker (backbone lgbm) takes one feature row per candidate, built by
    # ``model.ranker_features`` from the item table beside the graph; a neural graph with the side
    # row takes those rows' dense columns as ``dense`` (cards from before it list no features).
    item_table: str | None = Field(None, description="file beside the graph: the ranker's item table")
    features: list[str] = Field(default_factory=list, description="the feature row's columns, in order")
    feature_service: str
    prompt_version: str
    llm_id: str
    text_encoder_id: str
    encoder_version: str
    metrics: dict[str, Any]
    train_time_range: list[str]
    train_config: dict[str, Any]
    created_at: str

    @model_validator(mode="after")
    def _vocabularies(self) -> ModelCard:
        # The reserved rows are fixed by the vocabulary types; a card claiming others, or whose
        # vocabularies have gaps, would make the scorer read the wrong embedding rows.
        reserved = {"pad_index": (self.pad_index, PAD), "oov_item_index": (self.oov_item_index, OOV),
                    "unknown_user_index": (self.unknown_user_index, UNKNOWN_USER)}
        wrong = {k: got for k, (got, want) in reserved.items() if got != want}
        if wrong:
            raise ValueError(f"reserved rows {wrong} differ from PAD={PAD}, OOV={OOV}, "
                             f"UNKNOWN_USER={UNKNOWN_USER}")
        try:
            self.item_vocabulary(), self.user_vocabulary()
        except ConfigError as exc:
            raise ValueError(str(exc)) from exc
        return self

    @classmethod
    def from_checkpoint(cls, meta: dict[str, Any], **graph: Any) -> ModelCard:
        """A card from a checkpoint's metadata (``training.prepare.checkpoint_meta``) plus what the
        exporter knows of its graph (backbone, inputs, outputs, opset, item vectors, ...)."""
        from datetime import UTC, datetime

        return cls(
            liber=meta["config"]["liber"], memory_slots=meta["memory_slots"], vector_dim=meta["vector_dim"],
            history_length=meta["history_length"], item_vocab=meta["item_vocab"], user_vocab=meta["user_vocab"],
            feature_service=meta["feature_service"], prompt_version=meta["prompt_version"],
            llm_id=meta["llm_id"], text_encoder_id=meta["text_encoder_id"],
            encoder_version=meta["encoder_version"], metrics=meta["metrics"],
            train_time_range=meta["train_time_range"], train_config=meta["config"],
            created_at=datetime.now(UTC).isoformat(timespec="seconds"), **graph)

    def item_vocabulary(self) -> ItemVocab:
        return ItemVocab.from_json(self.item_vocab)

    def user_vocabulary(self) -> UserVocab:
        return UserVocab.from_json(self.user_vocab)

    def save(self, model_dir: str | Path) -> Path:
        path = Path(model_dir) / CARD_FILE
        path.write_text(self.model_dump_json(indent=1))
        return path

    @classmethod
    def load(cls, model_dir: str | Path) -> ModelCard:
        path = Path(model_dir) / CARD_FILE
        try:
            return cls.model_validate(json.loads(path.read_text()))
        except (OSError, ValueError, ValidationError) as exc:
            raise ConfigError(f"cannot read the model card {path}: {exc}") from exc
