"""``create_model``: a registered model, with weights from a file or folder, or public weights by catalog name."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from torch import nn

from .. import weights
from ..errors import CheckpointError
from .checkpoint import load_checkpoint
from .features import FeatureMaps
from .registry import build


def create_model(name: str, *, checkpoint: str | os.PathLike | None = None, pretrained: bool | str = False,
                 features_only: bool = False, out_indices: int | Sequence[int] | None = None,
                 **overrides: Any) -> nn.Module:
    """Build a registered model, with ``overrides`` on top of its config; ``checkpoint`` loads weights from a file
    or a ``save_pretrained`` folder (official, timm, transformers and hieralab layouts). ``features_only`` returns
    timm's feature interface instead (:class:`~hieralab.models.features.FeatureMaps`: the maps at
    ``out_indices``, ``feature_info``).

    Public weights by name (``hieralab weights`` lists them): ``name`` may carry a tag, ``"hiera_base_224.mae_in1k"``;
    ``pretrained=True`` loads the tagged weights, or the model's default tag; ``pretrained="mae_in1k"`` names the
    tag. They are downloaded once into the cache (see :mod:`hieralab.weights`); the arguments they were trained
    with (a class count, an input size) are the defaults under ``overrides``."""
    model_name, tag = weights.split_name(name)
    if isinstance(pretrained, str):
        if tag is not None and tag != pretrained:
            raise ValueError(f"two tags for {model_name}: {tag!r} in the name and pretrained={pretrained!r}")
        tag = pretrained
    if pretrained and checkpoint is not None:
        raise ValueError("pass pretrained= (public weights by name) or checkpoint= (a file or folder), not both")
    entry = weights.lookup(model_name, tag) if pretrained or tag is not None else None
    model = build(model_name, **{**(entry.model_args if entry else {}), **overrides})
    if checkpoint is not None:
        load_checkpoint(model, checkpoint)
    elif pretrained:
        path = weights.fetch(entry)
        try:
            load_checkpoint(model, path)
        except CheckpointError as e:  # a file of the wrong architecture: say which name it came from
            raise CheckpointError(f"{entry.name} ({path}): {e}") from None
    return FeatureMaps(model, out_indices) if features_only else model
