"""Mask-unit and global attention with optional query pooling (Hiera, Ryali et al. 2023, Sec. 3)."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None) -> torch.Tensor:
    """``softmax(q kᵀ · scale) v`` over ``[batch, heads, L, d]`` (``scale`` None: ``d ** -0.5``): the one place that
    picks the attention kernel.

    ``scaled_dot_product_attention`` (fused flash kernel, no stored softmax) everywhere but bf16 on a CPU, where the
    flash kernel is no faster than in fp32 forward and 1.4-8.6x slower forward + backward, and two bf16 matmuls
    around a softmax are 2.3-7.6x faster than it at every shape Hiera, the MAE decoder and ViT-B use (docs/speed.md;
    the backward then keeps the bf16 softmax).
    """
    if q.dtype == torch.bfloat16 and q.device.type == "cpu":
        return matmul_attention(q, k, v, scale)
    return F.scaled_dot_product_attention(q, k, v, scale=scale)


def matmul_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None) -> torch.Tensor:
    """``softmax(q kᵀ · scale) v`` as two matmuls around a softmax (the backward keeps the softmax)."""
    scores = (q * (q.shape[-1] ** -0.5 if scale is None else scale)) @ k.transpose(-2, -1)  # [batch, h, Lq, Lk]
    return scores.softmax(-1) @ v  # softmax accumulates in fp32 inside the kernel


class MaskUnitAttention(nn.Module):
    """Multi-head attention over ``[B, #MU, L, C]`` tokens in the mask-unit layout (see ``models/layout.py``).

    ``windowed=True`` attends inside each mask unit, ``False`` over all tokens. ``q_pool`` pools the queries
    ``[..., L, d] -> [..., L / s, d]`` (Hiera passes ``models.layout.pool_level`` at its stage changes: a max-pool
    over the finest remaining level), so the output has ``L / s`` tokens per unit.

    The official code runs ``scaled_dot_product_attention`` on 5-D tensors ``[B, heads, #MU, L, d]``, which only the
    slow math kernel accepts. Here ``B * #MU`` is folded into the batch axis (a view in this layout), so the fused
    4-D kernels run (``attend``). Parameter names (``qkv``, ``proj``) match the official checkpoints.
    """

    def __init__(self, dim: int, dim_out: int, heads: int, *,
                 q_pool: Callable[[torch.Tensor], torch.Tensor] | None = None, windowed: bool = False):
        super().__init__()
        if dim_out % heads:
            raise ValueError(f"attention width {dim_out} is not divisible by {heads} heads")
        self.heads = heads
        self.head_dim = dim_out // heads
        self.q_pool = q_pool
        self.windowed = windowed
        self.qkv = nn.Linear(dim, 3 * dim_out)
        self.proj = nn.Linear(dim_out, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, U, L, _ = x.shape  # [B, #MU, L, C]
        # Windowed: each unit is a batch entry. Global: one sequence of all units' tokens.
        batch, units = (B * U, 1) if self.windowed else (B, U)
        qkv = self.qkv(x).view(batch, units, L, 3, self.heads, self.head_dim)
        q, k, v = qkv.permute(3, 0, 4, 1, 2, 5).unbind(0)  # each [batch, heads, units, L, d]
        if self.q_pool is not None:
            q = self.q_pool(q)  # [batch, heads, units, L/s, d]
        q, k, v = q.flatten(2, 3), k.flatten(2, 3), v.flatten(2, 3)  # [batch, heads, units*L, d] (k, v: views)
        x = attend(q, k, v)  # [batch, heads, units*L/s, d]
        x = x.transpose(1, 2).reshape(B, U, -1, self.heads * self.head_dim)  # [B, #MU, L/s, C_out]
        return self.proj(x)


class Attention(nn.Module):
    """Plain multi-head self-attention over ``[B, N, C]`` (ViT, the MAE decoders, T2T-ViT's backbone).

    Parameter names (``qkv``, ``proj``) match timm, the MAE code and the official Hiera decoder.
    """

    def __init__(self, dim: int, heads: int, *, qkv_bias: bool = True, dim_out: int | None = None,
                 scale: float | None = None):
        super().__init__()
        dim_out = dim_out or dim
        if dim_out % heads:
            raise ValueError(f"attention width {dim_out} is not divisible by {heads} heads")
        self.heads = heads
        self.head_dim = dim_out // heads
        self.scale = scale  # None: head_dim ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim_out, bias=qkv_bias)
        self.proj = nn.Linear(dim_out, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, _ = x.shape  # [B, N, C]
        q, k, v = self.qkv(x).view(B, N, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)  # [B, h, N, d]
        x = attend(q, k, v, self.scale)  # [B, h, N, d]
        return self.proj(x.transpose(1, 2).reshape(B, N, -1))  # [B, N, C_out]
