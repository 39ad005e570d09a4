"""``create_model``: a registered model, with weights from a file or folder when asked. Nothing is downloaded."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from torch import nn

from .checkpoint import load_checkpoint
from .features import FeatureMaps
from .registry import build


def create_model(name: str, *, checkpoint: str | os.PathLike | None = None, pretrained: bool = False,
                 features_only: bool = False, out_indices: int | Sequence[int] | None = None,
                 **overrides: Any) -> nn.Module:
    """Build a registered model, with ``overrides`` on top of its config; ``checkpoint`` loads weights from a file
    or a ``save_pretrained`` folder (official, timm, transformers and hieralab layouts). ``features_only`` returns
    timm's feature interface instead (:class:`~hieralab.models.features.FeatureMaps`: the maps at
    ``out_indices``, ``feature_info``)."""
    if pretrained:
        raise ValueError(f"hieralab never downloads weights: get the file for {name} (official, timm or a "
                         "hieralab folder) and pass checkpoint=<its path>")
    model = build(name, **overrides)
    if checkpoint is not None:
        load_checkpoint(model, checkpoint)
    return FeatureMaps(model, out_indices) if features_only else model
