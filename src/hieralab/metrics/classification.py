"""Classification: top-1 / top-5 and the confusion matrix, from logits and labels."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def classification_metrics(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Top-1 / top-5 accuracy (%) and the mean cross-entropy."""
    k = min(5, logits.shape[1])
    top = logits.topk(k, dim=1).indices  # [N, k]
    hit = top == labels[:, None]
    return {"top1": 100 * hit[:, 0].float().mean().item(), "top5": 100 * hit.any(1).float().mean().item(),
            "loss": F.cross_entropy(logits, labels).item(), "count": len(labels)}


def confusion_matrix(logits: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``[K, K]`` counts: row = true class, column = predicted class."""
    index = labels * num_classes + logits.argmax(1)
    return torch.bincount(index, minlength=num_classes * num_classes).view(num_classes, num_classes)
