"""Token layout of Hiera: unroll a spatial grid into mask units, and reroll it back.

Hiera never runs a windowing or pooling kernel. Instead the tokens are put once, right after the patch embed, into
an order where both are a reshape:

* tokens are grouped by **mask unit** (a block of ``mu_size`` tokens, e.g. 8x8); units are in raster order;
* inside a unit, tokens are ordered by their pooling offsets, coarsest pooling level innermost. With a pooling
  schedule ``s_1, ..., s_K`` (each a per-dim stride, e.g. (2, 2)) the in-unit index is ``(a_1, a_2, ..., a_K)`` where
  ``a_k`` is the offset at level ``k``. A token at in-unit position ``r`` (per dim) has
  ``r = a_1 + s_1 * (a_2 + s_2 * (a_3 + ...))``.

So max-pooling level 1 is ``x.view(B, #MU, prod(s_1), -1, C).amax(2)`` and what is left keeps the same layout with
one level fewer. Mask-unit attention is attention over dim 2 of ``[B, #MU, L, C]``, and deleting a masked unit is a
gather along dim 1.

This is the layout of the official code with the two outer axes swapped: the official order is
``[B, L, #MU, C]`` (unit index fastest), ours is ``[B, #MU, L, C]`` (unit index slowest), which lets attention
fold ``B * #MU`` into one batch axis as a view, for the 4-D ``scaled_dot_product_attention`` kernels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch._subclasses.fake_tensor import FakeTensor

Shape = Sequence[int]


def _split_dims(num_units: Shape, schedule: Sequence[Shape]) -> tuple[list[int], list[int], list[int]]:
    """The view that splits each spatial dim into ``[#MU_d, s_K[d], ..., s_1[d]]`` and the permutation that brings it
    to ``[#MU_0, #MU_1, ..., s_1 dims..., s_2 dims..., ..., s_K dims...]`` (both without the B and C axes)."""
    ndim = len(num_units)
    levels = len(schedule)
    view: list[int] = []
    for d in range(ndim):
        view += [num_units[d]] + [schedule[k][d] for k in reversed(range(levels))]
    per_dim = levels + 1  # positions of dim d in `view`: d * per_dim + (0 for #MU, 1 + (K-1-k) for level k)
    perm = [d * per_dim for d in range(ndim)]
    for k in range(levels):
        perm += [d * per_dim + 1 + (levels - 1 - k) for d in range(ndim)]
    return view, perm, [num_units[d] * math.prod([s[d] for s in schedule]) for d in range(ndim)]


def unroll(x: torch.Tensor, num_units: Shape, schedule: Sequence[Shape]) -> torch.Tensor:
    """Spatial tokens to the mask-unit layout.

    Args:
        x: ``[B, *G, C]`` tokens on the grid ``G`` (``[B, H, W, C]`` or ``[B, T, H, W, C]``).
        num_units: mask units per dim, ``G[d] == num_units[d] * prod(s[d] for s in schedule)``.
        schedule: per-level pooling strides, finest first, e.g. ``[(2, 2)] * 3``.
    Returns:
        ``[B, #MU, L, C]`` with ``#MU = prod(num_units)`` and ``L = prod(G) / #MU``.
    """
    B, C = x.shape[0], x.shape[-1]
    view, perm, grid = _split_dims(num_units, schedule)
    if list(x.shape[1:-1]) != grid:
        raise ValueError(f"unroll: grid {tuple(x.shape[1:-1])} does not match mask units {tuple(num_units)} x strides")
    x = x.reshape(B, *view, C)
    x = x.permute(0, *(p + 1 for p in perm), len(view) + 1)  # [B, *#MU, *s_1, ..., *s_K, C]
    return x.reshape(B, math.prod(num_units), -1, C)  # [B, #MU, L, C]


def reroll(x: torch.Tensor, num_units: Shape, schedule: Sequence[Shape]) -> torch.Tensor:
    """The inverse of :func:`unroll`: ``[B, #MU, L, C]`` to ``[B, *G, C]``.

    ``schedule`` is what is left of the pooling schedule at this depth (levels already pooled away are dropped from
    its front), so reroll of a stage output gives that stage's spatial map.
    """
    B, C = x.shape[0], x.shape[-1]
    view, perm, grid = _split_dims(num_units, schedule)
    permuted_shape = [view[p] for p in perm]
    x = x.reshape(B, *permuted_shape, C)  # [B, *#MU, *s_1, ..., *s_K, C]
    inverse = sorted(range(len(perm)), key=perm.__getitem__)
    x = x.permute(0, *(i + 1 for i in inverse), len(view) + 1)  # [B, #MU_0, s_K[0], ..., s_1[0], #MU_1, ..., C]
    return x.reshape(B, *grid, C)


def units_to_windows(x: torch.Tensor, schedule: Sequence[Shape], ndim: int) -> torch.Tensor:
    """Per-unit tokens to per-unit spatial windows: ``[B, #MU, L, C]`` to ``[B, #MU, *mu, C]``.

    Used for masked forwards, where deleted units leave no grid to reroll into (the official masked intermediates
    have this shape too).
    """
    B, U, C = x.shape[0], x.shape[1], x.shape[-1]
    windows = reroll(x.reshape(B * U, 1, -1, C), [1] * ndim, schedule)  # [B*#MU, *mu, C]
    return windows.reshape(B, U, *windows.shape[1:-1], C)


def pool_level(x: torch.Tensor, stride: int, reduce: str = "amax") -> torch.Tensor:
    """Pool the finest remaining level: ``[..., L, C]`` to ``[..., L / stride, C]`` (max, or ``reduce="mean"``).

    In the unrolled layout the finest level is the outermost axis inside a unit, so this is a max-pool of the spatial
    grid done by a reshape; it serves the tokens ``[B, #MU, L, C]`` of a block's skip path and the queries
    ``[batch, heads, units, L, d]`` of attention alike.
    """
    if stride == 1:
        return x
    pooled = x.unflatten(-2, (stride, x.shape[-2] // stride))  # [..., stride, L / stride, C]
    if reduce == "amax":
        return pooled.amax(dim=-3)
    if reduce == "mean":
        return pooled.mean(dim=-3)
    raise ValueError(f"reduce must be 'amax' or 'mean', got {reduce!r}")


def windows_to_grid(x: torch.Tensor, num_units: Shape) -> torch.Tensor:
    """Per-unit windows back to the spatial grid: ``[B, #MU, *mu, C]`` to ``[B, *G, C]`` with ``G = #MU_d * mu_d``
    (units in raster order, e.g. what the MAE decoder sees after mask tokens fill the deleted units)."""
    B, C, ndim = x.shape[0], x.shape[-1], len(num_units)
    mu = x.shape[2:-1]
    x = x.reshape(B, *num_units, *mu, C)  # [B, *#MU, *mu, C]
    perm = [0] + [p for d in range(ndim) for p in (1 + d, 1 + ndim + d)] + [1 + 2 * ndim]
    return x.permute(perm).reshape(B, *(n * m for n, m in zip(num_units, mu)), C)  # [B, *G, C]


def traced(t: torch.Tensor) -> bool:
    """Whether ``t`` has no values to look at: ``torch.compile`` is tracing, or it is a fake tensor (the device
    tests run the models on a fake CUDA device)."""
    return torch.compiler.is_compiling() or isinstance(t, FakeTensor)


def visible_order(visible: torch.Tensor, keep: int | None = None) -> torch.Tensor:
    """The indices of the visible units (or patches) of a mask ``[B, N]`` (True = visible), in order: ``[B, keep]``.

    Every sample keeps the same count, so deleting the hidden units is a gather with a fixed shape, never boolean
    indexing. ``keep`` defaults to the first sample's count; under ``torch.compile`` (or fake tensors) that count is
    read from the data (an unbacked size) and the compiler is told what it may assume: at least 2 and at most ``N``
    (with 1 it would have to treat the dimension as broadcastable), so the whole MAE step traces as one graph.
    """
    if keep is None:
        keep = visible[0].sum().item()
        if traced(visible):
            torch._check(keep >= 2)
            torch._check(keep <= visible.shape[1])
    return torch.argsort((~visible).to(torch.uint8), dim=1, stable=True)[:, :keep]  # visible first, stable


def gather_units(x: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
    """Keep the visible units (or patches) of ``[B, N, ...]``, in order: ``[B, #visible, ...]``.

    A gather with the same count in every sample (:func:`visible_order`), never boolean indexing, so no shape
    depends on the mask's values. Deletes the hidden units from a sparse encoder's input.
    """
    order = visible_order(visible)  # [B, keep]
    index = order.view(*order.shape, *([1] * (x.dim() - 2))).expand(-1, -1, *x.shape[2:])
    return torch.gather(x, 1, index)  # [B, keep, ...]


def scatter_units(fill: torch.Tensor, x: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`gather_units`: ``x`` ``[B, #visible, ...]`` put back at the visible positions of a
    ``[B, N, ...]`` tensor whose hidden positions hold ``fill`` (broadcast to ``[B, N, ...]``, e.g. a mask token)."""
    B, N = visible.shape
    order = visible_order(visible, x.shape[1])  # [B, keep]
    index = order.view(B, -1, *([1] * (x.dim() - 2))).expand_as(x)
    dtype = torch.promote_types(fill.dtype, x.dtype)  # under autocast x is bf16, a mask token fp32 (as torch.where)
    return fill.to(dtype).expand(B, N, *x.shape[2:]).scatter(1, index, x.to(dtype))  # [B, N, ...]
