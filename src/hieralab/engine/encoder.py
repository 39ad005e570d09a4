"""The encoder a run builds, decided in one place for every task that builds one (finetune, linprobe, detect,
segment, extract, the studies): which architecture, which input channels, which drop path, which weights.

The precedence, lowest first (the README states it; ``tests/test_encoder.py`` pins it):

1. the model's registered configuration (``hieralab list``);
2. the architecture ``init`` was saved with (a ``save_pretrained`` folder of the same model: its widths, depths...);
3. the task's own keys (``drop_path``, the head's class count);
4. the user's ``model_args`` -- an explicit value there is never overridden;
5. the input channels (:func:`decide_channels`): ``model_args.in_chans`` when given, else the weights', else the
   data's.

Channels follow the data by one rule: an encoder without weights takes the data's channels; an encoder with weights
keeps its own, and the images are converted to it (colour to grey as ``predict`` does, grey repeated to RGB); asking
for other channels than the weights' (``model_args.in_chans=3`` on a grey encoder) widens or narrows the patch
embedding from the checkpoint (timm's ``adapt_input_conv``: the grey kernel repeated and rescaled, an RGB kernel
summed).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from ..errors import DataError
from ..models import registry
from ..models.checkpoint import load_checkpoint, read_config
from ..models.factory import create_model
from .artifacts import resolve_weights

log = logging.getLogger(__name__)


def saved_arguments(path: Path, model: str) -> dict[str, Any]:
    """The constructor arguments saved with ``path`` (a ``save_pretrained`` folder) when it holds ``model``, so
    that e.g. a small-width encoder is rebuilt at its width; without those a new run sets (head, drop path)."""
    if not (path / "config.json").exists():
        return {}
    meta = read_config(path)
    if meta.get("model_name") != model:
        return {}
    return {k: v for k, v in meta["config"].items() if k not in ("num_classes", "drop_path_rate")}


def weights_channels(name: str, init: Path | None) -> int | None:
    """The input channels ``init``'s weights were trained with: from a ``save_pretrained`` folder's config, else
    the registered model's (a weights file of an official / timm checkpoint); None without weights."""
    if init is None:
        return None
    if (init / "config.json").exists():
        return read_config(init)["config"].get("in_chans", 3)
    return registry.model_config(name).get("in_chans", 3)


def decide_channels(explicit: int | None, weights: int | None, data: int, source: str) -> int:
    """The encoder's input channels (the module docstring's rule): ``explicit`` (``model_args.in_chans``), else the
    ``weights``', else the ``data``'s. Logs how the data is converted when it differs."""
    if explicit is not None and explicit not in (1, 3):
        raise DataError(f"model_args.in_chans={explicit}: images give 1 (grey) or 3 (RGB) channels")
    channels = explicit if explicit is not None else weights if weights is not None else data
    if explicit is not None and weights is not None and explicit != weights:
        log.info("the weights take %d input channel(s); model_args.in_chans=%d adapts their patch embedding "
                 "(timm's adapt_input_conv)", weights, explicit)
    if channels == 1 and data == 3:
        log.info("%s is colour; the 1-channel encoder sees it converted to grey (as predict does); "
                 "model_args.in_chans=3 widens the encoder's patch embedding instead", source)
    elif channels == 3 and data == 1:
        log.info("%s is grey; its images are repeated over the encoder's 3 input channels", source)
    return channels


@dataclass(frozen=True)
class EncoderStart:
    """What :func:`plan` decided: the model name, its constructor arguments (on top of the registered config), the
    resolved weights (None: random init) and the channels the data has."""

    name: str
    args: dict[str, Any]
    init: Path | None
    data_channels: int

    @property
    def in_chans(self) -> int:
        return self.args["in_chans"]

    def create(self, **extra: Any) -> nn.Module:
        """The encoder (``create_model``) with these arguments and ``extra`` ones (e.g. ``num_classes``), no
        weights read."""
        return create_model(self.name, **{**self.args, **extra})

    def load(self, model: nn.Module, *, via: Any = None) -> list[str]:
        """Load ``init`` into ``model`` (when there is one) with ``load_checkpoint``, or ``via(init)`` (a dense
        model's ``load_encoder``); returns the model's tensors it did not have."""
        if self.init is None:
            return []
        missing = via(self.init) if via is not None else load_checkpoint(model, self.init)
        more = f" and {len(missing) - 4} more" if len(missing) > 4 else ""
        log.info("encoder from %s (%s)", self.init, f"{len(missing)} of the model's tensors not in it, new: "
                 f"{', '.join(missing[:4])}{more}" if missing else "every tensor of the model loaded")
        return missing

    def build(self, **extra: Any) -> nn.Module:
        """:meth:`create` then :meth:`load`."""
        model = self.create(**extra)
        self.load(model)
        return model

    def load_into(self, model: nn.Module) -> None:
        """Load ``init`` into the encoder of a model that holds one (a detector, a segmenter:
        ``model.load_encoder``)."""
        self.load(model, via=model.load_encoder)


def plan(name: str, model_args: dict[str, Any], init: str | Path | None, *, data_channels: int, source: str,
         drop_path: float | None = None, num_classes: int | None = None) -> EncoderStart:
    """The one encoder start-up: architecture from ``init``'s saved arguments, then the task's ``drop_path`` and
    ``num_classes``, then the user's ``model_args``, then the channels (see the module docstring)."""
    weights = resolve_weights(init) if init else None
    task_args = {k: v for k, v in (("drop_path_rate", drop_path), ("num_classes", num_classes)) if v is not None}
    channels = decide_channels(model_args.get("in_chans"), weights_channels(name, weights), data_channels, source)
    args = {**(saved_arguments(weights, name) if weights else {}), **task_args, **model_args, "in_chans": channels}
    return EncoderStart(name=name, args=args, init=weights, data_channels=data_channels)


NORMALISATION = "normalisation.json"  # beside an encoder's weights: the mean and std it was pretrained with


def normalisation(init: str | Path | None, data: Any, mean, std) -> tuple[list[float], list[float]]:
    """The mean and std a run normalises with: ``data.mean`` / ``data.std`` when the user set them, else those the
    encoder of ``init`` was pretrained with (its :data:`NORMALISATION` file), else the data's own (``mean``,
    ``std``)."""
    given_mean, given_std = getattr(data, "mean", None), getattr(data, "std", None)  # dense data has none
    if given_mean is not None or given_std is not None or not init:
        return list(given_mean or mean), list(given_std or std)
    path = resolve_weights(init)
    try:
        saved = json.loads((path / NORMALISATION).read_text())
        return list(saved["mean"]), list(saved["std"])
    except (OSError, ValueError, KeyError, TypeError):
        return list(mean), list(std)


def frozen_encoder(name: str, init: str | Path | None = None, **model_args: Any) -> nn.Module:
    """A feature extractor (no head, eval mode, no gradients) with the weights of ``init`` (its saved architecture,
    then ``model_args``)."""
    if getattr(registry.model_class(name), "is_mae", False):
        raise ValueError(f"{name} is an MAE model; name its encoder ({name.removeprefix('mae_')}) and pass the "
                         "pretrain run as init")
    weights = resolve_weights(init) if init else None
    # no data to follow: the channels asked for, else the weights', else the registered ones (the one rule of plan)
    channels = (model_args.get("in_chans") or weights_channels(name, weights)
                or registry.model_config(name).get("in_chans", 3))
    start = plan(name, model_args, weights, data_channels=channels, source=name)
    return start.build(num_classes=0).eval().requires_grad_(False)
