"""``hieralab eval`` and ``hieralab predict``: a classifier's top-1 / top-5 and confusion matrix on a labelled set,
and its top-k labels for one image.

A classifier is a ``save_pretrained`` folder with ``classifier.json`` beside the weights (class names and the
preprocessing it was trained with; ``finetune`` writes ``best/`` and ``last/``); a fine-tuning run folder means its
``best/``. Each evaluation writes to a folder named after the data it scored, so evaluations of different data
never overwrite each other.
"""

from __future__ import annotations

import csv
import io
import logging
from pathlib import Path
from typing import Any

import torch
from PIL import UnidentifiedImageError

from .. import files
from ..data.images import Unreadable, load_image
from ..data.pipeline import build_dataset
from ..data.transforms import eval_transform
from ..data.video import video_eval_transform
from ..engine.artifacts import classifier_dir, eval_folder_name, image_files, load_classifier
from ..engine.evaluate import classification_metrics, confusion_matrix, predict_logits
from ..errors import DataError
from ..viz.figures import plot_confusion

log = logging.getLogger(__name__)


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


class _Files(torch.utils.data.Dataset):
    """Image files as ``(PIL image | Unreadable, index)``."""

    def __init__(self, paths: list[Path]):
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        try:
            return load_image(self.paths[i]), i
        except (OSError, UnidentifiedImageError, ValueError) as e:
            return Unreadable.of(self.paths[i], e), i


def predict_files(checkpoint: str, inputs: list[str], *, topk: int = 5, batch_size: int = 64,
                  device: str = "cpu") -> list[dict[str, Any]]:
    """The top-k ``(label, probability)`` of every image in ``inputs`` (files and folders), batched: one row per
    file, ``{"file", "top": [(label, p), ...]}`` or ``{"file", "error"}`` for an unreadable one."""
    model, meta = load_classifier(checkpoint)
    model.to(device)
    classes, paths = meta["classes"], image_files(inputs)
    tf = eval_transform(meta["img_size"], meta["mean"], meta["std"], channels=model.in_chans)
    k = min(topk, len(classes))
    rows: list[dict[str, Any]] = [{"file": str(p), "error": "unreadable"} for p in paths]
    images = _Files(paths)
    scores, index = predict_logits(model, images, tf, device=device, batch_size=batch_size,
                                   desc="predict" if len(paths) > batch_size else None)
    probs, top = scores.softmax(-1).topk(k, dim=1)
    for row_p, row_i, i in zip(probs.tolist(), top.tolist(), index.tolist()):
        rows[i] = {"file": str(paths[i]), "top": [(classes[j], round(v, 4)) for v, j in zip(row_p, row_i)]}
    for i, row in enumerate(rows):  # the few files that could not be read: why
        if "error" in row and isinstance(bad := images[i][0], Unreadable):
            row["error"] = bad.reason
    return rows


def write_predictions(rows: list[dict[str, Any]], path: Path, topk: int) -> Path:
    """``file, label_1, p_1, ..., label_k, p_k, error`` per file, as CSV (atomically)."""
    header = ["file"] + [f"{kind}_{i}" for i in range(1, topk + 1) for kind in ("label", "p")] + ["error"]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    for r in rows:
        cells = [x for label, p in r.get("top", []) for x in (label, p)]
        w.writerow([r["file"], *cells, *[""] * (2 * topk - len(cells)), r.get("error", "")])
    path.parent.mkdir(parents=True, exist_ok=True)
    return files.write_text(path, buf.getvalue())


def predict_image(checkpoint: str, image: str, *, topk: int = 5) -> list[tuple[str, float]]:
    """The top-k ``(label, probability)`` for one image file."""
    [row] = predict_files(checkpoint, [image], topk=topk)
    if "error" in row:
        raise DataError(f"{image} is not a readable image file ({row['error']})")
    return row["top"]
