"""MAE with a plain ViT (He et al., "Masked Autoencoders Are Scalable Vision Learners", CVPR 2022).

Per-sample random masking of patches (75 % by default), the encoder on the visible patches only, a light decoder
with mask tokens and its own fixed sin-cos positions, MSE on per-patch normalised pixels of the hidden patches.
Parameter names match the MAE code (``decoder_embed``, ``mask_token``, ``decoder_pos_embed``, ``decoder_blocks``,
``decoder_norm``, ``decoder_pred``) with the encoder's under ``encoder.``.

The same interface as :class:`~hieralab.mae.MaskedAutoencoderHiera`, with one mask unit per patch.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..layers import Block
from ..layers.pos_embed import resample_grid, sincos_2d
from ..models.layout import gather_units, scatter_units
from ..models.vit import VisionTransformer
from . import targets
from .base import MAEBase


class MaskedAutoencoderViT(MAEBase):
    encoder_class = VisionTransformer  # what **encoder_args are the arguments of

    def __init__(
        self,
        *,
        mask_ratio: float = 0.75,
        decoder_embed_dim: int = 512,
        decoder_depth: int = 8,
        decoder_num_heads: int = 16,
        norm_pix_loss: bool = True,
        **encoder_args: Any,
    ):
        super().__init__()
        self.encoder = VisionTransformer(**{"pos_embed": "sincos", **encoder_args, "num_classes": 0})
        enc = self.encoder
        self.mask_ratio, self.norm_pix_loss = mask_ratio, norm_pix_loss
        self.pred_stride = enc.patch_size
        self.decoder_embed = nn.Linear(enc.embed_dim, decoder_embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
        self.decoder_pos_embed = nn.Parameter(sincos_2d(decoder_embed_dim, enc.grid_size, class_token=True),
                                              requires_grad=False)  # [1, 1 + N, D], fixed
        self.decoder_blocks = nn.ModuleList([
            Block(decoder_embed_dim, decoder_num_heads, mlp_ratio=enc.config["mlp_ratio"],
                  norm_eps=enc.config["norm_eps"]) for _ in range(decoder_depth)])
        self.decoder_norm = nn.LayerNorm(decoder_embed_dim, eps=enc.config["norm_eps"])
        self.decoder_pred = nn.Linear(decoder_embed_dim, enc.patch_size ** 2 * enc.in_chans)
        nn.init.normal_(self.mask_token, std=0.02)
        for m in [self.decoder_embed, self.decoder_pred, *self.decoder_blocks.modules()]:
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    # ---------------------------------------------------------------- masks and targets
    def num_units(self, x: torch.Tensor) -> list[int]:
        """Mask units (= patches) per dim."""
        return list(self.encoder.token_grid(x))

    def target(self, x: torch.Tensor) -> torch.Tensor:
        return targets.patchify(x, self.pred_stride, channels_last=True)  # MAE's (p, q, c) order

    def target_to_pixels(self, patches: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        p = self.pred_stride
        return targets.unpatchify(patches, p, (x.shape[-2] // p, x.shape[-1] // p), channels_last=True)

    def visible_patches(self, visible: torch.Tensor, num_units: list[int]) -> torch.Tensor:
        """Target patches are the mask units here: ``[B, N]`` unchanged."""
        return visible

    # ---------------------------------------------------------------- the model
    def forward_encoder(self, x: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
        """``[B, 1 + #visible, C]``: class token, then the visible patches in raster order."""
        tokens = gather_units(self.encoder.embed(x), visible)  # [B, N, C] -> [B, keep, C]
        return self.encoder.encode(tokens)

    def forward_decoder(self, latent: torch.Tensor, visible: torch.Tensor, grid: list[int]) -> torch.Tensor:
        """Mask tokens at the hidden patches; returns predictions ``[B, N, P]`` (class token dropped)."""
        x = self.decoder_embed(latent)  # [B, 1 + keep, D]
        # (mask token and position embedding in x's dtype: the bf16 stream stays bf16, see Hiera._embed)
        full = scatter_units(self.mask_token.to(x.dtype), x[:, 1:], visible)  # [B, N, D], at the hidden patches
        x = torch.cat([x[:, :1], full], dim=1) + self._decoder_pos_embed(grid).to(x.dtype)  # [B, 1 + N, D]
        for block in self.decoder_blocks:
            x = self.run_block(block, x)
        return self.decoder_pred(self.decoder_norm(x))[:, 1:]  # [B, N, P]

    def _decoder_pos_embed(self, grid: list[int]) -> torch.Tensor:
        if tuple(grid) == tuple(self.encoder.grid_size):
            return self.decoder_pos_embed
        D = self.decoder_pos_embed.shape[-1]
        patches = resample_grid(self.decoder_pos_embed[:, 1:].view(1, *self.encoder.grid_size, D), grid)
        return torch.cat([self.decoder_pos_embed[:, :1], patches.flatten(1, 2)], dim=1)
