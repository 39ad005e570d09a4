"""An inference-only Linear whose weight is prepacked for oneDNN, with an optional fused GELU.

On this kind of CPU the small-M matmuls of a batch-1 Hiera (49 or 196 tokens in stages 3-4) run 15-40 % faster from
a prepacked weight than through ``F.linear``, and the bias and GELU ride in the matmul's epilogue instead of extra
passes over memory. This is the transformation ``torch.compile`` applies with freezing on CPU, available in eager.
Under ``torch.autocast`` (or with an input that is not fp32 on the CPU) the layer runs the plain ``F.linear`` (and
``F.gelu``) on its unpacked weight, so it computes what the eager model would in that precision.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def onednn_available() -> bool:
    ops = torch.ops.mkldnn
    return torch.backends.mkldnn.is_available() and hasattr(ops, "_linear_pointwise") \
        and hasattr(ops, "_reorder_linear_weight")


class PackedLinear(nn.Module):
    """``y = act(x @ W.T + b)`` for CPU inference in fp32 or bf16 (the Linear's own dtype); ``act`` is ``"none"`` or
    ``"gelu"`` (exact, erf).

    oneDNN chooses the packed layout for a row count, and a layout packed for the real count is up to 30 % faster
    (measured on 3136 x 96 x 576), so the weight is packed on first use for each row count seen (a few at most).
    """

    MAX_LAYOUTS = 4

    def __init__(self, linear: nn.Linear, *, act: str = "none"):
        super().__init__()
        if act not in ("none", "gelu"):
            raise ValueError(f"act must be 'none' or 'gelu', got {act!r}")
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.act = act
        # the layer's own dtype: fp32, or bf16 (optimize_for_inference(dtype=torch.bfloat16) packs bf16 weights)
        dtype = linear.weight.dtype if linear.weight.dtype == torch.bfloat16 else torch.float32
        self.weight = linear.weight.detach().to("cpu", dtype)
        self.bias = linear.bias.detach().to("cpu", dtype) if linear.bias is not None else None
        self._packed: dict[int, torch.Tensor] = {}

    def _weight_for(self, rows: int) -> torch.Tensor:
        packed = self._packed.get(rows)
        if packed is None:
            if len(self._packed) >= self.MAX_LAYOUTS:
                self._packed.pop(next(iter(self._packed)))
            packed = self._packed[rows] = torch.ops.mkldnn._reorder_linear_weight(self.weight, rows)
        return packed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._packable(x):  # autocast, another dtype or device: the plain ops, as the eager model runs them
            y = F.linear(x, self.weight.to(x.device), None if self.bias is None else self.bias.to(x.device))
            return F.gelu(y) if self.act == "gelu" else y
        weight = self._weight_for(x.numel() // self.in_features)
        algorithm = "none" if self.act == "gelu" else ""
        return torch.ops.mkldnn._linear_pointwise(x, weight, self.bias, self.act, [], algorithm)

    def _packable(self, x: torch.Tensor) -> bool:
        """Whether the prepacked path applies: a CPU input of the weight's dtype; for fp32 weights, outside autocast
        (under CPU autocast the eager model computes in bfloat16 / float16, and oneDNN refuses fp32 packed weights
        with a lower-precision input). bf16 weights with a bf16 input are what autocast would compute anyway."""
        if x.device.type != "cpu" or x.dtype != self.weight.dtype:
            return False
        return x.dtype == torch.bfloat16 or not torch.is_autocast_enabled("cpu")

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, act={self.act}"
