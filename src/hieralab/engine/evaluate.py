"""Running a model over a dataset, and what is measured on its outputs: logits or features of every item (video
views averaged), top-1 / top-5, confusion matrices, weighted k-NN. Shared by finetune's validation, ``eval``,
``linprobe``, ``extract`` and the study."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from ..progress import bar as tqdm

from ..data.images import Unreadable
from ..data.pipeline import collate

log = logging.getLogger(__name__)


class Transformed(torch.utils.data.Dataset):
    """``(PIL image | Unreadable, label)`` or ``(clip path, label)`` -> ``{"x", "label"}`` through ``transform``
    (:class:`Unreadable` passes through)."""

    def __init__(self, dataset, transform: Callable):
        self.dataset, self.transform = dataset, transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict[str, Any] | Unreadable:
        image, label = self.dataset[i]
        x = image if isinstance(image, Unreadable) else self.transform(image)  # a clip transform may fail too
        return x if isinstance(x, Unreadable) else {"x": x, "label": label}


@torch.no_grad()
def predict_logits(model: nn.Module, dataset, transform: Callable, *, device: torch.device | str = "cpu",
                   batch_size: int = 256, num_workers: int = 0, desc: str | None = None,
                   fn: Callable[[torch.Tensor], torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(outputs [N, K], labels [N])`` of ``fn(x)`` (default: the model's logits) over a labelled dataset, in eval
    mode; unreadable items are skipped. ``desc`` shows a progress bar."""
    was_training = model.training
    model.eval()
    loader = torch.utils.data.DataLoader(Transformed(dataset, transform), batch_size, collate_fn=collate,
                                         num_workers=num_workers)
    outs, labels = [], []
    for batch in tqdm(loader, desc=desc, disable=desc is None, leave=False, unit="batch"):
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


def pooled_features(encoder: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """``x -> [B, C]``: what the encoder's head would see (``forward_head(..., pre_logits=True)``: the pooled,
    normalised tokens for Hiera, the class token -- or the token mean with ``global_pool="avg"`` -- for ViTs)."""
    return lambda x: encoder.forward_head(encoder.forward_features(x), pre_logits=True)


def stage_features(encoder: nn.Module) -> Callable[[torch.Tensor], list[torch.Tensor]]:
    """``x -> [[B, C_i, H_i, W_i], ...]``: per-stage maps for Hiera, per-block maps for ViTs."""
    return lambda x: encoder.forward_intermediates(x, intermediates_only=True)


@torch.no_grad()
def dataset_features(encoder: nn.Module, dataset, transform: Callable, *, device: torch.device | str = "cpu",
                     batch_size: int = 256, desc: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Pooled features ``[N, C]`` and labels ``[N]`` of a labelled dataset (``encoder`` may also be a plain
    module, e.g. ``nn.Flatten()`` for raw pixels)."""
    fn = pooled_features(encoder) if hasattr(encoder, "forward_head") else encoder
    return predict_logits(encoder, dataset, transform, device=device, batch_size=batch_size, desc=desc, fn=fn)


@torch.no_grad()
def knn_classify(train: torch.Tensor, train_labels: torch.Tensor, query: torch.Tensor, *, num_classes: int,
                 k: int = 20, temperature: float = 0.07, chunk: int = 1024) -> torch.Tensor:
    """Weighted k-NN on cosine similarity (Wu et al. 2018; DINO's evaluation): each of the ``k`` nearest training
    features votes for its label with weight ``exp(sim / temperature)``. Returns class scores ``[Q, num_classes]``."""
    train = F.normalize(train.float(), dim=1)
    k = min(k, len(train))
    scores = []
    for q in F.normalize(query.float(), dim=1).split(chunk):
        sim, idx = (q @ train.t()).topk(k, dim=1)  # [q, k]
        votes = torch.zeros(len(q), num_classes).scatter_add_(1, train_labels[idx], (sim / temperature).exp())
        scores.append(votes)
    return torch.cat(scores)


def knn_top1(train: torch.Tensor, train_labels: torch.Tensor, query: torch.Tensor, query_labels: torch.Tensor, *,
             num_classes: int, k: int = 20) -> float:
    """Top-1 (%) of :func:`knn_classify` on labelled queries."""
    scores = knn_classify(train, train_labels, query, num_classes=num_classes, k=k)
    return 100 * (scores.argmax(1) == query_labels).float().mean().item()
