"""Convolutional patch embedding for 2-D images and 3-D video, with masked units zeroed before the conv."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class PatchEmbed(nn.Module):
    """``[B, C_in, *S]`` pixels to ``[B, *G, C]`` tokens (channels last) with one strided conv.

    With ``visible`` (``[B, *#MU]``, True = the encoder sees the unit) the pixels of deleted units are zeroed first,
    so the overlapping kernel (7x7, stride 4) cannot read them from the edge of a kept unit.
    """

    def __init__(self, in_chans: int, dim: int, kernel: Sequence[int], stride: Sequence[int], padding: Sequence[int]):
        super().__init__()
        conv = {2: nn.Conv2d, 3: nn.Conv3d}[len(kernel)]
        self.proj = conv(in_chans, dim, kernel_size=tuple(kernel), stride=tuple(stride), padding=tuple(padding))

    def forward(self, x: torch.Tensor, visible: torch.Tensor | None = None) -> torch.Tensor:
        if visible is not None:
            # nearest upsampling of the unit mask to pixels, as the official code does
            x = x * F.interpolate(visible[:, None].to(x.dtype), size=x.shape[2:])  # [B, C_in, *S]
        x = self.proj(x)  # [B, C, *G]
        return x.movedim(1, -1)  # [B, *G, C]
