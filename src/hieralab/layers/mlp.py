"""The transformer MLP: Linear, GELU, Linear (parameter names ``fc1`` / ``fc2`` as in timm and the official code)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class _GeluLinear(torch.autograd.Function):
    """``linear(gelu(h), w, b)`` that saves only ``h``: backward recomputes the GELU instead of keeping its output.

    Autograd would otherwise keep two [..., hidden] tensors per MLP (fc1's output for GELU, GELU's output for fc2);
    they are the largest activations of a training step (MAE-Hiera step peak memory 0.85x -> 0.67x of the official
    step, gradients bit-identical, time within 2 %: docs/bench_mae.md).
    """

    @staticmethod
    def forward(ctx, h: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(h, w)
        ctx.b_dtype = b.dtype
        return F.linear(F.gelu(h), w, b)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        h, w = ctx.saved_tensors
        dtype = grad_out.dtype  # under autocast the matmuls ran in grad_out's dtype; the parameters stay fp32
        go = grad_out.reshape(-1, grad_out.shape[-1])  # [N, out]
        g = F.gelu(h).to(dtype).reshape(-1, h.shape[-1])  # [N, hidden]
        grad_w = (go.t() @ g).to(w.dtype)  # [out, hidden]
        grad_g = (grad_out @ w.to(dtype)).to(h.dtype)  # [..., hidden]
        return torch.ops.aten.gelu_backward(grad_g, h), grad_w, go.sum(0).to(ctx.b_dtype)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden_dim: int, dim_out: int | None = None, *, drop: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()  # exact (erf) GELU: the tanh approximation would break checkpoint parity
        self.fc2 = nn.Linear(hidden_dim, dim_out or dim)
        self.drop = nn.Dropout(drop) if drop > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and self._plain_gelu_linear():
            return _GeluLinear.apply(self.fc1(x), self.fc2.weight, self.fc2.bias)  # training: lighter on memory
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))

    def _plain_gelu_linear(self) -> bool:
        """True while the layers are the ones built here (not swapped by ``optimize_for_inference``), without dropout."""
        act = self.act
        return (
            isinstance(act, nn.GELU) and act.approximate == "none" and isinstance(self.drop, nn.Identity)
            and type(self.fc2) is nn.Linear and self.fc2.bias is not None
        )
