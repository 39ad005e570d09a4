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
