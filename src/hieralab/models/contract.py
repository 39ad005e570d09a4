"""The backbone contract: what an encoder must provide to be used everywhere here -- fine-tuning (layer decay,
partial fine-tuning, a head), feature extraction and the k-NN probe, the dense tasks (multi-scale maps through a
neck, padding to a size multiple), export, ``save_pretrained``. Every registered encoder is checked against it
(``tests/test_models.py``); a model that lacks a member is refused by name, never given a silent default.

Adding a backbone: its model file, its configs as data (``register``), its key conversion beside it, and these
members (``docs/adding_a_task.md`` has a paragraph on it).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from ..errors import ConfigError


@runtime_checkable
class Backbone(Protocol):
    """An encoder of images ``[B, C, H, W]`` (``ndim == 2``) or clips ``[B, C, T, H, W]`` (``ndim == 3``)."""

    config: dict[str, Any]  # its constructor's arguments (save_pretrained, the encoder start-up)
    in_chans: int  # input channels
    ndim: int  # 2: images, 3: clips
    hierarchical: bool  # True: several stages at growing strides (Hiera); False: one map (ViT)
    size_multiple: int  # every input side must be a multiple of this (padding of the dense tasks)
    feature_info: Sequence[dict[str, Any]]  # timm's: num_chs, reduction, module of each level
    blocks: nn.ModuleList  # partial fine-tuning counts them
    num_layers: int  # layer-wise lr decay: layer ids 0 .. num_layers - 1

    def forward_features(self, x: torch.Tensor) -> torch.Tensor: ...
    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor: ...
    def forward_intermediates(self, x: torch.Tensor, indices: Any = None, **kwargs: Any) -> Any: ...
    def layer_id(self, name: str) -> int: ...
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]: ...
    def no_weight_decay(self) -> set[str]: ...
    def reset_classifier(self, num_classes: int) -> None: ...
    def get_classifier(self) -> nn.Module: ...
    def classifier_name(self) -> str | None: ...
    def set_grad_checkpointing(self, enable: bool = True) -> None: ...


MEMBERS = ("config", "in_chans", "ndim", "hierarchical", "size_multiple", "feature_info", "blocks", "num_layers",
           "forward_features", "forward_head", "forward_intermediates", "layer_id", "group_matcher",
           "no_weight_decay", "reset_classifier", "get_classifier", "classifier_name", "set_grad_checkpointing")


def missing_members(model: nn.Module) -> list[str]:
    """The members of :class:`Backbone` that ``model`` lacks (empty: it keeps the contract)."""
    return [m for m in MEMBERS if not hasattr(model, m)]


def check_backbone(model: nn.Module) -> nn.Module:
    """``model``, or a one-line error naming what it lacks of the backbone contract."""
    missing = missing_members(model)
    if missing:
        name = getattr(model, "model_name", type(model).__name__)
        raise ConfigError([f"{name} is not a backbone hieralab can use here: it lacks {', '.join(missing)} "
                           "(see hieralab/models/contract.py)"])
    return model
