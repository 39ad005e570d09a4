"""COCO box / mask AP by pycocotools' own ``COCOeval`` (not a re-implementation), and detections in COCO's results
format."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from pycocotools import mask as mask_utils
from pycocotools.cocoeval import COCOeval

STATS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


def to_coco_results(predictions: list[tuple[int, dict[str, torch.Tensor]]], category_id: Callable[[int], int],
                    *, mask_threshold: float = 0.5) -> list[dict[str, Any]]:
    """Detections in COCO's results format (``bbox`` x, y, w, h; ``segmentation`` as RLE when there are masks),
    labels mapped back to the annotation file's category ids."""
    results = []
    for image_id, d in predictions:
        boxes = d["boxes"].tolist()
        masks = (d["masks"][:, 0] > mask_threshold).numpy().astype(np.uint8) if "masks" in d else None
        for k, ((x0, y0, x1, y1), score, label) in enumerate(zip(boxes, d["scores"].tolist(), d["labels"].tolist())):
            r = {"image_id": int(image_id), "category_id": int(category_id(label)),
                 "bbox": [round(x0, 2), round(y0, 2), round(x1 - x0, 2), round(y1 - y0, 2)], "score": round(score, 4)}
            if masks is not None:
                rle = mask_utils.encode(np.asfortranarray(masks[k]))
                r["segmentation"] = {"size": rle["size"], "counts": rle["counts"].decode("ascii")}
            results.append(r)
    return results


def coco_metrics(coco_gt, results: list[dict[str, Any]], iou_types: tuple[str, ...] = ("bbox", "segm"),
                 image_ids: list[int] | None = None) -> tuple[dict[str, float], str]:
    """pycocotools' summary numbers as ``{"bbox_AP": ..., "bbox_AP50": ..., "segm_AP": ...}`` (in %; -1 where
    COCO has nothing to score) and the summary table it prints."""
    metrics: dict[str, float] = {}
    text = io.StringIO()
    for iou_type in iou_types:
        if not results:
            metrics.update({f"{iou_type}_{k}": 0.0 for k in STATS})
            continue
        with contextlib.redirect_stdout(text):
            dt = coco_gt.loadRes([r for r in results if iou_type == "bbox" or "segmentation" in r])
            ev = COCOeval(coco_gt, dt, iou_type)
            if image_ids is not None:
                ev.params.imgIds = list(image_ids)
            ev.evaluate()
            ev.accumulate()
            print(f"-- {iou_type}")
            ev.summarize()
        metrics.update({f"{iou_type}_{k}": round(100 * float(v), 3) if v >= 0 else -1.0
                        for k, v in zip(STATS, ev.stats)})
    return metrics, text.getvalue()
