"""Reading weights files and renaming their keys: official Hiera and T2T-ViT, timm, HF transformers, ours.

Nothing here unpickles arbitrary objects: ``.pth`` files go through ``torch.load(weights_only=True)``; a file that
would need more is refused, and a truncated or corrupt file is named as such.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import pickle
import re
import warnings
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from ..errors import CheckpointError

log = logging.getLogger(__name__)

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
# Parts of an MAE checkpoint (official or ours) that are not the encoder.
MAE_ONLY = ("decoder", "multi_scale_fusion_heads", "mask_token", "encoder_norm")
# Where training checkpoints keep their weights: official Hiera, ours / MAE, timm (EMA first, as its loader).
_CONTAINERS = ("model_state", "model", "state_dict_ema", "state_dict")


# ---------------------------------------------------------------- key layouts
def _from_timm(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in sd.items():
        k = re.sub(r"^head\.fc\.", "head.projection.", k)
        k = re.sub(r"^head\.norm\.", "norm.", k)
        out[k] = v
    return out


def _from_transformers(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """HF ``HieraModel`` / ``HieraForImageClassification``: stages hold their layers; block i is numbered globally."""
    layer_ids = sorted({(int(m[1]), int(m[2])) for k in sd if (m := re.search(r"stages\.(\d+)\.layers\.(\d+)\.", k))})
    global_index = {sl: i for i, sl in enumerate(layer_ids)}
    rename = [
        (r"^(hiera\.)?embeddings\.patch_embeddings\.projection\.", "patch_embed.proj."),
        (r"^(hiera\.)?embeddings\.position_embeddings$", "pos_embed"),
        (r"^(hiera\.)?pooler\.layernorm\.", "norm."),
        (r"^classifier\.", "head.projection."),
        (r"\.layernorm_before\.", ".norm1."),
        (r"\.layernorm_after\.", ".norm2."),
    ]
    out = {}
    for k, v in sd.items():
        m = re.search(r"^(hiera\.)?encoder\.stages\.(\d+)\.layers\.(\d+)\.", k)
        if m:
            k = f"blocks.{global_index[(int(m[2]), int(m[3]))]}." + k[m.end():]
        for pattern, repl in rename:
            k = re.sub(pattern, repl, k)
        out[k] = v
    return out


def _from_t2t(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """yitu-opensource/T2T-ViT: the Performer T2T layers keep their MLP as ``nn.Sequential`` (``mlp.0``, ``mlp.2``)."""
    return {re.sub(r"^(tokens_to_token\.attention\d\.mlp)\.([02])\.",
                   lambda m: f"{m[1]}.{'fc1' if m[2] == '0' else 'fc2'}.", k): v for k, v in sd.items()}


def _detect(sd: Mapping[str, torch.Tensor]) -> tuple[str, Callable[[Mapping[str, torch.Tensor]], dict]]:
    if any(k.startswith("tokens_to_token.") for k in sd):
        return "t2t", _from_t2t
    if any(".stages." in k or k.startswith(("hiera.", "embeddings.")) for k in sd):
        return "transformers", _from_transformers
    if any(k.startswith(("head.fc.", "head.norm.")) for k in sd):
        return "timm", _from_timm
    return "hiera", dict


def to_hieralab_keys(sd: Mapping[str, torch.Tensor]) -> tuple[str, dict[str, torch.Tensor]]:
    """Rename any supported layout to ours; returns ``(layout name, state dict)``. MAE-only parts are dropped (an
    MAE checkpoint, official or ours, loads its encoder)."""
    kind, convert = _detect(sd)
    out = {k.removeprefix("encoder."): v for k, v in convert(sd).items()}
    dropped = [k for k in out if k.startswith(MAE_ONLY)]
    for k in dropped:
        del out[k]
    if dropped:
        log.info("checkpoint: dropped %d MAE decoder tensors, loading the encoder only", len(dropped))
    return kind, out


def to_mae_keys(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An official MAE checkpoint (encoder and decoder side by side) to our MAE layout (encoder under ``encoder.``)."""
    return {k if k.startswith(MAE_ONLY + ("encoder.",)) else f"encoder.{k}": v for k, v in sd.items()}


# ---------------------------------------------------------------- reading
def read_safetensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """All tensors of a ``.safetensors`` file; a truncated, empty or corrupt file is a one-line error naming it."""
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        if isinstance(e, FileNotFoundError):
            raise
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(f"{path} is not a readable safetensors file (truncated or corrupt: {reason}); "
                              "re-save or re-copy it") from None


def load_torch_file(path: str | os.PathLike) -> Any:
    """``torch.load(path, weights_only=True)`` (timm's ``argparse.Namespace`` args allowed), with a one-line error
    that says whether the file is truncated / not a torch file or would need unpickling of arbitrary objects."""
    safe_globals = getattr(torch.serialization, "safe_globals", None)
    try:
        with safe_globals([argparse.Namespace]) if safe_globals else contextlib.nullcontext(), \
                warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's notes on pickle protocols of files it may then refuse
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "Weights only load failed" in str(e) or "Unsupported global" in str(e):
            raise CheckpointError(f"{path} holds pickled Python objects, not only tensors; it was not unpickled (that "
                                  "could run code). Re-save it as a plain state dict or as .safetensors") from None
        raise CheckpointError(f"{path} is truncated or not a torch checkpoint ({_first_line(e)})") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as e:
        if isinstance(e, FileNotFoundError):
            raise
        raise CheckpointError(f"{path} is truncated or not a torch checkpoint ({_first_line(e)}); re-save or "
                              "re-copy it") from None


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:160]


def unwrap_state_dict(obj: Any, where: str = "checkpoint") -> dict[str, torch.Tensor]:
    """The tensors of a loaded checkpoint object: a state dict, or one inside a training checkpoint
    (``{"model_state": ...}`` official, ``{"model": ...}``, timm's ``{"state_dict", "state_dict_ema", "args"}`` --
    the EMA weights when present, as timm's ``load_checkpoint``); a DDP ``module.`` prefix is removed."""
    for key in _CONTAINERS:
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{where} holds no state dict of tensors (looked at the top level and under "
                              f"{', '.join(_CONTAINERS)})")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors from a ``.safetensors`` file, a ``save_pretrained`` folder or a ``.pth``/``.pt``/``.bin``/
    ``.pth.tar`` file (see :func:`unwrap_state_dict`), never unpickling objects other than tensors, containers and
    ``argparse.Namespace``."""
    path = Path(path).expanduser()
    if path.is_dir():
        if not (path / WEIGHTS_NAME).exists():
            raise FileNotFoundError(f"{path} is a folder without {WEIGHTS_NAME}; pass a save_pretrained folder "
                                    "or a weights file")
        path = path / WEIGHTS_NAME
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    if path.suffix == ".safetensors":
        return read_safetensors(path)
    return unwrap_state_dict(load_torch_file(path), str(path))
