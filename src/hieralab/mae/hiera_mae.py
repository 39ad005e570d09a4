"""MAE pretraining of Hiera (Ryali et al. 2023, Sec. 4): mask units deleted from the encoder input, multi-scale
fusion of the stage outputs, a light transformer decoder, MSE on normalised pixels of the hidden patches.

Parameter names match the official ``hiera.MaskedAutoencoderHiera`` once the encoder's are prefixed by ``encoder.``
(see ``models/checkpoint.py``), so the released MAE checkpoints load and give the official loss and predictions.

The forward reads as the paper: :meth:`forward_encoder` (sparse Hiera + fusion) -> :meth:`forward_decoder` (mask
tokens, position embedding, blocks, pixel projection) -> :meth:`forward_loss`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..layers import Block
from ..layers.pos_embed import resample_grid
from ..models.hiera import Hiera
from ..models.layout import scatter_units, windows_to_grid
from . import targets
from .base import MAEBase


class MaskedAutoencoderHiera(MAEBase):
    """Hiera encoder (any ``Hiera`` argument) + MAE decoder. Images ``[B, C, H, W]`` or clips ``[B, C, T, H, W]``."""

    encoder_class = Hiera  # what **encoder_args are the arguments of

    def __init__(
        self,
        *,
        mask_ratio: float = 0.6,
        decoder_embed_dim: int = 512,
        decoder_depth: int = 8,
        decoder_num_heads: int = 16,
        norm_pix_loss: bool = True,
        **encoder_args: Any,
    ):
        super().__init__()
        encoder_args = {"q_pool": 2, **encoder_args, "num_classes": 0}  # every official MAE model pools twice
        self.encoder = Hiera(**encoder_args)
        enc = self.encoder
        enc.norm = nn.Identity()  # the MAE normalises the fused features instead (encoder_norm)
        self.mask_ratio = mask_ratio
        self.norm_pix_loss = norm_pix_loss
        self.ndim = enc.ndim
        q_pool, schedule = enc.q_pool, enc.schedule
        # Stages after the last q-pool keep its resolution; their outputs are not fused (only the last one is).
        self.fused_stages = list(range(q_pool)) + [len(enc.stage_ends) - 1]
        pooled = [math.prod(s[d] for s in schedule[:q_pool]) for d in range(self.ndim)]
        self.mu_final = [m // p for m, p in zip(enc.mask_unit_size, pooled)]  # tokens per unit after q_pool
        widths = [enc.blocks[e].dim_out for e in enc.stage_ends]
        self.multi_scale_fusion_heads = nn.ModuleList()
        conv = nn.Conv2d if self.ndim == 2 else nn.Conv3d
        for stage in range(q_pool):
            # a conv with kernel = stride takes a stage's unit window [*mu_s] to the final one [*mu_final]
            kernel = [math.prod(s[d] for s in schedule[stage:q_pool]) for d in range(self.ndim)]
            self.multi_scale_fusion_heads.append(conv(widths[stage], widths[-1], kernel, stride=kernel))
        self.multi_scale_fusion_heads.append(nn.Identity())  # the last stage is already at the final resolution
        self.encoder_norm = nn.LayerNorm(widths[-1], eps=enc.config["norm_eps"])

        self.decoder_embed = nn.Linear(widths[-1], decoder_embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
        self.token_grid_final = [g // p for g, p in zip(enc.stored_grid, pooled)]
        self.decoder_pos_embed = nn.Parameter(torch.zeros(1, math.prod(self.token_grid_final), decoder_embed_dim))
        self.decoder_blocks = nn.ModuleList([
            Block(decoder_embed_dim, decoder_num_heads, mlp_ratio=enc.config["mlp_ratio"],
                  norm_eps=enc.config["norm_eps"]) for _ in range(decoder_depth)])
        self.decoder_norm = nn.LayerNorm(decoder_embed_dim, eps=enc.config["norm_eps"])
        # Predictions are 2-D pixel patches at the final token stride (16 px for the official models); a video token
        # predicts the first of its frames (see targets.patchify_video).
        self.pred_stride = enc.patch_stride[-1] * pooled[-1]
        self.decoder_pred = nn.Linear(decoder_embed_dim, self.pred_stride ** 2 * enc.in_chans)
        self._init_weights()

    def _init_weights(self) -> None:
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        nn.init.trunc_normal_(self.decoder_pos_embed, std=0.02)
        for m in self.modules():  # MAE's init: xavier-uniform Linear with zero bias, unit LayerNorm
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        w = self.encoder.patch_embed.proj.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))  # the patch embed as the Linear it is

    # ---------------------------------------------------------------- masks and targets
    def num_units(self, x: torch.Tensor) -> list[int]:
        """Mask units per dim for input ``x`` (e.g. ``[7, 7]`` at 224 px, ``[8, 7, 7]`` for 16x224 video)."""
        grid = self.encoder.token_grid(x)
        return [g // m for g, m in zip(grid, self.encoder.mask_unit_size)]

    def target(self, x: torch.Tensor) -> torch.Tensor:
        """Raw pixel patches ``[B, N, P]`` in the official label layout (before per-patch normalisation)."""
        if self.ndim == 2:
            return targets.patchify(x, self.pred_stride, channels_last=False)  # the official 2-D label order
        return targets.patchify_video(x, self.pred_stride, self.encoder.patch_stride[0])

    def target_to_pixels(self, patches: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Target-layout patches ``[B, N, P]`` back to pixels: ``[B, C, H, W]``, or ``[B, C, T', H, W]`` for the
        label frames of a clip."""
        p = self.pred_stride
        if self.ndim == 2:
            return targets.unpatchify(patches, p, (x.shape[-2] // p, x.shape[-1] // p), channels_last=False)
        grid = (x.shape[2] // self.encoder.patch_stride[0], x.shape[-2] // p, x.shape[-1] // p)
        return targets.unpatchify_video(patches, p, grid)

    def visible_patches(self, visible: torch.Tensor, num_units: Sequence[int]) -> torch.Tensor:
        """Unit mask ``[B, #MU]`` at target-patch resolution: ``[B, N]`` in the decoder's raster order."""
        B = visible.shape[0]
        grid = visible.view(B, *num_units)
        for d, m in enumerate(self.mu_final):
            grid = grid.repeat_interleave(m, dim=d + 1)
        return grid.reshape(B, -1)

    # ---------------------------------------------------------------- the model
    def forward_encoder(self, x: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
        """Sparse encoder + multi-scale fusion: ``[B, #visible, *mu_final, C]`` (normalised)."""
        maps = self.encoder.forward_intermediates(x, self.fused_stages, visible=visible, intermediates_only=True)
        fused = 0.0
        for head, m in zip(self.multi_scale_fusion_heads, maps):  # m: [B, #visible, *mu_s, C_s]
            if not isinstance(head, nn.Identity):
                m = window_conv(m, head)  # [B, #visible, *mu_final, C_last]
            fused = fused + m
        return self.encoder_norm(fused)

    def forward_decoder(self, latent: torch.Tensor, visible: torch.Tensor, num_units: Sequence[int]) -> torch.Tensor:
        """Mask tokens fill the deleted units; returns the pixel predictions ``[B, N, P]`` in raster order."""
        x = self.decoder_embed(latent)  # [B, #visible, *mu_final, D]
        D = x.shape[-1]
        # The visible units back among mask tokens: [B, #MU, *mu_final, D].
        # (mask token and position embedding in x's dtype: under bf16 autocast the decoder's stream stays bf16, as
        # the encoder's; see Hiera._embed)
        full = scatter_units(self.mask_token.to(x.dtype).view(1, 1, *([1] * self.ndim), D), x, visible)
        x = windows_to_grid(full, num_units).flatten(1, -2)  # [B, N, D], raster order over the final token grid
        x = x + self._decoder_pos_embed(num_units).to(x.dtype)
        for block in self.decoder_blocks:
            x = self.run_block(block, x)
        return self.decoder_pred(self.decoder_norm(x))  # [B, N, P]

    def _decoder_pos_embed(self, num_units: Sequence[int]) -> torch.Tensor:
        grid = [n * m for n, m in zip(num_units, self.mu_final)]
        if grid == self.token_grid_final:
            return self.decoder_pos_embed
        if self.ndim == 3:
            raise ValueError(f"the video MAE decoder is built for token grid {self.token_grid_final}, got {grid}")
        pos = self.decoder_pos_embed.view(1, *self.token_grid_final, -1)
        return resample_grid(pos, grid).flatten(1, 2)

    # ---------------------------------------------------------------- bookkeeping


def window_conv(x: torch.Tensor, conv: nn.Conv2d | nn.Conv3d) -> torch.Tensor:
    """A fusion head's conv (kernel = stride, no padding) on channels-last unit windows, as the linear map it is:
    ``[B, U, *mu_s, C_in] -> [B, U, *mu_s / kernel, C_out]``.

    Each unit dim is split into (output position, kernel offset), the offsets are brought next to the channels and
    one matmul applies the conv's weight, flattened in the same (offsets, channel) order. Same weights and values as
    ``conv`` on ``[N, C_in, *mu_s]``, without the channels-first copies, and without inductor's convolution layout
    choice, which breaks under ``torch.compile`` when N (= B x #visible) is a size read from the mask.
    """
    k = conv.kernel_size
    nd = len(k)
    B, U, *mu, C = x.shape
    out = [s // kk for s, kk in zip(mu, k)]
    x = x.reshape(B, U, *[v for o, kk in zip(out, k) for v in (o, kk)], C)  # [B, U, o_0, k_0, o_1, k_1, ..., C]
    x = x.permute(0, 1, *range(2, 2 + 2 * nd, 2), *range(3, 3 + 2 * nd, 2), 2 + 2 * nd)  # [B, U, *o, *k, C]
    x = x.reshape(B, U, *out, -1)  # [B, U, *o, prod(k) * C_in]
    w = conv.weight.permute(0, *range(2, 2 + nd), 1).reshape(conv.out_channels, -1)  # [C_out, prod(k) * C_in]
    return nn.functional.linear(x, w, conv.bias)
