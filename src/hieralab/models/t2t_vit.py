"""T2T-ViT: a ViT whose tokenizer models local structure (Yuan et al., "Tokens-to-Token ViT", ICCV 2021).

The Tokens-to-Token module replaces the 16x16 patch embedding: a *soft split* (an overlapping unfold, kernel 7,
stride 4) turns the image into tokens; then, twice, a T2T layer (``layers/t2t.py``) mixes them, they are
*re-structurized* into an image ``[B, token_dim, h, w]`` and soft-split again (kernel 3, stride 2); a Linear projects
the last split to the backbone width. The backbone is a deep-narrow ViT: class token, the fixed 1-D sinusoid table,
blocks without qkv bias, the head on the class token.

Checkpoint-compatible with yitu-opensource/T2T-ViT (``tokens_to_token.*``, ``blocks.*``, ``cls_token``,
``pos_embed``, ``head.*``) and equal to its outputs in fp32; written here. Differences, on purpose:

* any input of at least 3 px per side works (the official module assumes a square input whose side is a multiple
  of 16): the token grid follows the unfold arithmetic and the table is resampled as the official fine-tuning code
  does (bicubic on the patch rows);
* ``forward_features`` returns all tokens ``[B, 1 + N, C]`` (the official one returns the class token only); the
  head pools, as the other encoders here;
* the released checkpoints were trained with the default attention scale ``head_dim ** -0.5``; the official
  ``pretrained=True`` constructors would set ``qk_scale = embed_dim ** -0.5`` (never used: their download URL is
  empty). ``qk_scale`` is a config option for either.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..layers.t2t import TokenPerformer, TokenTransformer
from .vit import ViTBackbone, _pair

# (kernel, stride, padding) of the three soft splits; the backbone's token stride is 4 * 2 * 2 = 16.
SOFT_SPLITS = ((7, 4, 2), (3, 2, 1), (3, 2, 1))
T2T_LAYERS = {"performer": TokenPerformer, "transformer": TokenTransformer}


def split_size(size: Sequence[int], kernel: int, stride: int, padding: int) -> tuple[int, int]:
    """The grid ``(h, w)`` of one soft split (unfold) of an ``(H, W)`` map; a side below 1 means it is too small."""
    return tuple((n + 2 * padding - kernel) // stride + 1 for n in size)


def soft_split_grid(size: Sequence[int]) -> tuple[int, int]:
    """The token grid ``(H', W')`` after the three soft splits of an ``(H, W)`` image."""
    for split in SOFT_SPLITS:
        size = split_size(size, *split)
    return tuple(size)


class T2TModule(nn.Module):
    """Tokens-to-token: pixels ``[B, C_in, H, W]`` to tokens ``[B, H', W', embed_dim]``."""

    def __init__(self, in_chans: int, embed_dim: int, *, token_dim: int = 64, layer: str = "performer",
                 dropout: float = 0.1):
        super().__init__()
        if layer not in T2T_LAYERS:
            raise ValueError(f"tokens_type must be one of {sorted(T2T_LAYERS)}, got {layer!r}")
        (k0, s0, p0), (k1, s1, p1), (k2, s2, p2) = SOFT_SPLITS
        self.soft_split0 = nn.Unfold(kernel_size=k0, stride=s0, padding=p0)
        self.soft_split1 = nn.Unfold(kernel_size=k1, stride=s1, padding=p1)
        self.soft_split2 = nn.Unfold(kernel_size=k2, stride=s2, padding=p2)
        Layer = T2T_LAYERS[layer]
        self.attention1 = Layer(in_chans * k0 * k0, token_dim, dropout=dropout)
        self.attention2 = Layer(token_dim * k1 * k1, token_dim, dropout=dropout)
        self.project = nn.Linear(token_dim * k2 * k2, embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B = x.shape[0]
        size = x.shape[-2:]
        splits = (self.soft_split0, self.soft_split1, self.soft_split2)
        for i, layer in enumerate((self.attention1, self.attention2)):
            x = splits[i](x).transpose(1, 2)  # soft split: [B, h*w, C*k*k], each token a k x k neighbourhood
            size = split_size(size, *SOFT_SPLITS[i])
            x = layer(x)  # [B, h*w, token_dim]
            x = x.transpose(1, 2).reshape(B, -1, *size)  # re-structurization: [B, token_dim, h, w]
        x = self.soft_split2(x).transpose(1, 2)  # [B, H'*W', token_dim*9]
        size = split_size(size, *SOFT_SPLITS[2])
        return self.project(x).reshape(B, *size, -1)  # [B, H', W', embed_dim]


class T2TViT(ViTBackbone):
    """T2T-ViT on ``[B, C, H, W]`` images. The defaults are T2T-ViT-14 at 224 px (14 x 14 tokens)."""

    embed_params = ("tokens_to_token", "cls_token", "pos_embed")  # layer 0 for layer-wise lr decay

    def __init__(
        self,
        *,
        img_size: int | Sequence[int] = 224,
        tokens_type: str = "performer",
        in_chans: int = 3,
        num_classes: int = 1000,
        embed_dim: int = 384,
        depth: int = 14,
        num_heads: int = 6,
        mlp_ratio: float = 3.0,
        token_dim: int = 64,
        t2t_dropout: float = 0.1,
        qkv_bias: bool = False,
        qk_scale: float | None = None,
        global_pool: str = "token",
        drop_path_rate: float = 0.0,
        head_dropout: float = 0.0,
        norm_eps: float = 1e-5,
    ):
        size = _pair(img_size)
        grid = soft_split_grid(size)
        if min(grid) < 1:
            raise ValueError(f"img_size {size} is too small for the T2T soft splits: use at least 3 px per side")
        super().__init__(
            grid_size=grid, in_chans=in_chans, num_classes=num_classes, embed_dim=embed_dim, depth=depth,
            num_heads=num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, qk_scale=qk_scale, pos_embed="sinusoid",
            global_pool=global_pool, drop_path_rate=drop_path_rate, head_dropout=head_dropout, norm_eps=norm_eps,
        )
        self.patch_size = 16  # the token stride, for MAE targets and feature maps
        self.tokens_to_token = T2TModule(in_chans, embed_dim, token_dim=token_dim, layer=tokens_type,
                                         dropout=t2t_dropout)
        self._init_weights()

    def _init_weights(self) -> None:
        """As the official code: truncated normal (std 0.02) linears with zero bias, unit LayerNorms."""
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        self._init_linears_and_norms(lambda w: nn.init.trunc_normal_(w, std=0.02))

    def reset_classifier(self, num_classes: int) -> None:
        super().reset_classifier(num_classes)
        if num_classes > 0:  # the official init, not the MAE one
            nn.init.trunc_normal_(self.head.weight, std=0.02)

    def grid_for(self, size: tuple[int, int]) -> tuple[int, int]:
        grid = soft_split_grid(size)
        if min(grid) < 1:
            raise ValueError(f"input size {size} is too small for the T2T soft splits; use at least 3 px per side "
                             "(224 is the trained size)")
        return grid

    def tokenize(self, x: torch.Tensor) -> torch.Tensor:
        """Pixels ``[B, C_in, H, W]`` to tokens ``[B, H', W', C]`` through the T2T module."""
        return self.tokens_to_token(x)
