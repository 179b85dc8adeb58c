"""UIF — User Interest Fusion: target attention over a user's LIBER memory slots.

Each of the M slots holds one partition's summary and shift vectors (text-encoder space, D). They
are projected *jointly* (``[summary; shift]`` → d: a shift only means something next to the
summary it moved from), or the summary alone for the ``summary`` variant, once per user. The
candidate item is the query: scaled dot-product scores over the filled slots, softmax, weighted
sum of the slot values. Empty slots (beyond ``partition_count``) get exactly zero weight; a user
with no partition gets a zero vector, never NaN.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from encoders.ctr.layers import user_matmul

__all__ = ["UIF"]


class UIF(nn.Module):
    """``(q, summary, shift, partition_count)`` → ``(N, d)`` LIBER interest vector."""

    def __init__(self, vector_dim: int, dim: int, use_shift: bool = True) -> None:
        super().__init__()
        self.use_shift = use_shift
        self.slot = nn.Linear(vector_dim * (2 if use_shift else 1), dim)
        self.key = nn.Linear(dim, dim, bias=False)
        self.value = nn.Linear(dim, dim, bias=False)
        self.query = nn.Linear(dim, dim, bias=False)
        self.scale = 1.0 / math.sqrt(dim)

    def memory(self, summary: torch.Tensor, shift: torch.Tensor, partition_count: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """User side, once per user: ``(U, M, D)`` ×2, ``(U,)`` → keys, values ``(U, M, d)``, mask ``(U, M)``.

        The keys come back in query space (see below): score = candidate · key.
        """
        x = torch.cat([summary, shift], dim=-1) if self.use_shift else summary
        slots = torch.relu(self.slot(x))
        m = summary.shape[1]
        mask = (torch.arange(m, device=summary.device)[None, :] < partition_count[:, None]).to(x.dtype)
        # The query projection folded into the keys, per user: query(q) · k = q · (k W_q), so each
        # candidate costs one dot product per slot and no d×d projection of its own.
        return self.key(slots) @ self.query.weight, self.value(slots), mask

    def forward(self, q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor
                ) -> torch.Tensor:
        """Candidate side: ``q`` (N, d), keys/values (U, M, d), mask (U, M) → (N, d)."""
        scores = user_matmul(q, keys.transpose(1, 2)) * self.scale  # (N, M): one GEMM when U = 1
        # A large finite negative, not -inf: an all-masked row must give zeros, not NaN.
        scores = scores.masked_fill(mask == 0, -1e9)
        weights = torch.softmax(scores, dim=-1) * mask  # all-masked row → exactly 0
        return user_matmul(weights, values)
