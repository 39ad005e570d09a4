"""timm's ``features_only`` interface over any encoder here: a module whose forward returns the chosen levels'
maps ``[B, C_i, H_i, W_i]`` (NCHW, in ``feature_info`` order) and whose ``feature_info`` is timm's own
``FeatureInfo``, so that libraries which take a timm backbone take ours unchanged."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from timm.models import FeatureInfo
from torch import nn

from .indices import take_indices


def default_out_indices(model: nn.Module) -> int:
    """timm's defaults: every stage of a hierarchical model, the last three blocks of a plain ViT."""
    return len(model.feature_info) if model.hierarchical else 3


class FeatureMaps(nn.Module):
    """``model``'s maps at ``out_indices`` (an int n: the last n levels; a list: those levels, negative from the
    end), without its head; ``forward(x) -> [map_0, map_1, ...]`` in increasing level order."""

    def __init__(self, model: nn.Module, out_indices: int | Sequence[int] | None = None):
        super().__init__()
        model.reset_classifier(0)
        count = len(model.feature_info)
        chosen = take_indices(count, default_out_indices(model) if out_indices is None else out_indices, "levels")
        self.model = model
        for p in getattr(model, "norm", nn.Identity()).parameters():  # the final norm is off the maps' path (timm
            p.requires_grad_(False)  # prunes it): frozen, so DDP finds no trainable parameter without a gradient
        self.out_indices = tuple(sorted(set(chosen)))
        self.feature_info = FeatureInfo(model.feature_info, self.out_indices)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.model.forward_intermediates(x, indices=list(self.out_indices), intermediates_only=True)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.model.set_grad_checkpointing(enable)
