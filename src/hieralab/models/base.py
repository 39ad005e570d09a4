"""What every model here shares: its config captured from its own constructor, ``save_pretrained`` /
``from_pretrained``, layer ids for layer-wise lr decay, timm's classifier accessors, and the index rule of
``forward_intermediates`` (``take_indices``, kept in ``indices.py``).
"""

from __future__ import annotations

import functools
import inspect
import os
import re
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint as activation_checkpoint

from ..config.schema import plain
from . import checkpoint
from .indices import take_indices  # noqa: F401  (hiera, vit and hieradet import it from here)


def _capture_config(init):
    """Wrap a constructor so that the outermost one records its arguments (defaults applied, ``**kwargs`` merged in)
    as ``self.config``: what ``save_pretrained`` writes and ``from_pretrained`` rebuilds from, the way the official
    Hiera's ``@has_config`` does, with no hand-copied dict that can drift from the signature."""
    signature = inspect.signature(init)

    @functools.wraps(init)
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        if type(self).__init__ is not __init__:  # a parent's constructor, called through super(): not the model's
            return
        bound = signature.bind(self, *args, **kwargs)
        bound.apply_defaults()
        config: dict[str, Any] = {}
        for name, param in signature.parameters.items():
            if name == "self" or param.kind is param.VAR_POSITIONAL:
                continue
            if param.kind is param.VAR_KEYWORD:
                config.update(bound.arguments[name])
            else:
                config[name] = bound.arguments[name]
        self.config = plain(config)

    __init__.captures_config = True
    return __init__


class PretrainedMixin:
    """``save_pretrained`` / ``from_pretrained`` and layer ids for layer-wise lr decay, shared by every model here.

    A subclass's constructor arguments become ``self.config`` by themselves (see :func:`_capture_config`). A model
    lists its embedding parameters (layer 0) in ``embed_params``; ``blocks.i`` is layer ``i + 1`` and everything
    else (final norms, head) layer ``depth + 1``.
    """

    config: dict[str, Any]
    embed_params: tuple[str, ...] = ("patch_embed", "pos_embed")
    grad_checkpointing: bool = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        init = cls.__dict__.get("__init__")
        if init is not None and not getattr(init, "captures_config", False):
            cls.__init__ = _capture_config(init)

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Write ``model.safetensors`` + ``config.json`` to ``directory`` (atomically)."""
        checkpoint.save_pretrained(self, directory)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, **overrides: Any) -> nn.Module:
        """Rebuild a model written by :meth:`save_pretrained`; the folder must hold this class (or a subclass)."""
        return checkpoint.from_pretrained(directory, expect=None if cls is PretrainedMixin else cls, **overrides)

    # ---------------------------------------------------------------- activation checkpointing
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block's activations in the backward pass instead of keeping them (timm's switch): less
        memory, one more forward; outputs and gradients unchanged (the RNG state is replayed for drop path)."""
        self.grad_checkpointing = enable
        for child in self.children():  # an MAE's encoder follows its wrapper
            if isinstance(child, PretrainedMixin):
                child.set_grad_checkpointing(enable)

    def run_block(self, block: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """``block(x)``, through activation checkpointing when it is on and gradients are being recorded."""
        if self.grad_checkpointing and torch.is_grad_enabled():
            return activation_checkpoint(block, x, use_reentrant=False)
        return block(x)

    # ---------------------------------------------------------------- timm's classifier accessors
    def get_classifier(self) -> nn.Module | None:
        """The final Linear (an Identity with ``num_classes=0``; None for a model without a head, an MAE)."""
        head = getattr(self, "head", None)
        return getattr(head, "projection", head)

    def classifier_name(self) -> str | None:
        """The classifier's module path in the state dict (``head.projection`` for Hiera, ``head`` for the ViTs)."""
        target = self.get_classifier()
        return next((name for name, m in self.named_modules() if m is target), None)

    # ---------------------------------------------------------------- layer-wise lr decay
    @property
    def num_layers(self) -> int:
        """Layer ids run 0 (embeddings) .. depth + 1 (final norms and head)."""
        return len(self.blocks) + 2

    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """timm's parameter grouping, the same layers as :meth:`layer_id` (embeddings, then one group per block,
        then the rest), so ``timm.optim.param_groups_layer_decay`` works on our models."""
        return dict(stem=r"^(?:" + "|".join(re.escape(p) for p in self.embed_params) + ")", blocks=r"^blocks\.(\d+)")

    def layer_id(self, param_name: str) -> int:
        """The layer a parameter belongs to, for layer-wise learning-rate decay."""
        if param_name.startswith(self.embed_params):
            return 0
        if param_name.startswith("blocks."):
            return int(param_name.split(".")[1]) + 1
        return len(self.blocks) + 1


def run_stages(model: nn.Module, x: torch.Tensor, stages: Sequence[int] | None = None):
    """A hierarchical model's blocks up to the last stage asked for (all: ``None``), yielding ``(stage index,
    output)`` at each requested stage's end (``model.stage_ends``; each block through ``model.run_block``, which
    checkpoints activations when asked). Hiera and HieraDet share it."""
    last = max(stages) if stages is not None else len(model.stage_ends) - 1
    for i, block in enumerate(model.blocks[: model.stage_ends[last] + 1]):
        x = model.run_block(block, x)
        if i in model.stage_ends:
            s = model.stage_ends.index(i)
            if stages is None or s in stages:
                yield s, x
