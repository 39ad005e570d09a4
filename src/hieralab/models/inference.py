"""Turn a model into a faster fp32 CPU inference model (same outputs within float rounding)."""

from __future__ import annotations

import copy
import logging

import torch
from torch import nn

from ..layers import Mlp
from ..layers.packed_linear import PackedLinear, onednn_available

log = logging.getLogger(__name__)


def optimize_for_inference(model: nn.Module) -> nn.Module:
    """A copy of ``model`` in eval mode whose Linear layers use prepacked oneDNN weights, with each MLP's GELU fused
    into its first matmul. CPU and fp32 only; the copy is for inference (no gradients, no state dict to save).
    Under ``torch.autocast("cpu", dtype=torch.bfloat16)`` it still runs: the packed layers then take the unpacked
    path and compute in the autocast dtype, as the eager model does. Returns a plain eval copy where oneDNN is
    unavailable."""
    model = copy.deepcopy(model).eval().requires_grad_(False)
    if not onednn_available():
        log.warning("oneDNN linear ops are unavailable in this torch build; returning the model unchanged")
        return model
    if any(p.device.type != "cpu" or p.dtype != torch.float32 for p in model.parameters()):
        raise ValueError("optimize_for_inference packs fp32 CPU weights; call it before moving the model elsewhere")
    for module in list(model.modules()):
        if isinstance(module, Mlp) and isinstance(module.act, nn.GELU) and module.act.approximate == "none":
            module.fc1 = PackedLinear(module.fc1, act="gelu")
            module.act = nn.Identity()
        for name, child in list(module.named_children()):
            if type(child) is nn.Linear:
                setattr(module, name, PackedLinear(child))
    return model

