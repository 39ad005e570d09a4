"""Reading and writing weights: official Hiera and T2T-ViT, timm, HF transformers and our own safetensors + JSON.

Nothing here unpickles arbitrary objects: ``.pth`` files go through ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..layers import pos_embed as pe

log = logging.getLogger(__name__)

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
# Parts of an official MAE checkpoint that are not the encoder.
_MAE_ONLY = ("decoder", "multi_scale_fusion_heads", "mask_token", "encoder_norm")


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
    dropped = [k for k in out if k.startswith(_MAE_ONLY)]
    for k in dropped:
        del out[k]
    if dropped:
        log.info("checkpoint: dropped %d MAE decoder tensors, loading the encoder only", len(dropped))
    return kind, out


# ---------------------------------------------------------------- reading files
def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors from a ``.safetensors`` file, a ``save_pretrained`` folder or a ``.pth``/``.pt``/``.bin``/``.pth.tar``
    file (official Hiera ``{"model_state": ...}``, timm training checkpoints ``{"state_dict": ..., "state_dict_ema":
    ..., "args": Namespace}`` -- the EMA weights when present, as timm's ``load_checkpoint`` --, plain dicts), never
    unpickling objects other than tensors, containers and ``argparse.Namespace``; a DDP ``module.`` prefix is
    removed."""
    path = Path(path)
    if path.is_dir():
        path = path / WEIGHTS_NAME
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    if path.suffix == ".safetensors":
        return load_file(str(path))
    safe_globals = getattr(torch.serialization, "safe_globals", None)  # timm checkpoints keep their argparse args
    try:
        with safe_globals([argparse.Namespace]) if safe_globals else contextlib.nullcontext():
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle of arbitrary objects, or not a torch file at all
        raise ValueError(f"{path} is not a weights-only torch checkpoint ({type(e).__name__}); re-save it as a plain "
                         "state dict or as .safetensors") from None
    for key in ("model_state", "model", "state_dict_ema", "state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path} holds no state dict of tensors")
    return {k.removeprefix("module."): v for k, v in obj.items()}


# ---------------------------------------------------------------- loading into a model
def _guess_models(sd: Mapping[str, torch.Tensor]) -> list[str]:
    from .registry import list_models, model_config

    depth = len({k.split(".")[1] for k in sd if k.startswith("blocks.")})
    if "tokens_to_token.project.weight" in sd:  # T2T-ViT: width, depth and the T2T layer kind
        width = sd["tokens_to_token.project.weight"].shape[0]
        kind = "performer" if "tokens_to_token.attention1.w" in sd else "transformer"
        return [name for name in list_models("t2t_vit_*") if (cfg := model_config(name)).get("embed_dim") == width
                and cfg.get("depth") == depth and cfg.get("tokens_type") == kind]
    w = sd.get("patch_embed.proj.weight")
    if w is None:
        return []
    names = []
    for name in list_models():
        if name.startswith("mae_"):  # an encoder checkpoint: name encoders
            continue
        cfg = model_config(name)
        if (cfg.get("embed_dim") == w.shape[0] and sum(cfg.get("stages", ())) == depth
                and len(cfg.get("input_size", (224, 224))) == w.dim() - 2):
            names.append(name)
    return names


def adapt_state_dict(model: nn.Module, sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Fit a checkpoint (our keys) to ``model``: resample position embeddings stored for another input size, drop a
    head trained for another class count; anything else that does not fit is an error naming the right config."""
    own = model.state_dict()
    sd = dict(sd)
    if (hasattr(model, "adapt_pos_embed") and "pos_embed" in sd and sd["pos_embed"].shape != own["pos_embed"].shape
            and sd["pos_embed"].shape[-1] == own["pos_embed"].shape[-1]):
        sd["pos_embed"] = model.adapt_pos_embed(sd["pos_embed"])  # ViT / T2T-ViT: stored for another input size
        log.info("checkpoint: resampled pos_embed to %s tokens", model.grid_size)
    if "pos_embed" in sd and "pos_embed" in own and sd["pos_embed"].shape != own["pos_embed"].shape \
            and getattr(model, "pos_embed_kind", "absolute") == "absolute" and sd["pos_embed"].dim() == 3:
        src, dst, C = sd["pos_embed"].shape[1], own["pos_embed"].shape[1], own["pos_embed"].shape[2]
        side = int(round(src ** 0.5))
        if side * side == src and sd["pos_embed"].shape[2] == C and model.ndim == 2:
            grid = pe.resample_grid(sd["pos_embed"].view(1, side, side, C), model.stored_grid)
            sd["pos_embed"] = grid.reshape(1, dst, C)
            log.info("checkpoint: resampled pos_embed from %dx%d to %s tokens", side, side, model.stored_grid)
    if "pos_embed_spatial" in sd and "pos_embed_spatial" in own:
        for key, grid in (("pos_embed_spatial", model.stored_grid[1:]), ("pos_embed_temporal", model.stored_grid[:1])):
            v = sd[key]
            if v.shape != own[key].shape and v.shape[-1] == own[key].shape[-1]:
                if key == "pos_embed_spatial":
                    side = int(round(v.shape[1] ** 0.5))
                    v = v.view(1, side, side, v.shape[-1])
                sd[key] = pe.resample_grid(v, grid).reshape(own[key].shape)
    for k in ("head.projection.weight", "head.projection.bias", "head.weight", "head.bias"):
        if k in sd and (k not in own or sd[k].shape != own[k].shape):
            log.info("checkpoint: %s has %d classes, the model %s; keeping the model's new head", k,
                     sd[k].shape[0], own[k].shape[0] if k in own else 0)
            del sd[k]
    wrong = [k for k in sd if k in own and sd[k].shape != own[k].shape]
    unknown = [k for k in sd if k not in own]
    if wrong or unknown:
        guesses = _guess_models(sd)
        hint = f"create {' or '.join(guesses)} instead" if guesses else "check the model name and its overrides"
        first = wrong[0] if wrong else unknown[0]
        detail = (f"{first}: checkpoint {tuple(sd[first].shape)} vs model {tuple(own[first].shape)}" if wrong
                  else f"unexpected key {first}")
        raise ValueError(f"checkpoint does not fit this model ({len(wrong)} shapes differ, {len(unknown)} unknown "
                         f"keys; {detail}); {hint}")
    return sd


def to_mae_keys(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An official MAE checkpoint (encoder and decoder side by side) to our MAE layout (encoder under ``encoder.``)."""
    return {k if k.startswith(_MAE_ONLY + ("encoder.",)) else f"encoder.{k}": v for k, v in sd.items()}


def load_checkpoint(model: nn.Module, path_or_state: str | os.PathLike | Mapping[str, torch.Tensor]) -> list[str]:
    """Load weights in any supported layout into ``model``; returns the model keys the checkpoint did not have
    (e.g. ``norm`` and ``head`` for an MAE encoder checkpoint)."""
    sd = read_state_dict(path_or_state) if not isinstance(path_or_state, Mapping) else dict(path_or_state)
    if getattr(model, "is_mae", False):
        kind, sd = "mae", to_mae_keys(sd)
        missing = [k for k in model.state_dict() if k not in sd]
        unknown = [k for k in sd if k not in model.state_dict()]
        if missing or unknown:
            raise ValueError(f"checkpoint does not fit this MAE model ({len(missing)} tensors missing, e.g. "
                             f"{(missing or unknown)[0]}); check the model name")
        model.load_state_dict(sd)
        return []
    kind, sd = to_hieralab_keys(sd)
    sd = adapt_state_dict(model, sd)
    result = model.load_state_dict(sd, strict=False)
    if result.missing_keys:
        log.info("checkpoint (%s layout): %d model tensors not in it, left initialised: %s", kind,
                 len(result.missing_keys), ", ".join(result.missing_keys[:6]))
    return list(result.missing_keys)


# ---------------------------------------------------------------- our own format
def atomic_write(path: Path, write: Callable[[str], None]) -> None:
    """Write through a temporary file in the same folder and rename, so a crash never leaves half a file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_pretrained(model: nn.Module, directory: str | os.PathLike) -> Path:
    """Write ``model.safetensors`` and ``config.json`` (the registered name and constructor arguments)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = {"model_name": getattr(model, "model_name", None), "config": model.config,
              "architecture": type(model).__name__}
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    atomic_write(directory / WEIGHTS_NAME, lambda p: save_file(tensors, p, metadata={"format": "pt"}))
    atomic_write(directory / CONFIG_NAME, lambda p: Path(p).write_text(json.dumps(config, indent=2) + "\n"))
    return directory


def from_pretrained(directory: str | os.PathLike, **overrides: Any) -> nn.Module:
    """Rebuild a model saved by :func:`save_pretrained` and load its weights."""
    from .registry import create_model

    directory = Path(directory)
    cfg_path = directory / CONFIG_NAME
    if not cfg_path.exists():
        raise FileNotFoundError(f"{directory} has no {CONFIG_NAME}; it was not written by save_pretrained")
    meta = json.loads(cfg_path.read_text())
    name = meta.get("model_name")
    if name is None:
        raise ValueError(f"{cfg_path} names no registered model")
    model = create_model(name, **{**meta["config"], **overrides})
    sd = load_file(str(directory / WEIGHTS_NAME))
    model.load_state_dict(adapt_state_dict(model, sd), strict="num_classes" not in overrides)
    return model


class PretrainedMixin:
    """``save_pretrained`` / ``from_pretrained`` and layer ids for layer-wise lr decay, shared by every model here.

    A model lists its embedding parameters (layer 0) in ``embed_params``; ``blocks.i`` is layer ``i + 1`` and
    everything else (final norms, head) layer ``depth + 1``.
    """

    embed_params: tuple[str, ...] = ("patch_embed", "pos_embed")

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Write ``model.safetensors`` + ``config.json`` to ``directory`` (atomically)."""
        save_pretrained(self, directory)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, **overrides: Any) -> nn.Module:
        """Rebuild a model written by :meth:`save_pretrained`."""
        return from_pretrained(directory, **overrides)

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

