"""``hieralab eval`` and ``hieralab predict``: a classifier's top-1 / top-5 and confusion matrix on a labelled set,
and its top-k labels for one image.

A classifier is a ``save_pretrained`` folder with ``classifier.json`` beside the weights (class names and the
preprocessing it was trained with; ``finetune`` writes ``best/`` and ``last/``); a fine-tuning run folder means its
``best/``. Each evaluation writes to a folder named after the data it scored, so evaluations of different data
never overwrite each other.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

import torch
from PIL import UnidentifiedImageError

from .. import files
from ..data.images import load_image
from ..data.pipeline import build_dataset
from ..data.transforms import eval_transform
from ..data.video import video_eval_transform
from ..engine.artifacts import classifier_dir, load_classifier
from ..engine.evaluate import classification_metrics, confusion_matrix, predict_logits
from ..errors import DataError
from ..viz.figures import plot_confusion

log = logging.getLogger(__name__)


def eval_folder_name(source: str, split: str, views: tuple[int, int] | None = None) -> str:
    """``eval-fashion-mnist-test``, or for a folder ``eval-<name>-<hash of its absolute path>`` (two folders of the
    same name elsewhere do not collide); video views add ``-views5x3``."""
    if source == "fashion-mnist":
        name = f"eval-fashion-mnist-{split}"
    else:
        path = Path(source).expanduser().resolve()
        name = f"eval-{path.stem or 'data'}-{hashlib.sha1(str(path).encode()).hexdigest()[:8]}"
    return name + (f"-views{views[0]}x{views[1]}" if views and views != (1, 1) else "")


def run_eval(checkpoint: str, *, source: str = "fashion-mnist", split: str = "test", out: str | None = None,
             img_size: int | None = None, limit: int | None = None, device: str = "cpu", temporal_views: int = 1,
             spatial_views: int = 1) -> dict[str, Any]:
    """Top-1 / top-5 on a labelled set; writes ``metrics.json`` and ``confusion.png`` to ``out`` (default: beside
    the checkpoint, in :func:`eval_folder_name`). A video classifier averages ``temporal_views x spatial_views``
    views per clip (5 x 3 is the Kinetics protocol of the Hiera paper)."""
    model, meta = load_classifier(checkpoint)
    classes = meta["classes"]
    video = "num_frames" in meta
    dataset, _, _, data_classes = build_dataset(source, split, limit, video=video)
    if data_classes != classes:
        raise DataError(f"the data's classes ({', '.join(data_classes[:4])}, ...) are not the classifier's "
                        f"({', '.join(classes[:4])}, ...); evaluate on data with the same class folders")
    model.to(device)
    size = img_size or meta["img_size"]
    if video:
        tf = video_eval_transform(meta["num_frames"], meta["frame_stride"], size, meta["mean"], meta["std"],
                                  temporal_views=temporal_views, spatial_views=spatial_views)
    else:
        tf = eval_transform(size, meta["mean"], meta["std"], channels=model.in_chans)
    logits, labels = predict_logits(model, dataset, tf, device=device, desc="eval")
    metrics = classification_metrics(logits, labels)
    views = (temporal_views, spatial_views) if video else None
    out_dir = Path(out) if out else classifier_dir(checkpoint) / eval_folder_name(source, split, views)
    out_dir.mkdir(parents=True, exist_ok=True)
    cm = confusion_matrix(logits, labels, len(classes))
    metrics.update(source=source, split=split, checkpoint=str(checkpoint), views=list(views) if views else None,
                   per_class_recall={c: round(100 * (cm[i, i] / max(1, cm[i].sum())).item(), 2)
                                     for i, c in enumerate(classes)})
    plot_confusion(cm, classes, out_dir / "confusion.png",
                   f"top-1 {metrics['top1']:.2f} % on {Path(source).name} {split}")
    files.write_json(out_dir / "metrics.json", metrics)
    metrics["out"] = str(out_dir)
    return metrics


def predict_image(checkpoint: str, image: str, *, topk: int = 5) -> list[tuple[str, float]]:
    """The top-k ``(label, probability)`` for one image file."""
    model, meta = load_classifier(checkpoint)
    classes = meta["classes"]
    try:
        pil = load_image(image)
    except (OSError, UnidentifiedImageError):
        raise DataError(f"{image} is not a readable image file") from None
    x = eval_transform(meta["img_size"], meta["mean"], meta["std"], channels=model.in_chans)(pil)[None]
    with torch.no_grad():
        probs = model(x).softmax(-1)[0]
    p, i = probs.topk(min(topk, len(classes)))
    return [(classes[j], round(v, 4)) for v, j in zip(p.tolist(), i.tolist())]
