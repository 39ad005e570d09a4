"""The pre-norm transformer block: ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``, on ``[B, N, C]``."""

from __future__ import annotations

import torch
from torch import nn

from .attention import Attention
from .drop_path import DropPath
from .mlp import Mlp


class Block(nn.Module):
    """Parameter names (``norm1``, ``attn.qkv``, ``attn.proj``, ``norm2``, ``mlp.fc1``, ``mlp.fc2``) match timm's ViT,
    the MAE decoders and the official Hiera decoder blocks."""

    def __init__(
        self,
        dim: int,
        heads: int,
        *,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        drop_path: float = 0.0,
        norm_eps: float = 1e-6,
    ):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(dim, heads, qkv_bias=qkv_bias, scale=qk_scale)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))  # [B, N, C]
        return x + self.drop_path(self.mlp(self.norm2(x)))
