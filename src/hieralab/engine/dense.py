"""Running a dense model over a dataset and scoring it: COCO box / mask AP by pycocotools' own ``COCOeval`` (not a
re-implementation), and mIoU with per-class IoU for semantic segmentation, whole-image or by sliding windows."""

from __future__ import annotations

import contextlib
import io
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from pycocotools import mask as mask_utils
from pycocotools.cocoeval import COCOeval
from torch import nn
from tqdm.auto import tqdm

from .. import files
from ..data.coco import DenseSamples, collate_dense
from ..data.images import channels_of
from ..data.masks import IGNORE
from ..data.pipeline import model_channels
from ..models.checkpoint import from_pretrained
from .artifacts import requested_channels, resolve_weights, run_config, saved_arguments
from .optim import build_adamw
from .trainer import Job, lower_lr_hint

log = logging.getLogger(__name__)
STATS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


def _batches(dataset, transform: Callable, batch_size: int, desc: str | None):
    samples = DenseSamples(dataset, transform, seed=0)
    keys = [(0, i) for i in range(len(dataset))]
    loader = torch.utils.data.DataLoader(keys, batch_size,
                                         collate_fn=lambda ks: collate_dense([samples[k] for k in ks]))
    return tqdm(loader, desc=desc, disable=desc is None, leave=False, unit="batch")


@torch.no_grad()
def predict_detections(model: nn.Module, dataset, transform: Callable, *, device: torch.device | str = "cpu",
                       batch_size: int = 4, desc: str | None = "detect") -> list[tuple[int, dict[str, torch.Tensor]]]:
    """``[(image_id, torchvision detections), ...]`` for every readable image of a :class:`CocoInstances`."""
    was = model.training
    model.eval()
    out = []
    for batch in _batches(dataset, transform, batch_size, desc):
        if batch["size"] == 0:
            continue
        detections = model([x.to(device) for x in batch["x"]])
        out += [(t["image_id"], {k: v.cpu() for k, v in d.items()}) for t, d in zip(batch["target"], detections)]
    model.train(was)
    return out


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


# ---------------------------------------------------------------- semantic segmentation
def _pad_to(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[int, int]]:
    H, W = x.shape[-2:]
    ph, pw = (-H) % multiple, (-W) % multiple
    return F.pad(x, (0, pw, 0, ph)), (H, W)


@torch.no_grad()
def segment_logits(model: nn.Module, x: torch.Tensor, *, mode: str = "whole", window: int = 160) -> torch.Tensor:
    """Logits ``[B, K, H, W]`` of images ``[B, C, H, W]`` (any size): the whole image at once (padded to the
    encoder's multiple), or ``window``-sized windows at 2/3 of a window apart, overlaps averaged."""
    multiple = model.backbone.size_multiple
    padded, (H, W) = _pad_to(x, multiple)
    if mode == "whole":
        return model(padded)[..., :H, :W]
    window = max(multiple, window // multiple * multiple)
    if padded.shape[-2] < window or padded.shape[-1] < window:
        padded = F.pad(padded, (0, max(0, window - padded.shape[-1]), 0, max(0, window - padded.shape[-2])))
    Hp, Wp = padded.shape[-2:]
    step = max(multiple, window * 2 // 3 // multiple * multiple)
    ys = sorted({*range(0, Hp - window + 1, step), Hp - window})
    xs = sorted({*range(0, Wp - window + 1, step), Wp - window})
    total, count = None, torch.zeros(1, 1, Hp, Wp, device=x.device)
    for y in ys:
        for x0 in xs:
            logits = model(padded[..., y:y + window, x0:x0 + window])
            if total is None:
                total = torch.zeros(x.shape[0], logits.shape[1], Hp, Wp, device=x.device)
            total[..., y:y + window, x0:x0 + window] += logits
            count[..., y:y + window, x0:x0 + window] += 1
    return (total / count)[..., :H, :W]


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


@torch.no_grad()
def evaluate_segmentation(model: nn.Module, dataset, transform: Callable, classes: list[str], *,
                          device: torch.device | str = "cpu", mode: str = "whole", window: int = 160,
                          desc: str | None = "segment", keep: int = 0) -> tuple[dict[str, Any], list]:
    """mIoU and per-class IoU of ``model`` on a :class:`~hieralab.data.masks.MaskFolder`-like dataset, and the
    first ``keep`` readable images as ``(image, true mask, predicted mask)`` (for pictures, from the same pass)."""
    was = model.training
    model.eval()
    K = len(classes)
    total = torch.zeros(K, K, dtype=torch.long)
    kept = []
    for batch in _batches(dataset, transform, 1, desc):
        for x, t in zip(batch["x"], batch["target"]):
            pred = segment_logits(model, x[None].to(device), mode=mode, window=window).argmax(1)[0].cpu()
            total += confusion(pred, t["mask"], K)
            if len(kept) < keep:
                kept.append((x, t["mask"], pred))
    model.train(was)
    return iou_from_confusion(total, classes), kept


def dense_job(cfg: Any, model: nn.Module, samples: DenseSamples, forward: Callable, recipe_lr: float) -> Job:
    """The :class:`~hieralab.engine.trainer.Job` of a detect or segment run: AdamW with layer-wise lr decay over the
    encoder's blocks (ViTDet's recipe), images of any size batched as lists."""
    o = cfg.optim
    return Job(model=model, optimizer=build_adamw(model, lr=o.base_lr, weight_decay=o.weight_decay, betas=o.betas,
                                                  layer_decay=cfg.layer_decay),
               samples=samples, forward=forward, batch_size=o.batch_size, base_lr=o.base_lr,
               lower_lr=lower_lr_hint("optim.base_lr", o.base_lr, recipe_lr), accum_steps=o.accum_steps,
               warmup_epochs=o.warmup_epochs, min_lr=o.min_lr, clip_grad=o.clip_grad,
               num_workers=cfg.data.num_workers, collate=collate_dense)


def encoder_start(cfg: Any, images: list, source: str) -> tuple[dict[str, Any], Any]:
    """The encoder a detect or segment run builds: its arguments (the architecture ``cfg.init`` was saved with, then
    ``cfg.model_args``, the input channels the ``images`` and ``init`` call for, ``cfg.drop_path``) and the resolved
    ``init`` weights (None: random init)."""
    init = resolve_weights(cfg.init) if cfg.init else None
    channels = model_channels(requested_channels(cfg.model, cfg.model_args, init), channels_of(images), source)
    return {**(saved_arguments(init, cfg.model) if init else {}), **cfg.model_args, "in_chans": channels,
            "drop_path_rate": cfg.drop_path}, init


def load_init(model: nn.Module, init: Any, label: str) -> None:
    """Load the encoder of a dense ``model`` from ``init`` (when given), logging what it lacked."""
    if init:
        missing = model.load_encoder(init)
        log.info("encoder from %s (%d of its tensors not in it: %s)", label, len(missing), ", ".join(missing[:4]))


def save_dense_model(model: nn.Module, folder: Any, name: str, meta_file: str, meta: dict[str, Any]) -> None:
    """A trained detector or segmenter as ``save_pretrained`` writes it (under ``name``), with ``meta`` (classes,
    preprocessing, what it was built from) beside it in ``meta_file``."""
    model.model_name = name
    model.save_pretrained(folder)
    files.write_json(folder / meta_file, meta)


def dense_model_folder(run: str | Path, meta_file: str) -> Path | None:
    """The folder :func:`save_dense_model` wrote in a detect / segment run (its ``model/``, or the folder itself),
    found by its ``meta_file``; None when ``run`` is no such run."""
    run = Path(run).expanduser()
    return next((folder for folder in (run / "model", run) if (folder / meta_file).exists()), None)


def load_dense_model(run: str | Path, meta_file: str, expect: type, task: str) -> tuple[nn.Module, dict, dict]:
    """``(model in eval mode, its meta_file, the run's config)`` of a finished ``task`` run (or its ``model/``)."""
    folder = dense_model_folder(run, meta_file)
    if folder is None:
        raise FileNotFoundError(f"{Path(run).expanduser()} is not a {task} run (no model/{meta_file})")
    model = from_pretrained(folder, expect=expect).eval()
    return model, json.loads((folder / meta_file).read_text()), run_config(folder.parent)
