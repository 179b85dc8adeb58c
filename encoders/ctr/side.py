"""Side features for the neural backbones: the boosted ranker's point-in-time row, as one more part.

DIN and DCNv2 alone read ids, the history and (with LIBER) the memory; a boosted tree on the
``model.ranker_features`` row beat both by 0.04 AUC. The row's dense columns — history length and
text/genre overlap with the candidate, the user and item statistics of the ``user_stats`` /
``item_stats`` views strictly before t, the candidate's genres — are what it had and they lacked.
Here the same row (without the ``user`` / ``item`` index columns, which the embeddings cover and
without the LIBER affinity columns, which UIF replaces) enters each backbone as ``dense (N, F)``:

    x → sign(x)·log1p(|x|) → (x − mean) / std → Linear(F → d) → ReLU → one d-wide part of the head

Counts and seconds span six orders of magnitude, so the signed log comes first; ``mean`` / ``std``
are fitted on the train split only and are buffers, so the exported graph takes the raw row the
scorer builds with the training code (``serving.ranker.RankerRows``) and nothing is re-derived
online.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from liber_features.model.ranker_features import RankerItems, side_columns
from liber_features.training.samples import TrainingSet

__all__ = ["SideFeatures", "SideRows", "side_rows"]


@dataclass(frozen=True)
class SideRows:
    """Every sample's side row ``x (N, F)`` float32, the column names and the item table they use."""

    x: np.ndarray
    names: list[str]
    items: RankerItems


def side_rows(ts: TrainingSet, item_text: np.ndarray, items: RankerItems | None = None) -> SideRows:
    """The ranker rows of ``ts`` (no LIBER columns) cut to :func:`side_columns`."""
    from encoders.ctr.gbdt import gbdt_features

    items = items or RankerItems.from_catalog(ts.item_vocab, ts.catalog, item_text)
    x, names = gbdt_features(ts, item_text, None, items)
    keep, kept = side_columns(names)
    return SideRows(np.ascontiguousarray(x[:, keep], dtype=np.float32), kept, items)


class SideFeatures(nn.Module):
    """``dense (N, F)`` raw side row → ``(N, d)`` (module docstring)."""

    def __init__(self, n_features: int, dim: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(n_features))
        self.register_buffer("std", torch.ones(n_features))
        self.proj = nn.Linear(n_features, dim)

    @staticmethod
    def squash(x: torch.Tensor) -> torch.Tensor:
        return torch.sign(x) * torch.log1p(torch.abs(x))

    @torch.no_grad()
    def fit(self, x_train: np.ndarray) -> None:
        """Standardise with the train split's statistics (a constant column gets std 1, not 0)."""
        z = self.squash(torch.from_numpy(np.asarray(x_train, dtype=np.float32)).double())
        self.mean.copy_(z.mean(0).float())
        std = z.std(0).float()
        self.std.copy_(torch.where(std > 1e-6, std, torch.ones_like(std)))

    def forward(self, dense: torch.Tensor) -> torch.Tensor:
        """``(N, F)`` → ``(N, d)``."""
        return torch.relu(self.proj((self.squash(dense) - self.mean) / self.std))
