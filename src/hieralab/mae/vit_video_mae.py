"""MAE pretraining of the video ViT, as MAE-ST (Feichtenhofer et al., "Masked Autoencoders As Spatiotemporal
Learners", NeurIPS 2022; facebookresearch/mae_st ``models_mae.py``).

Per-sample random masking of tubelet tokens (90 % by default), the encoder on the visible tokens and its class
token, then its final LayerNorm over every token (the same parameters fine-tuning applies after the pool: MAE-ST's
``norm``, our ``encoder.fc_norm``); the encoder's class token is dropped and the decoder has its own
(``decoder_cls_token``), mask tokens at the hidden positions, its own learned separate space / time position tables,
and predicts ``pred_t_dim`` frames of each token (``t_pred_patch_size = t_patch * pred_t_dim / frames``; 1 with the
defaults: one frame of each 2-frame token). Targets are the frames at ``linspace(0, T - 1, pred_t_dim)``
(:func:`~hieralab.mae.targets.sample_frames`), patchified in (u, p, q, c) order and normalised per patch.

Parameter names are MAE-ST's (``decoder_embed``, ``mask_token``, ``decoder_cls_token``, ``decoder_pos_embed_*``,
``decoder_blocks``, ``decoder_norm``, ``decoder_pred``) with the encoder under ``encoder.``; MAE-ST's pretraining
checkpoints load through :meth:`MaskedAutoencoderVideoViT.convert_checkpoint`. One visible order differs on purpose:
MAE-ST keeps the visible tokens in noise order, we keep them in raster order (:func:`gather_units`); attention
does not depend on the order, so the outputs agree to float rounding.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ..layers import Block
from ..layers import pos_embed as pe
from ..models.convert import to_mae_keys
from ..models.layout import gather_units, scatter_units
from ..models.vit_video import VideoVisionTransformer, from_mae_st
from . import targets
from .base import MAEBase


class MaskedAutoencoderVideoViT(MAEBase):
    encoder_class = VideoVisionTransformer  # what **encoder_args are the arguments of

    def __init__(
        self,
        *,
        mask_ratio: float = 0.9,
        decoder_embed_dim: int = 512,
        decoder_depth: int = 4,
        decoder_num_heads: int = 16,
        pred_t_dim: int = 8,
        norm_pix_loss: bool = True,
        **encoder_args: Any,
    ):
        super().__init__()
        self.encoder = VideoVisionTransformer(**{**encoder_args, "num_classes": 0})
        enc = self.encoder
        frames, t_patch = enc.grid_size[0] * enc.patch_stride[0], enc.patch_stride[0]
        if pred_t_dim < 1 or (t_patch * pred_t_dim) % frames or pred_t_dim > frames:
            raise ValueError(f"pred_t_dim={pred_t_dim}: must divide into the {enc.grid_size[0]} token steps of "
                             f"{frames} frames (t_patch_size * pred_t_dim a multiple of the frames, at most {frames})")
        self.mask_ratio, self.norm_pix_loss, self.pred_t_dim = mask_ratio, norm_pix_loss, pred_t_dim
        self.pred_tube = t_patch * pred_t_dim // frames  # MAE-ST's t_pred_patch_size: predicted frames per token
        p = enc.patch_size
        D = decoder_embed_dim
        self.decoder_embed = nn.Linear(enc.embed_dim, D)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, D))
        self.decoder_cls_token = nn.Parameter(torch.zeros(1, 1, D))  # MAE-ST leaves it at zero
        T0, H0, W0 = enc.grid_size
        self.decoder_pos_embed_spatial = nn.Parameter(torch.zeros(1, H0 * W0, D))
        self.decoder_pos_embed_temporal = nn.Parameter(torch.zeros(1, T0, D))
        self.decoder_pos_embed_class = nn.Parameter(torch.zeros(1, 1, D))
        self.decoder_blocks = nn.ModuleList([
            Block(D, decoder_num_heads, mlp_ratio=enc.config["mlp_ratio"], qkv_bias=enc.config["qkv_bias"],
                  norm_eps=enc.config["norm_eps"]) for _ in range(decoder_depth)])
        self.decoder_norm = nn.LayerNorm(D, eps=enc.config["norm_eps"])
        self.decoder_pred = nn.Linear(D, self.pred_tube * p * p * enc.in_chans)
        for t in (self.decoder_pos_embed_spatial, self.decoder_pos_embed_temporal, self.decoder_pos_embed_class):
            nn.init.trunc_normal_(t, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)
        for m in [self.decoder_embed, self.decoder_pred, *self.decoder_blocks.modules()]:
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def convert_checkpoint(self, sd: Mapping[str, torch.Tensor]) -> tuple[str, dict[str, torch.Tensor]]:
        """An MAE-ST pretraining checkpoint (or ours) in this model's keys: q / k / v fused in the encoder's and the
        decoder's blocks, MAE-ST's ``norm`` as ``encoder.fc_norm``, the encoder under ``encoder.``."""
        kind, sd = from_mae_st(sd, norm_after_pool=isinstance(self.encoder.fc_norm, nn.LayerNorm))
        return kind, to_mae_keys(sd)

    # ---------------------------------------------------------------- masks and targets
    def num_units(self, x: torch.Tensor) -> list[int]:
        """Mask units (= tubelet tokens) per dim: ``[T', H', W']``."""
        return list(self.encoder.token_grid(x))

    def target(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, N, pred_tube * p * p * C]``: the prediction frames of ``x`` as MAE-ST's patches."""
        steps = self.encoder.token_grid(x)[0]
        frames = targets.sample_frames(x, steps * self.pred_tube)  # [B, C, pred_t_dim, H, W]
        return targets.patchify_tubes(frames, self.encoder.patch_size, self.pred_tube)

    def target_to_pixels(self, patches: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Patches ``[B, N, P]`` back to the prediction frames ``[B, C, pred_t_dim, H, W]``."""
        return targets.unpatchify_tubes(patches, self.encoder.patch_size, self.pred_tube, self.num_units(x))

    def visible_patches(self, visible: torch.Tensor, num_units: list[int]) -> torch.Tensor:
        """One target patch per token: ``[B, N]`` unchanged."""
        return visible

    # ---------------------------------------------------------------- the model
    def forward_encoder(self, x: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
        """``[B, #visible, C]``: the visible tokens (raster order) after the blocks and the final norm; the class token
        ran with them and is dropped, as MAE-ST."""
        tokens = gather_units(self.encoder.embed(x), visible)  # [B, N, C] -> [B, keep, C]
        latent = self.encoder.fc_norm(self.encoder.encode(tokens))  # [B, 1 + keep, C]; MAE-ST's norm on every token
        return latent[:, 1:]  # [B, keep, C]

    def forward_decoder(self, latent: torch.Tensor, visible: torch.Tensor, grid: list[int]) -> torch.Tensor:
        """Mask tokens at the hidden positions, the decoder's class token first; returns predictions ``[B, N, P]``."""
        x = self.decoder_embed(latent)  # [B, keep, D]
        # (mask token, class token and position embedding in x's dtype: the bf16 stream stays bf16, see Hiera._embed)
        full = scatter_units(self.mask_token.to(x.dtype), x, visible)  # [B, N, D]
        cls = self.decoder_cls_token.to(x.dtype).expand(x.shape[0], -1, -1)  # [B, 1, D]
        x = torch.cat([cls, full], dim=1) + self._decoder_pos_embed(grid).to(x.dtype)  # [B, 1 + N, D]
        for block in self.decoder_blocks:
            x = self.run_block(block, x)
        return self.decoder_pred(self.decoder_norm(x))[:, 1:]  # [B, N, P]

    def _decoder_pos_embed(self, grid: list[int]) -> torch.Tensor:
        """``[1, 1 + N, D]``: the class row, then space + time for the token grid (resampled if not stored)."""
        D = self.decoder_pos_embed_class.shape[-1]
        patches = pe.separate(self.decoder_pos_embed_spatial, self.decoder_pos_embed_temporal,
                              self.encoder.grid_size, grid).reshape(1, -1, D)  # [1, N, D]
        return torch.cat([self.decoder_pos_embed_class, patches], dim=1)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        own = {n for n, _ in self.named_parameters() if n.startswith(("decoder_pos_embed", "decoder_cls_token"))}
        return {f"encoder.{n}" for n in self.encoder.no_weight_decay()} | own | {"mask_token"}
