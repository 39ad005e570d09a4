"""Classification head. Returns logits in train and eval (the official Hiera head applies softmax in eval mode)."""

from __future__ import annotations

import torch
from torch import nn


class ClassifierHead(nn.Module):
    def __init__(self, dim: int, num_classes: int, *, dropout: float = 0.0):
        super().__init__()
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        # named `projection` for official checkpoints; Identity when num_classes == 0 (a feature extractor)
        self.projection = nn.Linear(dim, num_classes) if num_classes > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projection(self.dropout(x))  # [B, num_classes] logits
