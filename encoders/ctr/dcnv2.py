"""DCNv2 — Deep & Cross Network v2 (Wang et al., WWW 2021), parallel structure.

The input is the concatenation of the candidate, the user embedding, the masked mean of the
behaviour history (computed once per user) and, with LIBER, the UIF vector. A cross network
``x_{l+1} = x_0 ⊙ (W_l x_l + b_l) + x_l`` (full-rank W) and a deep MLP read it side by side; their
outputs are concatenated into the logit.
"""

from __future__ import annotations

import torch
from torch import nn

from encoders.ctr.backbone import Backbone
from encoders.ctr.layers import MLP, expand_users

__all__ = ["DCNv2"]


class DCNv2(Backbone):
    name = "dcnv2"

    def __init__(self, *, cross_layers: int = 2, mlp: tuple[int, ...] = (128, 64), **kw) -> None:
        super().__init__(**kw)
        width = self.dim * (3 + self.n_parts)
        self.cross = nn.ModuleList(nn.Linear(width, width) for _ in range(cross_layers))
        self.deep = MLP([width, *mlp[:-1]], mlp[-1], self.dropout)
        self.out = nn.Linear(width + mlp[-1], 1)

    def head(self, q, user, hist, hist_mask, extra):
        # Masked mean: a user with no history contributes zeros, not NaN.
        mean = (hist * hist_mask.unsqueeze(-1)).sum(1) / hist_mask.sum(1, keepdim=True).clamp(min=1.0)
        x0 = torch.cat([q, expand_users(user, q), expand_users(mean, q), *extra], dim=-1)  # (N, F)
        x = x0
        for layer in self.cross:
            x = x0 * layer(x) + x
        deep = torch.relu(self.deep(x0))
        return self.out(torch.cat([x, deep], dim=-1)).squeeze(-1)
