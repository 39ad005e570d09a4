"""What every MAE model returns."""

from __future__ import annotations

from typing import NamedTuple

import torch


class MAEOutput(NamedTuple):
    loss: torch.Tensor  # [] MSE on the hidden patches
    pred: torch.Tensor  # [B, N, P] the decoder's prediction for every target patch (normalised if norm_pix_loss)
    target: torch.Tensor  # [B, N, P] the pixels it is compared with (normalised if norm_pix_loss)
    visible: torch.Tensor  # [B, #MU] bool, True = the unit went through the encoder
    visible_patches: torch.Tensor  # [B, N] bool, the same mask at target-patch resolution; the loss is on ~this
