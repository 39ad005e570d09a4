"""Frozen-encoder features: what ``linprobe`` trains on and ``extract`` writes, plus the k-NN classifier on them.

An encoder is a registered name with optional weights (``init``: a pretrain run, a ``save_pretrained`` folder or a
checkpoint file; none = random init, the baseline every pretraining has to beat).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..models.checkpoint import load_checkpoint
from ..models.registry import create_model
from .evaluate import predict_logits

log = logging.getLogger(__name__)


def load_encoder(model: str, init: str | None = None, **model_args: Any) -> nn.Module:
    """A feature extractor (no head, eval mode, no gradients) with the weights of ``init``."""
    from .finetune import init_weights_path, saved_config

    if model.startswith("mae_"):
        raise ValueError(f"{model} is an MAE model; name its encoder ({model.removeprefix('mae_')}) and pass the "
                         "pretrain run as init")
    path = init_weights_path(init) if init else None
    encoder = create_model(model, **{**(saved_config(path, model) if path else {}), **model_args, "num_classes": 0})
    if path:
        load_checkpoint(encoder, path)
    return encoder.eval().requires_grad_(False)


def pooled_features(encoder: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """``x -> [B, C]``: what the encoder's head would see (``forward_head(..., pre_logits=True)``: the pooled,
    normalised tokens for Hiera, the class token -- or the token mean with ``global_pool="avg"`` -- for ViTs)."""
    return lambda x: encoder.forward_head(encoder.forward_features(x), pre_logits=True)


def stage_features(encoder: nn.Module) -> Callable[[torch.Tensor], list[torch.Tensor]]:
    """``x -> [[B, C_i, H_i, W_i], ...]``: per-stage maps for Hiera (4 stages), per-block maps for ViTs."""
    return lambda x: encoder.forward_intermediates(x, intermediates_only=True)


@torch.no_grad()
def dataset_features(encoder: nn.Module, dataset, transform: Callable, *, device: torch.device | str = "cpu",
                     batch_size: int = 256, desc: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Pooled features ``[N, C]`` and labels ``[N]`` of a labelled PIL dataset."""
    return predict_logits(encoder, dataset, transform, device=device, batch_size=batch_size, desc=desc,
                          fn=pooled_features(encoder))


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
