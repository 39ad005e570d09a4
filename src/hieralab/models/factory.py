"""``create_model``: a registered model, with weights from a file or folder when asked. Nothing is downloaded."""

from __future__ import annotations

import os
from typing import Any

from torch import nn

from .checkpoint import load_checkpoint
from .registry import build


def create_model(name: str, *, checkpoint: str | os.PathLike | None = None, pretrained: bool = False,
                 **overrides: Any) -> nn.Module:
    """Build a registered model, with ``overrides`` on top of its config; ``checkpoint`` loads weights from a file
    or a ``save_pretrained`` folder (official, timm, transformers and hieralab layouts)."""
    if pretrained:
        raise ValueError(f"hieralab never downloads weights: get the file for {name} (official, timm or a "
                         "hieralab folder) and pass checkpoint=<its path>")
    model = build(name, **overrides)
    if checkpoint is not None:
        load_checkpoint(model, checkpoint)
    return model
