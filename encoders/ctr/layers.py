"""Layers the CTR backbones share: the item representation and an MLP.

Every ``forward`` takes tensors and returns tensors (clean ONNX export). User-side tensors have a
leading dimension U and candidate-side tensors N, where U is 1 (one user scored against N
candidates, broadcast inside the graph) or U = N (training: one candidate per sample).
"""

from __future__ import annotations

from itertools import pairwise

import torch
from torch import nn

from liber_features.model.vocab import PAD

__all__ = ["MLP", "ItemEmbedding", "expand_users", "user_matmul"]


class ItemEmbedding(nn.Module):
    """Item index → ``(…, d)``: a learned id embedding plus a projection of the item's text vector.

    The text vectors (title + genres through the interests' text encoder, ``(V, D)``, row 0 = PAD
    and row 1 = OOV both zero) are a fixed buffer, so they travel inside the exported graph.
    :meth:`freeze` folds the projection into one ``(V, d)`` table for serving: a gather instead of
    a ``D → d`` matmul per candidate and per history item.
    """

    def __init__(self, text_vectors: torch.Tensor, dim: int) -> None:
        super().__init__()
        self.register_buffer("text", text_vectors.float(), persistent=True)
        self.ids = nn.Embedding(text_vectors.shape[0], dim, padding_idx=PAD)
        self.proj = nn.Linear(text_vectors.shape[1], dim, bias=False)
        self.table: torch.Tensor | None = None

    def freeze(self) -> None:
        """Precompute every item's representation (export); training must not call this."""
        with torch.no_grad():
            self.table = self.ids.weight + self.proj(self.text)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """``idx`` (…) int64 → ``(…, d)``."""
        if self.table is not None:
            return self.table[idx]
        return self.ids(idx) + self.proj(self.text[idx])


class MLP(nn.Sequential):
    """Linear → ReLU → Dropout blocks, then a final Linear to ``out`` (no activation)."""

    def __init__(self, dims: list[int], out: int, dropout: float = 0.0) -> None:
        layers: list[nn.Module] = []
        for a, b in pairwise(dims):
            layers += [nn.Linear(a, b), nn.ReLU(), nn.Dropout(dropout)]
        layers.append(nn.Linear(dims[-1], out))
        super().__init__(*layers)


def expand_users(x: torch.Tensor, n: torch.Tensor | int) -> torch.Tensor:
    """``(U, …)`` → ``(N, …)`` when U = 1; a no-op when U = N."""
    return x.expand(n, *x.shape[1:]) if isinstance(n, int) else x.expand(n.shape[0], *x.shape[1:])


def user_matmul(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Candidates ``x`` (N, a) against a user-side matrix ``y`` (U, a, b) → ``(N, b)``.

    One user (U = 1, serving) is one GEMM over all N candidates; U = N (training) is a batched
    product, one row per sample. The export traces U = 1, so the graph holds the single GEMM.
    """
    if y.shape[0] == 1:
        return x @ y[0]
    return torch.bmm(x.unsqueeze(1), y).squeeze(1)
