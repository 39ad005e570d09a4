"""Image transforms (torchvision transforms v2)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchvision.transforms import v2


def mae_train_transform(img_size: int, mean: Sequence[float], std: Sequence[float], *,
                        scale: Sequence[float] = (0.2, 1.0), hflip: bool = True, channels: int = 3) -> v2.Compose:
    """MAE pretraining augmentation: RandomResizedCrop (bicubic), horizontal flip, normalise."""
    return v2.Compose([
        v2.ToImage(),
        v2.Grayscale(channels) if channels != 3 else v2.RGB(),
        v2.RandomResizedCrop(img_size, scale=tuple(scale), interpolation=v2.InterpolationMode.BICUBIC, antialias=True),
        *([v2.RandomHorizontalFlip()] if hflip else []),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(list(mean)[:channels], list(std)[:channels]),
    ])


def eval_transform(img_size: int, mean: Sequence[float], std: Sequence[float], *, channels: int = 3,
                   crop_pct: float = 1.0) -> v2.Compose:
    """Resize the short side to ``img_size / crop_pct``, centre-crop ``img_size``, normalise."""
    return v2.Compose([
        v2.ToImage(),
        v2.Grayscale(channels) if channels != 3 else v2.RGB(),
        v2.Resize(int(round(img_size / crop_pct)), interpolation=v2.InterpolationMode.BICUBIC, antialias=True),
        v2.CenterCrop(img_size),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(list(mean)[:channels], list(std)[:channels]),
    ])
