"""Absolute position embeddings for a token grid, resampled when the input size differs from the stored one.

All functions return ``[1, *G, C]`` (channels last) to add to the patch embed output ``[B, *G, C]``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def resample_grid(pos: torch.Tensor, size: Sequence[int], *, antialias: bool = False) -> torch.Tensor:
    """Resample ``[1, *G0, C]`` to ``[1, *size, C]``: bicubic in 2-D, linear in 1-D; no-op at the same size."""
    if tuple(pos.shape[1:-1]) == tuple(size):
        return pos
    mode = {1: "linear", 2: "bicubic"}[len(size)]
    x = pos.movedim(-1, 1)  # [1, C, *G0]
    x = F.interpolate(x.float(), size=tuple(size), mode=mode, align_corners=False, antialias=antialias)
    return x.to(pos.dtype).movedim(1, -1)  # [1, *size, C]


def absolute(pos: torch.Tensor, stored_grid: Sequence[int], grid: Sequence[int]) -> torch.Tensor:
    """One learned embedding per token: ``pos`` is ``[1, prod(stored_grid), C]`` (the official layout)."""
    pos = pos.view(1, *stored_grid, pos.shape[-1])  # [1, *G0, C]
    if len(grid) == 3 and tuple(stored_grid) != tuple(grid):
        raise ValueError("a joint space-time position embedding cannot be resampled; use pos_embed='separate'")
    return resample_grid(pos, grid)


def separate(spatial: torch.Tensor, temporal: torch.Tensor, stored_grid: Sequence[int], grid: Sequence[int]) -> torch.Tensor:
    """Video: ``spatial`` ``[1, H0*W0, C]`` + ``temporal`` ``[1, T0, C]``, broadcast to ``[1, T, H, W, C]``."""
    C = spatial.shape[-1]
    spatial = resample_grid(spatial.view(1, *stored_grid[1:], C), grid[1:])  # [1, H, W, C]
    temporal = resample_grid(temporal, grid[:1])  # [1, T, C]
    return spatial[:, None] + temporal[:, :, None, None]  # [1, T, H, W, C]


def abswin(global_pos: torch.Tensor, window_pos: torch.Tensor, grid: Sequence[int]) -> torch.Tensor:
    """'Window attention is bugged' (Bolya et al. 2023), as in SAM2 / timm ``*_abswin``: a small global embedding
    ``[1, C, *G_g]`` resized (bicubic, antialiased) to the grid, plus a mask-unit-sized one ``[1, C, *mu]`` tiled."""
    mu = window_pos.shape[2:]
    reps = [g // m for g, m in zip(grid, mu)]
    tiled = window_pos.tile(1, 1, *reps)  # [1, C, *G]
    resized = F.interpolate(global_pos, size=tuple(grid), mode="bicubic", antialias=True)  # [1, C, *G]
    return (resized + tiled).movedim(1, -1)  # [1, *G, C]


def sincos_1d(dim: int, positions: torch.Tensor) -> torch.Tensor:
    """Fixed sinusoidal embedding ``[N, dim]`` of ``positions`` ``[N]``: ``[sin(p * w_i), cos(p * w_i)]`` with
    ``w_i = 10000 ** (-i / (dim / 2))`` (Vaswani et al.; the MAE code's layout, sines first)."""
    if dim % 2:
        raise ValueError(f"sin-cos embedding needs an even width, got {dim}")
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2))
    out = positions.double()[:, None] * omega[None]  # [N, dim/2]
    return torch.cat([out.sin(), out.cos()], dim=1)  # [N, dim]


def sinusoid_table(num_positions: int, dim: int) -> torch.Tensor:
    """The Transformer's 1-D table ``[1, num_positions, dim]`` with sines and cosines interleaved: column ``2i`` is
    ``sin(p / 10000 ** (2i / dim))``, column ``2i + 1`` the cosine of the same angle (T2T-ViT's fixed table; position
    0 is its class token). Computed in float64, as the official numpy code, then rounded to float32."""
    angle = torch.arange(num_positions, dtype=torch.float64)[:, None] / 10000 ** (
        2 * (torch.arange(dim) // 2).double() / dim)  # [N, dim]
    table = torch.where(torch.arange(dim) % 2 == 0, angle.sin(), angle.cos())
    return table.float()[None]


def sincos_2d(dim: int, grid: Sequence[int], *, class_token: bool = False) -> torch.Tensor:
    """Fixed 2-D sin-cos embedding ``[1, (1 +) H*W, dim]`` in raster order, as MAE: the first half encodes the
    column (w) coordinate, the second half the row (h); an optional all-zero row for the class token first."""
    if dim % 4:
        raise ValueError(f"2-D sin-cos embedding needs a width divisible by 4, got {dim}")
    h, w = torch.meshgrid(torch.arange(grid[0]), torch.arange(grid[1]), indexing="ij")  # [H, W] each
    emb = torch.cat([sincos_1d(dim // 2, w.flatten()), sincos_1d(dim // 2, h.flatten())], dim=1)  # [H*W, dim]
    if class_token:
        emb = torch.cat([emb.new_zeros(1, dim), emb], dim=0)
    return emb.float()[None]
