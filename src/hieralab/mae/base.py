"""What every MAE here shares: the forward as the paper reads (encoder on the visible units -> decoder with mask
tokens -> loss on the hidden patches), mask drawing, the loss, and bookkeeping. Subclasses supply the encoder side
(``num_units``, ``target``, ``target_to_pixels``, ``visible_patches``, ``forward_encoder``, ``forward_decoder``)."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ..models.checkpoint import PretrainedMixin
from . import targets
from .masking import random_visible
from .output import MAEOutput


class MAEBase(PretrainedMixin, nn.Module):
    is_mae = True
    encoder: nn.Module
    mask_ratio: float
    norm_pix_loss: bool

    def _mae_config(self, **decoder: Any) -> dict[str, Any]:
        """The encoder's constructor arguments plus the MAE's: plain data for ``save_pretrained``."""
        return {**self.encoder.config, **decoder}

    def random_visible(self, x: torch.Tensor, mask_ratio: float | None = None, *,
                       generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw ``[B, #MU]`` (True = visible) for input ``x``; from ``generator`` (a CPU one) if given."""
        ratio = self.mask_ratio if mask_ratio is None else mask_ratio
        device = x.device if generator is None else "cpu"
        return random_visible(x.shape[0], math.prod(self.num_units(x)), ratio, generator=generator,
                              device=device).to(x.device)

    def forward_loss(self, x: torch.Tensor, pred: torch.Tensor, visible_patches: torch.Tensor):
        """``(loss, target)``: MSE on the hidden patches, against per-patch normalised pixels if ``norm_pix_loss``."""
        target = self.target(x)
        if self.norm_pix_loss:
            target = targets.normalize_patches(target)[0]
        return targets.masked_mse(pred, target, visible_patches), target

    def forward(
        self,
        x: torch.Tensor,
        visible: torch.Tensor | None = None,
        *,
        mask_ratio: float | None = None,
        generator: torch.Generator | None = None,
    ) -> MAEOutput:
        """Pixels (and optionally the mask, ``[B, #MU]`` True = visible) to :class:`MAEOutput`.

        Without ``visible`` a mask is drawn with ``mask_ratio`` (default: the model's) from ``generator``.
        """
        num_units = self.num_units(x)
        if visible is None:
            visible = self.random_visible(x, mask_ratio, generator=generator)
        visible = visible.reshape(x.shape[0], -1)
        latent = self.forward_encoder(x, visible)
        pred = self.forward_decoder(latent, visible, num_units)
        visible_patches = self.visible_patches(visible, num_units)
        loss, target = self.forward_loss(x, pred, visible_patches)
        return MAEOutput(loss, pred, target, visible, visible_patches)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        own = {n for n, _ in self.named_parameters() if n in ("mask_token", "decoder_pos_embed")}
        return {f"encoder.{n}" for n in self.encoder.no_weight_decay()} | own
