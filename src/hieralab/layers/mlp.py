"""The transformer MLP: Linear, GELU, Linear (parameter names ``fc1`` / ``fc2`` as in timm and the official code)."""

from __future__ import annotations

import torch
from torch import nn


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden_dim: int, dim_out: int | None = None, *, drop: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()  # exact (erf) GELU: the tanh approximation would break checkpoint parity
        self.fc2 = nn.Linear(hidden_dim, dim_out or dim)
        self.drop = nn.Dropout(drop) if drop > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))
