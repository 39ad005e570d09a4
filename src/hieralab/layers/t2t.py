"""The Tokens-to-Token layers of T2T-ViT (Yuan et al., "Tokens-to-Token ViT", ICCV 2021).

A T2T layer maps soft-split tokens ``[B, N, dim]`` (``dim`` = channels x kernel area) to ``[B, N, token_dim]``. Its
input and output widths differ, so the attention's residual goes through the values ``v`` instead of the input, as
in the official code. Two kinds:

* :class:`TokenTransformer` (the ``T2T-ViT_t`` models): one-head softmax attention;
* :class:`TokenPerformer` (the default models): linear-cost attention with positive random features (FAVOR+,
  Choromanski et al., ICLR 2021), whose random projection ``w`` is drawn once and stored in the checkpoint.

Parameter names follow the official checkpoints (``attn.qkv`` / ``kqv``, ``proj``, ``norm1``, ``norm2``, ``w``),
except the Performer's MLP, stored officially as ``mlp.0`` / ``mlp.2`` and here as ``mlp.fc1`` / ``mlp.fc2``
(:func:`hieralab.models.checkpoint.to_hieralab_keys` renames them).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .attention import attend
from .mlp import Mlp


def positive_random_features(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``exp(w x - |x|^2 / 2) / sqrt(m)`` for ``x`` ``[B, N, d]`` and ``w`` ``[m, d]``: ``[B, N, m]``, in float32.

    In expectation over Gaussian ``w``, ``phi(q) . phi(k) = exp(q . k)``: the softmax kernel without the N x N matrix.
    """
    x, w = x.float(), w.float()  # exp overflows in bf16: float32 even in a bf16 model
    return torch.exp(x @ w.t() - x.square().sum(-1, keepdim=True) / 2) / math.sqrt(w.shape[0])  # [B, N, m]


def performer_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, w: torch.Tensor,
                        eps: float = 1e-8) -> torch.Tensor:
    """Softmax attention ``[B, N, d]`` approximated in O(N m d): ``phi(q) (phi(k)^T v)`` over ``phi(q) sum phi(k)``;
    computed in float32, returned in ``q``'s dtype."""
    qp, kp = positive_random_features(q, w), positive_random_features(k, w)  # [B, N, m] each
    kv = kp.transpose(1, 2) @ v.float()  # [B, m, d]
    normaliser = qp @ kp.sum(dim=1).unsqueeze(-1)  # [B, N, 1]
    return ((qp @ kv) / (normaliser + eps)).to(q.dtype)  # [B, N, d]


class TokenAttention(nn.Module):
    """One-head softmax attention from ``dim`` to ``token_dim`` with the residual through ``v``."""

    def __init__(self, dim: int, token_dim: int):
        super().__init__()
        self.token_dim = token_dim
        self.qkv = nn.Linear(dim, 3 * token_dim, bias=False)
        self.proj = nn.Linear(token_dim, token_dim)
        # The official layer scales by the input width (dim = 147 or 576), not the head width: kept for checkpoints.
        self.scale = dim ** -0.5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x).unflatten(-1, (3, self.token_dim)).unbind(-2)  # [B, N, t] each
        # one head as a 4-D [B, 1, N, t] call: the form every SDPA backend and the ONNX exporter take
        y = attend(q[:, None], k[:, None], v[:, None], self.scale)[:, 0]  # [B, N, t]
        return v + self.proj(y)


class TokenTransformer(nn.Module):
    """The Transformer T2T layer: ``x = attn(norm1(x))`` (residual through v), then ``x + mlp(norm2(x))``."""

    def __init__(self, dim: int, token_dim: int, *, mlp_ratio: float = 1.0, dropout: float = 0.0):
        super().__init__()  # (the official Transformer T2T layer has no dropout; `dropout` is accepted and unused)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = TokenAttention(dim, token_dim)
        self.norm2 = nn.LayerNorm(token_dim)
        self.mlp = Mlp(token_dim, int(token_dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.attn(self.norm1(x))  # [B, N, dim] -> [B, N, token_dim]
        return x + self.mlp(self.norm2(x))


class TokenPerformer(nn.Module):
    """The Performer T2T layer: the same block as :class:`TokenTransformer` with random-feature attention.

    ``w`` (``[m, token_dim]``, ``m = kernel_ratio * token_dim``, orthogonal rows scaled by ``sqrt(m)``) is drawn at
    construction and never trained; it is a frozen Parameter so that checkpoints carry it, as the official ones do.
    The official code applies dropout 0.1 after the attention projection and after the MLP, even at fine-tuning.
    """

    def __init__(self, dim: int, token_dim: int, *, kernel_ratio: float = 0.5, dropout: float = 0.1):
        super().__init__()
        self.token_dim = token_dim
        self.norm1 = nn.LayerNorm(dim)
        self.kqv = nn.Linear(dim, 3 * token_dim)  # the official split order is k, q, v
        self.proj = nn.Linear(token_dim, token_dim)
        self.norm2 = nn.LayerNorm(token_dim)
        self.mlp = Mlp(token_dim, token_dim)
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        m = int(token_dim * kernel_ratio)
        self.w = nn.Parameter(nn.init.orthogonal_(torch.empty(m, token_dim)) * math.sqrt(m), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k, q, v = self.kqv(self.norm1(x)).split(self.token_dim, dim=-1)  # [B, N, t] each
        y = performer_attention(q, k, v, self.w)  # [B, N, t]
        x = v + self.drop(self.proj(y))
        return x + self.drop(self.mlp(self.norm2(x)))
