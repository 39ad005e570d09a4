"""``hieralab eval`` and ``hieralab predict``: a classifier's top-1 / top-5 and confusion matrix on a labelled set,
and its top-5 labels for one image.

A classifier is a ``save_pretrained`` folder with ``classifier.json`` beside the weights (class names and the input
normalisation it was trained with; ``finetune`` writes ``best/`` and ``last/``); a fine-tuning run folder means its
``best/``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..data.pipeline import build_dataset, collate
from ..engine.run_log import save_figure
from ..models.checkpoint import atomic_write, from_pretrained

log = logging.getLogger(__name__)
CLASSIFIER_NAME = "classifier.json"


class Transformed(torch.utils.data.Dataset):
    """``(PIL image | None, label)`` or ``(clip path, label)`` -> ``{"x", "label"}`` through ``transform`` (None for
    an unreadable image or clip)."""

    def __init__(self, dataset, transform: Callable):
        self.dataset, self.transform = dataset, transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict[str, Any] | None:
        image, label = self.dataset[i]
        x = None if image is None else self.transform(image)  # a clip transform returns None for a bad file
        return None if x is None else {"x": x, "label": label}


@torch.no_grad()
def predict_logits(model: nn.Module, dataset, transform: Callable, *, device: torch.device | str = "cpu",
                   batch_size: int = 256, num_workers: int = 0, desc: str | None = None,
                   fn: Callable[[torch.Tensor], torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(outputs [N, K], labels [N])`` of ``fn(x)`` (default: the model's logits) over a labelled PIL dataset, in
    eval mode; unreadable images are skipped."""
    was_training = model.training
    model.eval()
    loader = torch.utils.data.DataLoader(Transformed(dataset, transform), batch_size, collate_fn=collate,
                                         num_workers=num_workers)
    outs, labels = [], []
    for batch in tqdm(loader, desc=desc, disable=desc is None, leave=False):
        if batch["size"] == 0:
            continue
        x = batch["x"].to(device)
        if x.dim() == 6 and fn is None:  # video views [B, V, C, T, H, W]: average the views' probabilities
            outs.append(multiview_scores(model, x).cpu())
        elif x.dim() == 6:  # features of video views: their mean
            outs.append(fn(x.flatten(0, 1)).float().unflatten(0, x.shape[:2]).mean(1).cpu())
        else:
            outs.append((fn or model)(x).float().cpu())
        labels.append(batch["label"])
    model.train(was_training)
    if not outs:
        raise ValueError("no readable images to evaluate")
    return torch.cat(outs), torch.cat(labels)


def multiview_scores(fn: Callable[[torch.Tensor], torch.Tensor], views: torch.Tensor) -> torch.Tensor:
    """``[B, V, ...]`` views -> ``[B, K]``: the log of the views' mean softmax, as the official video test averages
    its (softmax) head outputs over the clips and crops; argmax and top-k are those of the mean probability."""
    B, V = views.shape[:2]
    probs = fn(views.flatten(0, 1)).float().softmax(-1).view(B, V, -1).mean(1)  # [B, K]
    return probs.clamp_min(1e-12).log()


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


def plot_confusion(matrix: torch.Tensor, classes: Sequence[str], path: Path, title: str) -> Path:
    """The confusion matrix, row-normalised (recall per class on the diagonal), as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    norm = (matrix.float() / matrix.sum(1, keepdim=True).clamp(min=1)).numpy()
    K = len(classes)
    fig, ax = plt.subplots(figsize=(2 + 0.5 * K, 1.6 + 0.5 * K), dpi=120)
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(K), classes, rotation=45, ha="right")
    ax.set_yticks(range(K), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    if K <= 20:
        for i in range(K):
            for j in range(K):
                ax.text(j, i, f"{norm[i, j]:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if norm[i, j] > 0.5 else "black")
    return save_figure(fig, path)


def save_classifier(model: nn.Module, name: str, meta: dict[str, Any], folder: Path) -> None:
    """``save_pretrained`` + ``classifier.json`` (``classes``, ``mean``, ``std``, ``img_size``)."""
    from ..models.checkpoint import save_pretrained

    model.model_name = name
    save_pretrained(model, folder)
    atomic_write(folder / CLASSIFIER_NAME, lambda p: Path(p).write_text(json.dumps(meta, indent=1) + "\n"))


def classifier_dir(path: str | Path) -> Path:
    """A folder written by :func:`save_classifier`; a fine-tuning run folder means its ``best/``."""
    path = Path(path).expanduser()
    if (path / "best" / CLASSIFIER_NAME).exists():
        path = path / "best"
    if not (path / CLASSIFIER_NAME).exists():
        raise FileNotFoundError(f"{path} is not a classifier folder (config.json, model.safetensors and "
                                f"{CLASSIFIER_NAME}, as finetune writes in best/ and last/)")
    return path


def load_classifier(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """``(model in eval mode, meta)`` from :func:`classifier_dir` ``(path)``."""
    path = classifier_dir(path)
    model = from_pretrained(path).eval()
    meta = json.loads((path / CLASSIFIER_NAME).read_text())
    if len(meta["classes"]) != model.num_classes:
        raise ValueError(f"{path / CLASSIFIER_NAME} names {len(meta['classes'])} classes, the model has "
                         f"{model.num_classes}")
    return model, meta


def run_eval(checkpoint: str, *, source: str = "fashion-mnist", split: str = "test", out: str | None = None,
             img_size: int | None = None, limit: int | None = None, device: str = "cpu", temporal_views: int = 1,
             spatial_views: int = 1) -> dict[str, Any]:
    """Top-1 / top-5 on a labelled set; writes ``metrics.json`` and ``confusion.png`` to ``out`` (default: beside
    the checkpoint, in ``eval-<split>/``). A video classifier averages ``temporal_views x spatial_views`` views per
    clip (5 x 3 is the Kinetics protocol of the Hiera paper)."""
    from ..data.transforms import eval_transform
    from ..data.video import video_eval_transform

    model, meta = load_classifier(checkpoint)
    classes = meta["classes"]
    video = "num_frames" in meta
    dataset, _, _, data_classes = build_dataset(source, split, limit, video=video)
    if data_classes != classes:
        raise ValueError(f"the data's classes ({', '.join(data_classes[:4])}, ...) are not the classifier's "
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
    out_dir = Path(out) if out else classifier_dir(checkpoint) / f"eval-{split}"
    out_dir.mkdir(parents=True, exist_ok=True)
    cm = confusion_matrix(logits, labels, len(classes))
    metrics.update(source=source, split=split, checkpoint=str(checkpoint), views=[temporal_views, spatial_views]
                   if video else None, per_class_recall={
        c: round(100 * (cm[i, i] / max(1, cm[i].sum())).item(), 2) for i, c in enumerate(classes)})
    plot_confusion(cm, classes, out_dir / "confusion.png",
                   f"top-1 {metrics['top1']:.2f} % on {Path(source).name} {split}")
    atomic_write(out_dir / "metrics.json", lambda p: Path(p).write_text(json.dumps(metrics, indent=2) + "\n"))
    metrics["out"] = str(out_dir)
    return metrics


def predict_image(checkpoint: str, image: str, *, topk: int = 5) -> list[tuple[str, float]]:
    """The top-k ``(label, probability)`` for one image file."""
    from PIL import Image, UnidentifiedImageError

    from ..data.transforms import eval_transform

    model, meta = load_classifier(checkpoint)
    classes = meta["classes"]
    try:
        with Image.open(image) as im:
            im.load()
            pil = im.copy()
    except (OSError, UnidentifiedImageError):
        raise ValueError(f"{image} is not a readable image file") from None
    x = eval_transform(meta["img_size"], meta["mean"], meta["std"], channels=model.in_chans)(pil)[None]
    with torch.no_grad():
        probs = model(x).softmax(-1)[0]
    p, i = probs.topk(min(topk, len(classes)))
    return [(classes[j], round(v, 4)) for v, j in zip(p.tolist(), i.tolist())]
