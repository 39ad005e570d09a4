"""Random masks for MAE, as pure functions. One meaning throughout: ``visible`` is True where the encoder sees.

The draw is MAE's: uniform noise per unit, the ``keep`` smallest are visible, so every sample keeps exactly the same
count (the sparse encoder needs equal lengths) and, for the same generator state, the draw equals the official one.
"""

from __future__ import annotations

import torch


def keep_count(num_units: int, mask_ratio: float) -> int:
    """Units the encoder sees: ``int(num_units * (1 - mask_ratio))``, as the official code (at least one)."""
    if not 0.0 <= mask_ratio < 1.0:
        raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
    return max(1, int(num_units * (1 - mask_ratio)))


def random_visible(
    batch: int,
    num_units: int,
    mask_ratio: float,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """A ``[batch, num_units]`` bool mask, True = visible, with the same visible count in every row."""
    keep = keep_count(num_units, mask_ratio)
    noise = torch.rand(batch, num_units, generator=generator, device=device)  # [B, #MU]
    order = noise.argsort(dim=1)[:, :keep]  # [B, keep]
    return torch.zeros(batch, num_units, dtype=torch.bool, device=noise.device).scatter_(1, order, True)

