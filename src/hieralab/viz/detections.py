"""Pictures of dense predictions: detections (boxes, instance masks, class names and scores) beside the ground
truth, and semantic segmentations (image | ground truth | prediction) with a legend of the classes."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.patches import Patch, Rectangle

from .figures import save_figure

PALETTE = plt.get_cmap("tab20").colors
TOP_WHEN_NONE = 3  # detections drawn (faint) on a panel where none reaches the threshold


def _show(ax, image: torch.Tensor) -> None:
    """``[C, H, W]`` in 0..1."""
    img = image.permute(1, 2, 0).clamp(0, 1).numpy()
    ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=1)
    ax.set_xticks([])
    ax.set_yticks([])


def _instances(ax, image: torch.Tensor, boxes, labels, masks, scores, classes: Sequence[str], *,
               faint: bool = False) -> None:
    """Boxes (and masks) with class names (and scores) over the image; ``faint``: dashed and pale, for detections
    below the threshold shown because none passed it."""
    _show(ax, image)
    overlay = np.zeros((*image.shape[-2:], 4))
    alpha = 0.35 if faint else 1.0
    for k in range(len(labels)):
        color = PALETTE[(int(labels[k]) - 1) % len(PALETTE)]
        if masks is not None:
            m = masks[k] > 0.5
            overlay[m] = (*color, 0.45 * alpha)
        x0, y0, x1, y1 = (float(v) for v in boxes[k])
        ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor=color, linewidth=1.2, alpha=alpha,
                               linestyle="--" if faint else "-"))
        text = classes[int(labels[k]) - 1] + (f" {float(scores[k]):.2f}" if scores is not None else "")
        ax.text(x0, y0, text, fontsize=5.5, color="white", va="bottom", alpha=max(alpha, 0.6),
                bbox={"facecolor": color, "alpha": 0.8 * alpha, "pad": 0.5, "linewidth": 0})
    ax.imshow(overlay)


def draw_detections(items: list[tuple[torch.Tensor, dict[str, Any] | None, dict[str, torch.Tensor]]],
                    classes: Sequence[str], path: Path, *, title: str, threshold: float = 0.5,
                    names: Sequence[str] | None = None) -> Path:
    """Each item ``(image [C, H, W], ground-truth target or None, detections)`` as a pair of panels: the ground
    truth (boxes, masks, classes) and the predictions scoring at least ``threshold`` (with their scores); without
    ground truth (new images, titled with ``names``), the predictions alone."""
    with_truth = any(truth is not None for _, truth, _ in items)
    title = f"{title} (boxes at score >= {threshold:g})"
    panels, per_row = (2, 2) if with_truth else (1, 4)
    rows = max(1, -(-len(items) // per_row))
    fig, axes = plt.subplots(rows, panels * per_row, figsize=(2.6 * panels * per_row, 2.7 * rows + 0.5), dpi=120,
                             squeeze=False, layout="constrained")
    for ax in axes.flat:
        ax.axis("off")
    for n, (image, truth, det) in enumerate(items):
        row, col = n // per_row, panels * (n % per_row)
        pr_ax = axes[row, col + panels - 1]
        pr_ax.axis("on")
        if with_truth:
            gt_ax = axes[row, col]
            gt_ax.axis("on")
            _instances(gt_ax, image, truth["boxes"], truth["labels"], truth.get("masks"), None, classes)
            gt_ax.set_title(f"ground truth ({len(truth['labels'])})", fontsize=7)
        keep = det["scores"] >= threshold
        faint = not bool(keep.any()) and len(det["scores"]) > 0
        if faint:  # none passes: the best few, drawn faint and said so, rather than an empty panel
            keep = torch.zeros_like(keep)
            keep[det["scores"].argsort(descending=True)[:TOP_WHEN_NONE]] = True
        masks = det["masks"][keep, 0] if "masks" in det else None
        _instances(pr_ax, image, det["boxes"][keep], det["labels"][keep], masks, det["scores"][keep], classes,
                   faint=faint)
        label = f"{names[n]}\n" if names else ""
        shown = (f"none at >= {threshold:g}: the top {int(keep.sum())}, faint" if faint else
                 f"{int(keep.sum())} at score >= {threshold:g}")
        pr_ax.set_title(f"{label}predicted ({shown})", fontsize=6.5)
    handles = [Patch(color=PALETTE[k % len(PALETTE)], label=c) for k, c in enumerate(classes)]
    fig.legend(handles=handles, loc="outside lower center", ncol=min(len(classes), 6), fontsize=7)
    fig.suptitle(title, fontsize=9)
    return save_figure(fig, path)


def draw_segmentations(items: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], classes: Sequence[str],
                       path: Path, *, title: str) -> Path:
    """Each item ``(image [C, H, W], true mask [H, W], predicted mask [H, W])`` as a row: image | ground truth |
    prediction, classes coloured as the legend says (ignored pixels white)."""
    colors = np.array([*(PALETTE[k % len(PALETTE)] for k in range(len(classes))), (1.0, 1.0, 1.0)])

    def paint(mask: torch.Tensor) -> np.ndarray:
        m = mask.numpy().astype(np.int64)
        return colors[np.where(m < len(classes), m, len(classes))]

    fig, axes = plt.subplots(len(items), 3, figsize=(7.5, 2.4 * len(items) + 0.6), dpi=120, squeeze=False,
                             layout="constrained")
    for r, (image, truth, pred) in enumerate(items):
        _show(axes[r, 0], image)
        for c, (mask, name) in enumerate(((truth, "ground truth"), (pred, "prediction")), start=1):
            axes[r, c].imshow(paint(mask), interpolation="nearest")
            axes[r, c].set_xticks([])
            axes[r, c].set_yticks([])
            if r == 0:
                axes[r, c].set_title(name, fontsize=8)
        if r == 0:
            axes[r, 0].set_title("image", fontsize=8)
    handles = [Patch(color=colors[k], label=c) for k, c in enumerate(classes)]
    fig.legend(handles=handles, loc="outside lower center", ncol=min(len(classes), 6), fontsize=7)
    fig.suptitle(title, fontsize=9)
    return save_figure(fig, path)
