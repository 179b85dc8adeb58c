"""What every CTR backbone here shares: the sparse arch (user and item embeddings), the optional
LIBER arch (UIF over the memory slots) and the model's tensor signature.

``forward(user_idx, summary, shift, partition_count, hist_idx, item_idx[, dense]) -> logits (N,)``
(calibrated: ``calibration.py``),
with the shapes of ``liber_features.model.inputs``; ``dense (N, F)`` is the side row
(``side.py``), taken when the model was built with ``side_features=F`` > 0. ``liber`` picks the
variant:

- ``none``: the backbone alone (the memory inputs are accepted and ignored);
- ``both``: UIF over summary and shift vectors, jointly projected per slot;
- ``summary``: UIF over the summary vectors only.

A subclass builds its dense/over arch in ``__init__`` and implements :meth:`head`.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from encoders.ctr.layers import ItemEmbedding
from encoders.ctr.side import SideFeatures
from encoders.ctr.uif import UIF
from liber_features.model.vocab import PAD

__all__ = ["Backbone", "LiberVariant"]

LiberVariant = Literal["none", "both", "summary"]


class Backbone(nn.Module):
    """Base class: embeddings + UIF; subclasses define ``head``."""

    name = "backbone"

    def __init__(self, *, n_users: int, item_text: torch.Tensor, vector_dim: int, dim: int = 32,
                 liber: LiberVariant = "both", side_features: int = 0, dropout: float = 0.1) -> None:
        super().__init__()
        if liber not in ("none", "both", "summary"):
            raise ValueError(f"unknown LIBER variant {liber!r}")
        self.liber, self.dim = liber, dim
        self.dropout = dropout  # of the subclass's MLP blocks (train.py's TrainConfig.dropout)
        self.items = ItemEmbedding(item_text, dim)
        self.users = nn.Embedding(n_users, dim)
        self.uif = UIF(vector_dim, dim, use_shift=liber == "both") if liber != "none" else None
        self.side = SideFeatures(side_features, dim) if side_features else None
        # Platt scale and bias of the logits (calibration.py), fitted on validation after training.
        self.register_buffer("calibration", torch.tensor([1.0, 0.0]))

    @property
    def n_parts(self) -> int:
        """How many d-wide parts the head concatenates besides its own (LIBER's, the side row's)."""
        return (self.uif is not None) + (self.side is not None)

    def forward(self, user_idx: torch.Tensor, summary: torch.Tensor, shift: torch.Tensor,
                partition_count: torch.Tensor, hist_idx: torch.Tensor, item_idx: torch.Tensor,
                dense: torch.Tensor | None = None) -> torch.Tensor:
        """User side (U) computed once, candidates (N) broadcast against it → logits ``(N,)``."""
        q = self.items(item_idx)  # (N, d)
        user = self.users(user_idx)  # (U, d)
        hist = self.items(hist_idx)  # (U, L, d)
        hist_mask = (hist_idx != PAD).to(q.dtype)  # (U, L)
        parts = []
        if self.uif is not None:
            keys, values, slot_mask = self.uif.memory(summary, shift, partition_count)
            parts.append(self.uif(q, keys, values, slot_mask))  # (N, d)
        if self.side is not None:
            if dense is None:
                raise ValueError("this model was built with side features: pass dense (N, F)")
            parts.append(self.side(dense))  # (N, d)
        return self.head(q, user, hist, hist_mask, parts) * self.calibration[0] + self.calibration[1]

    def embedding_sq_norms(self, user_idx: torch.Tensor, item_idx: torch.Tensor) -> torch.Tensor:
        """Per sample (U = N, training): squared L2 norm of its user row plus its candidate's item-id
        row → ``(N,)``, the embedding L2 penalty's term (``TrainConfig.embedding_l2``).

        Only the learned id rows: the item's text projection is a dense layer (AdamW's decay covers
        it) and its text vector is fixed. The history rows are the same id table; they are left out
        so that the penalty does not grow with the history length (50 rows against 2).
        """
        return self.users(user_idx).pow(2).sum(-1) + self.items.ids(item_idx).pow(2).sum(-1)

    def head(self, q: torch.Tensor, user: torch.Tensor, hist: torch.Tensor, hist_mask: torch.Tensor,
             extra: list[torch.Tensor]) -> torch.Tensor:
        """q (N, d), user (U, d), hist (U, L, d), hist_mask (U, L), extra [(N, d)] → logits (N,)."""
        raise NotImplementedError
