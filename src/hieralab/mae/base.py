"""What every MAE here shares: the forward as the paper reads (encoder on the visible units -> decoder with mask
tokens -> loss on the hidden patches), mask drawing, the loss, and bookkeeping. Subclasses supply the encoder side
(``num_units``, ``target``, ``target_to_pixels``, ``visible_patches``, ``forward_encoder``, ``forward_decoder``)."""

from __future__ import annotations

import math
import torch
from torch import nn

from ..models import registry
from ..models.base import PretrainedMixin
from . import targets
from .masking import random_visible
from .output import MAEOutput


class MAEBase(PretrainedMixin, nn.Module):
    is_mae = True
    encoder: nn.Module
    mask_ratio: float
    norm_pix_loss: bool

    # Encoder arguments an MAE sets for pretraining that its fine-tuned encoder does not keep: the official MAE
    # models pool twice (q_pool 2) where the classifiers pool three times, and drop path is a per-run choice.
    PRETRAINING_ONLY = ("q_pool", "num_classes", "drop_path_rate", "head_dropout", "head_init_scale")

    def export_encoder(self, name: str) -> nn.Module:
        """The encoder as the registered model ``name`` (``hiera_mini_32`` for ``mae_hiera_mini_32``), headless
        (``num_classes=0``): this MAE's architecture over ``name``'s registered arguments, except the pretraining
        ones (:attr:`PRETRAINING_ONLY`), and the encoder's weights. A final norm the MAE does not have (Hiera's,
        which the MAE replaces by its fusion norm) keeps the fresh init that fine-tuning gives it anyway."""
        arch = {k: v for k, v in self.encoder.config.items() if k not in self.PRETRAINING_ONLY}
        encoder = registry.build(name, **{**arch, "num_classes": 0})
        result = encoder.load_state_dict(self.encoder.state_dict(), strict=False)
        if result.unexpected_keys or any(not k.startswith("norm.") for k in result.missing_keys):
            raise ValueError(f"{name} does not hold this MAE's encoder (missing {result.missing_keys[:3]}, "
                             f"unexpected {result.unexpected_keys[:3]})")
        return encoder

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
        # in fp32 (the target is the fp32 input's pixels; a bf16 decoder output is cast up before the reduction)
        return targets.masked_mse(pred.float(), target.float(), visible_patches), target

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
