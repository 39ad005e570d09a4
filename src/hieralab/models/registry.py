"""Named model configurations. A variant is data: a dict of constructor arguments on top of its family's."""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from typing import Any

from torch import nn

_BUILDERS: dict[str, Callable[..., nn.Module]] = {}
_CONFIGS: dict[str, dict[str, Any]] = {}


def register(name: str, builder: Callable[..., nn.Module], **config: Any) -> None:
    """Register ``name`` as ``builder(**config)``."""
    if name in _BUILDERS:
        raise ValueError(f"model {name!r} is already registered")
    _BUILDERS[name] = builder
    _CONFIGS[name] = config


def list_models(pattern: str = "*") -> list[str]:
    """Registered names matching a glob ``pattern``, sorted."""
    return sorted(n for n in _BUILDERS if fnmatch.fnmatch(n, pattern))


def model_config(name: str) -> dict[str, Any]:
    """The constructor arguments registered for ``name`` (a copy)."""
    _check_name(name)
    return dict(_CONFIGS[name])


def create_model(name: str, *, checkpoint: str | None = None, **overrides: Any) -> nn.Module:
    """Build a registered model, with ``overrides`` on top of its config; ``checkpoint`` loads weights from a file or
    a ``save_pretrained`` folder (official, timm, transformers and hieralab layouts)."""
    _check_name(name)
    model = _BUILDERS[name](**{**_CONFIGS[name], **overrides})
    model.model_name = name
    if checkpoint is not None:
        from .checkpoint import load_checkpoint

        load_checkpoint(model, checkpoint)
    return model


def _check_name(name: str) -> None:
    if name not in _BUILDERS:
        close = [n for n in _BUILDERS if name.split("_")[0] in n][:8]
        hint = f"; similar: {', '.join(close)}" if close else ""
        raise KeyError(f"unknown model {name!r}: see hieralab.list_models(){hint}")
