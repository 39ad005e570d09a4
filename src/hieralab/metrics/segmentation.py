"""Semantic segmentation: pixel confusion, per-class IoU, mIoU and pixel accuracy."""

from __future__ import annotations

from typing import Any

import torch

IGNORE = 255  # pixels marked so are not scored (data.masks reads masks with this value for "ignore")


def confusion(pred: torch.Tensor, truth: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``[K, K]`` pixel counts (row: true class, column: predicted), pixels marked ignored left out."""
    keep = truth != IGNORE
    index = truth[keep].long() * num_classes + pred[keep].long()
    return torch.bincount(index, minlength=num_classes * num_classes).view(num_classes, num_classes)


def iou_from_confusion(matrix: torch.Tensor, classes: list[str]) -> dict[str, Any]:
    """mIoU (%) over the classes that occur (in truth or prediction), per-class IoU, pixel accuracy."""
    tp = matrix.diag().float()
    union = matrix.sum(0).float() + matrix.sum(1).float() - tp
    present = union > 0
    iou = torch.where(present, tp / union.clamp_min(1), torch.nan)
    return {"mIoU": round(100 * float(iou[present].mean()), 3) if present.any() else 0.0,
            "pixel_accuracy": round(100 * float(tp.sum() / matrix.sum().clamp_min(1)), 3),
            "per_class_IoU": {c: (None if torch.isnan(v) else round(100 * float(v), 3)) for c, v in zip(classes, iou)}}
