"""Optimizer construction: AdamW with weight-decay groups from the model's ``no_weight_decay``."""

from __future__ import annotations

import torch
from timm.optim import param_groups_layer_decay, param_groups_weight_decay
from torch import nn


def build_adamw(model: nn.Module, *, lr: float, weight_decay: float, betas: tuple[float, float],
                layer_decay: float | None = None) -> torch.optim.AdamW:
    """AdamW where biases, norms (every 1-D tensor) and ``model.no_weight_decay()`` get no weight decay, and frozen
    parameters are left out. With ``layer_decay`` (< 1), each group carries ``lr_scale = layer_decay ** (L - 1 -
    layer_id)`` (timm's ``param_groups_layer_decay`` over the model's ``group_matcher``); the training loop multiplies
    the scheduled lr by it.

    Uses the fused kernel where this torch has it (on CPU it was ~3x faster than the default for-each path here).
    """
    skip = model.no_weight_decay() if hasattr(model, "no_weight_decay") else set()
    if layer_decay is not None and layer_decay < 1:
        groups = param_groups_layer_decay(model, weight_decay, no_weight_decay_list=skip, layer_decay=layer_decay)
    else:
        groups = param_groups_weight_decay(model, weight_decay, no_weight_decay_list=skip)
    try:
        return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=True)
    except RuntimeError:  # torch < 2.4 has no fused AdamW on CPU
        return torch.optim.AdamW(groups, lr=lr, betas=betas)
