"""FSDP2 (PyTorch's ``fully_shard``) beside DDP, for models too large for a full copy per process.

``parallel=fsdp`` under torchrun shards every transformer block (each child of a ``*blocks`` ``ModuleList``: the
encoder's and an MAE decoder's), then the rest of the model as one group: weights, gradients and AdamW moments live
1/world on each process, a block's weights are gathered for its forward and backward and freed after. The trainer
reads and writes checkpoints as full (gathered) state dicts, so a checkpoint is the same ``model.safetensors`` any
run writes, readable by a single process. Optimizer state is written keyed by parameter name (PyTorch's
``torch.distributed.checkpoint.state_dict`` format): a run resumes under the parallelism it was written with.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                     get_optimizer_state_dict, set_model_state_dict,
                                                     set_optimizer_state_dict)
from torch.distributed.fsdp import FSDPModule, fully_shard
from torch.nn.modules.module import _IncompatibleKeys

from ..errors import CheckpointError
from .checkpoints import StateIO

FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)  # gathered on every process, kept on the CPU
FULL_STRICT_OFF = StateDictOptions(full_state_dict=True, strict=False)


def shard_units(model: nn.Module) -> list[nn.Module]:
    """The modules sharded one by one: every entry of a ``ModuleList`` whose name ends in ``blocks``."""
    return [block for name, child in model.named_modules()
            if isinstance(child, nn.ModuleList) and name.split(".")[-1].endswith("blocks") for block in child]


def shard(model: nn.Module, *, mesh=None) -> nn.Module:
    """``fully_shard`` each block, then the model (in place); returns the model.

    PyTorch warns, once per block, that a block returned a view ("... can cause backward to fail or produce wrong
    gradients") because an in-place op on it would skip FSDP's hook. Nothing here changes a block's output in place
    (residuals are ``x = x + f(x)``, reshapes are out of place), and the two-process test matches one process to
    1e-4 and resumes exactly (``test_two_process_fsdp_matches_one_process_and_resumes``): the warning is silenced
    for that message alone."""
    warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module .* returned a view tensor")
    for block in shard_units(model):
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def is_sharded(model: nn.Module) -> bool:
    return any(isinstance(m, FSDPModule) for m in model.modules())


class FullState(StateIO):
    """Checkpoint I/O of a sharded model: full state dicts gathered from (and scattered back to) every process.
    Every call is collective: all processes make it together."""

    def model_state(self, model: nn.Module) -> dict[str, torch.Tensor]:
        return get_model_state_dict(model, options=FULL)

    def optimizer_state(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        return get_optimizer_state_dict(model, optimizer, options=FULL)

    def load_model(self, model: nn.Module, tensors: dict[str, torch.Tensor]):
        return set_model_state_dict(model, tensors, options=FULL_STRICT_OFF)

    def load_optimizer(self, model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
        if any(isinstance(k, int) for k in state.get("state", {})):
            raise CheckpointError("its optimizer state was written by a run without parallel=fsdp (keyed by "
                                  "position); resume it with parallel=ddp")
        set_optimizer_state_dict(model, optimizer, state, options=FULL_STRICT_OFF)


class CheckOnly(StateIO):
    """Reads a checkpoint's files and compares keys without loading them: the main process's choice of the
    checkpoint to resume from (skipping corrupt ones), before every process loads it with :class:`FullState`."""

    def load_model(self, model: nn.Module, tensors: dict[str, torch.Tensor]):
        own = model.state_dict().keys()
        return _IncompatibleKeys([k for k in own if k not in tensors], [k for k in tensors if k not in own])

    def load_optimizer(self, model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
        if not isinstance(state, dict) or "state" not in state:
            raise ValueError("not an optimizer state dict")


def full_copy(model: nn.Module, state: dict[str, torch.Tensor]) -> nn.Module:
    """An unsharded model of the same class and constructor arguments (``model.config``) holding ``state``, on the
    CPU: what the main process writes and draws its final outputs with."""
    copy = type(model)(**model.config)
    copy.load_state_dict(state)
    for attr in ("model_name",):
        if hasattr(model, attr):
            setattr(copy, attr, getattr(model, attr))
    return copy.eval()
