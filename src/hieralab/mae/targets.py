"""Pixel targets for MAE: cut images into prediction patches, normalise each patch, and the inverse for pictures.

Patch vectors come in two element orders, both kept for checkpoint parity:
* ``channels_last`` ``(p, q, c)``: the MAE ViT code and the official Hiera video labels;
* channel-first ``(c, p, q)``: the official Hiera image labels (its 2-D and 3-D label code flatten differently).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def patchify(x: torch.Tensor, patch: int, *, channels_last: bool = True) -> torch.Tensor:
    """``[B, C, H, W]`` to ``[B, N, patch * patch * C]`` with ``N = (H / patch) * (W / patch)`` in raster order."""
    B, C, H, W = x.shape
    if H % patch or W % patch:
        raise ValueError(f"image size {(H, W)} is not a multiple of the prediction patch {patch}")
    x = x.reshape(B, C, H // patch, patch, W // patch, patch)  # [B, C, h, p, w, q]
    # [B, h, w, p, q, C] or [B, h, w, C, p, q]
    x = x.permute(0, 2, 4, 3, 5, 1) if channels_last else x.permute(0, 2, 4, 1, 3, 5)
    return x.reshape(B, (H // patch) * (W // patch), -1)


def unpatchify(patches: torch.Tensor, patch: int, grid: Sequence[int], *, channels_last: bool = True) -> torch.Tensor:
    """The inverse of :func:`patchify`: ``[B, N, patch * patch * C]`` to ``[B, C, H, W]``."""
    B, N, P = patches.shape
    h, w = grid
    C = P // (patch * patch)
    if channels_last:
        x = patches.reshape(B, h, w, patch, patch, C).permute(0, 5, 1, 3, 2, 4)  # [B, C, h, p, w, q]
    else:
        x = patches.reshape(B, h, w, C, patch, patch).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(B, C, h * patch, w * patch)


def patchify_video(x: torch.Tensor, patch: int, time_stride: int) -> torch.Tensor:
    """``[B, C, T, H, W]`` to ``[B, (T / time_stride) * N, patch * patch * C]``.

    As the official video MAE, the label of a token that spans ``time_stride`` frames is its first frame only.
    """
    frames = x[:, :, ::time_stride]  # [B, C, T', H, W]
    B, C, T = frames.shape[:3]
    per_frame = patchify(frames.transpose(1, 2).flatten(0, 1), patch, channels_last=True)  # [B*T', N, P]
    return per_frame.reshape(B, T * per_frame.shape[1], -1)  # [B, T'*N, P], time outermost


def unpatchify_video(patches: torch.Tensor, patch: int, grid: Sequence[int]) -> torch.Tensor:
    """The inverse of :func:`patchify_video` on the label frames: ``[B, T'*h*w, P]`` to ``[B, C, T', H, W]``."""
    T, h, w = grid
    B = patches.shape[0]
    frames = unpatchify(patches.reshape(B * T, h * w, -1), patch, (h, w), channels_last=True)  # [B*T', C, H, W]
    return frames.reshape(B, T, *frames.shape[1:]).transpose(1, 2)


def normalize_patches(target: torch.Tensor, eps: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-patch normalisation (MAE's norm-pix target): ``(target - mean) / sqrt(var + eps)`` over the last dim,
    with the unbiased variance as the reference code. Returns ``(normalised, mean, std)`` to undo it."""
    mean = target.mean(dim=-1, keepdim=True)
    std = (target.var(dim=-1, keepdim=True) + eps) ** 0.5
    return (target - mean) / std, mean, std


def masked_mse(pred: torch.Tensor, target: torch.Tensor, visible_patches: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the patches the encoder did not see: ``pred``, ``target`` ``[B, N, P]``,
    ``visible_patches`` ``[B, N]`` bool. Weighted sums, not boolean indexing, so shapes never depend on the mask."""
    per_patch = (pred - target).pow(2).mean(dim=-1)  # [B, N]
    hidden = (~visible_patches).to(per_patch.dtype)
    return (per_patch * hidden).sum() / hidden.sum().clamp_min(1)


def sample_frames(x: torch.Tensor, count: int) -> torch.Tensor:
    """``count`` frames of ``[B, C, T, H, W]`` at ``linspace(0, T - 1, count)`` truncated to integers: MAE-ST's
    prediction frames (``pred_t_dim``; 16 -> 8 takes 0, 2, .., 12 and 15, not 14: kept for checkpoint parity)."""
    index = torch.linspace(0, x.shape[2] - 1, count).long().to(x.device)
    return x.index_select(2, index)  # [B, C, count, H, W]


def patchify_tubes(x: torch.Tensor, patch: int, tube: int) -> torch.Tensor:
    """``[B, C, T, H, W]`` to ``[B, (T/tube)*(H/patch)*(W/patch), tube*patch*patch*C]``: tokens in (t, h, w) raster
    order, each vector in (u, p, q, c) order, as MAE-ST's ``patchify``."""
    B, C, T, H, W = x.shape
    if T % tube or H % patch or W % patch:
        raise ValueError(f"clip size {(T, H, W)} is not a multiple of the prediction tubelet {(tube, patch, patch)}")
    x = x.reshape(B, C, T // tube, tube, H // patch, patch, W // patch, patch)  # [B, C, t, u, h, p, w, q]
    x = x.permute(0, 2, 4, 6, 3, 5, 7, 1)  # [B, t, h, w, u, p, q, C]
    return x.reshape(B, (T // tube) * (H // patch) * (W // patch), -1)


def unpatchify_tubes(patches: torch.Tensor, patch: int, tube: int, grid: Sequence[int]) -> torch.Tensor:
    """The inverse of :func:`patchify_tubes`: ``[B, t*h*w, tube*patch*patch*C]`` to ``[B, C, t*tube, H, W]``."""
    t, h, w = grid
    B, _, P = patches.shape
    C = P // (tube * patch * patch)
    x = patches.reshape(B, t, h, w, tube, patch, patch, C).permute(0, 7, 1, 4, 2, 5, 3, 6)  # [B, C, t, u, h, p, w, q]
    return x.reshape(B, C, t * tube, h * patch, w * patch)
