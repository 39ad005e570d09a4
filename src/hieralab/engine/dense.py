"""Running a dense model over a dataset: detections of every image, segmentation logits of whole images or by
sliding windows, scored with ``metrics/`` (COCO AP, mIoU); and a trained dense model's folder, saved and found."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from ..progress import bar as tqdm

from .. import files
from ..data.coco import DenseSamples, collate_dense
from ..metrics.segmentation import confusion, iou_from_confusion
from ..models.checkpoint import from_pretrained
from .artifacts import run_config

log = logging.getLogger(__name__)


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
    kept, scored = [], 0
    for batch in _batches(dataset, transform, 1, desc):
        for x, t in zip(batch["x"], batch["target"]):
            pred = segment_logits(model, x[None].to(device), mode=mode, window=window).argmax(1)[0].cpu()
            total += confusion(pred, t["mask"], K)
            scored += 1
            if len(kept) < keep:
                kept.append((x, t["mask"], pred))
    model.train(was)
    return {**iou_from_confusion(total, classes), "images": scored}, kept


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
