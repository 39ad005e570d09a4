"""Turn a model into a faster CPU inference model: fp32 (the same outputs within float rounding) or bf16."""

from __future__ import annotations

import copy
import logging
from typing import Any

import torch
from torch import nn
from torch.utils._pytree import tree_flatten, tree_map

from ..layers import Mlp
from ..layers.packed_linear import PackedLinear, onednn_available

log = logging.getLogger(__name__)


def optimize_for_inference(model: nn.Module, dtype: torch.dtype = torch.float32) -> nn.Module:
    """A copy of ``model`` in eval mode whose Linear layers use prepacked oneDNN weights, with each MLP's GELU fused
    into its first matmul; for CPU inference (no gradients, no state dict to save).

    ``dtype=torch.float32``: the same outputs within float rounding. Under ``torch.autocast("cpu",
    dtype=torch.bfloat16)`` it still runs: the packed layers then take the unpacked path and compute in the autocast
    dtype, as the eager model does.

    ``dtype=torch.bfloat16``: every weight and buffer is stored in bf16 and the Linear weights are packed in bf16, so
    the whole forward runs in bf16 (LayerNorm and the attention softmax accumulate in fp32 inside their kernels).
    ``model(x)`` casts a float input to bf16 and returns its outputs in the input's dtype (fp32 in, fp32 out); the
    model's other methods (``forward_features``, ...) take and return bf16. Worth it on a CPU with native bf16
    (``avx512_bf16`` / ``amx_bf16``); elsewhere oneDNN emulates it, slower than fp32.

    Returns a plain eval copy (in ``dtype``) where oneDNN is unavailable."""
    if dtype not in (torch.float32, torch.bfloat16):
        raise ValueError(f"optimize_for_inference: dtype must be torch.float32 or torch.bfloat16, got {dtype}")
    if any(p.device.type != "cpu" or p.dtype != torch.float32 for p in model.parameters()):
        raise ValueError("optimize_for_inference packs fp32 CPU weights; call it before moving the model elsewhere")
    model = copy.deepcopy(model).eval().requires_grad_(False)
    if dtype != torch.float32:
        model.to(dtype)
        model.register_forward_pre_hook(_inputs_to(dtype))
        model.register_forward_hook(_outputs_back)
    if not onednn_available():
        log.warning("oneDNN linear ops are unavailable in this torch build; returning the model unpacked")
        return model
    for module in list(model.modules()):
        if isinstance(module, Mlp) and isinstance(module.act, nn.GELU) and module.act.approximate == "none":
            module.fc1 = PackedLinear(module.fc1, act="gelu")
            module.act = nn.Identity()
        for name, child in list(module.named_children()):
            if type(child) is nn.Linear:
                setattr(module, name, PackedLinear(child))
    return model


def _inputs_to(dtype: torch.dtype):
    """A forward pre-hook: floating tensor arguments cast to ``dtype``, their first dtype remembered for the
    outputs."""
    def hook(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        floats = [a for a in tree_flatten(args)[0] if isinstance(a, torch.Tensor) and a.is_floating_point()]
        module._input_dtype = floats[0].dtype if floats else None
        return tree_map(lambda a: a.to(dtype) if isinstance(a, torch.Tensor) and a.is_floating_point() else a, args)
    return hook


def _outputs_back(module: nn.Module, args: tuple[Any, ...], output: Any) -> Any:
    """A forward hook: floating tensor outputs cast back to the input's dtype (see :func:`_inputs_to`)."""
    dtype = getattr(module, "_input_dtype", None)
    if dtype is None:
        return output
    return tree_map(lambda a: a.to(dtype) if isinstance(a, torch.Tensor) and a.is_floating_point() else a, output)
