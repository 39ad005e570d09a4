"""Weights into models and models into folders: ``load_checkpoint`` (any supported layout), ``save_pretrained``
(safetensors + the constructor's config as JSON) and ``from_pretrained``.

A checkpoint must fit the model it is loaded into: the same shapes (a position table stored for another input size
is resampled by the model's own ``adapt_state_dict``, a head for another class count is dropped), and, for a
``save_pretrained`` folder, the same constructor arguments (those that change outputs without changing shapes,
such as ``q_pool``, included). Anything else is an error that names what differs and what to create instead.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from .. import files, weights
from ..errors import CheckpointError
from ..weights.download import WEIGHT_FILES
from . import registry
from .convert import (CONFIG_NAME, WEIGHTS_NAME, read_safetensors, read_state_dict, to_hieralab_keys, to_mae_keys,
                      unwrap_state_dict)
from .features import FeatureMaps

log = logging.getLogger(__name__)

# Constructor arguments a checkpoint may have been saved with other values of: they change no weight (or one the
# loader adapts: the head, the position table) and no output of a given input in eval mode.
ADAPTABLE_ARGS = frozenset({"num_classes", "drop_path_rate", "head_dropout", "t2t_dropout", "head_init_scale",
                            "mask_ratio", "input_size", "img_size", "in_chans"})  # in_chans: adapt_input_conv


# ---------------------------------------------------------------- fitting a state dict to a model
def _guess_models(sd: Mapping[str, torch.Tensor]) -> list[str]:
    depth = len({k.split(".")[1] for k in sd if k.startswith("blocks.")})
    if "tokens_to_token.project.weight" in sd:  # T2T-ViT: width, depth and the T2T layer kind
        width = sd["tokens_to_token.project.weight"].shape[0]
        kind = "performer" if "tokens_to_token.attention1.w" in sd else "transformer"
        return [name for name in registry.list_models("t2t_vit_*")
                if (cfg := registry.model_config(name)).get("embed_dim") == width and cfg.get("depth") == depth
                and cfg.get("tokens_type") == kind]
    w = sd.get("patch_embed.proj.weight")
    if w is None:
        return []
    names = []
    for name in registry.list_models():
        if name.startswith("mae_"):  # an encoder checkpoint: name encoders
            continue
        cfg = registry.model_config(name)
        if ("window_spec" in cfg) != ("pos_embed_window" in sd):  # SAM 2's HieraDet (a window table) or Hiera
            continue
        if (cfg.get("embed_dim") == w.shape[0] and sum(cfg.get("stages", ())) == depth
                and len(cfg.get("input_size", (224, 224))) == w.dim() - 2):
            names.append(name)
    return names


def _head_prefix(model: nn.Module) -> str | None:
    """``"head.projection."`` / ``"head."``: the state-dict prefix of the classifier, None for a headless model."""
    name = model.classifier_name() if hasattr(model, "classifier_name") else None
    return f"{name}." if name else None


def adapt_state_dict(model: nn.Module, sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Fit a checkpoint (our keys) to ``model``: the model resamples position tables stored for another input size
    (``model.adapt_state_dict``), a head trained for another class count is dropped; anything else that does not
    fit is an error naming the right config."""
    own = model.state_dict()
    sd = model.adapt_state_dict(dict(sd)) if hasattr(model, "adapt_state_dict") else dict(sd)
    head = _head_prefix(model)
    for k in [k for k in sd if head and k.startswith(head) and (k not in own or sd[k].shape != own[k].shape)]:
        log.info("checkpoint: %s has %d classes, the model %s; keeping the model's new head", k, sd[k].shape[0],
                 own[k].shape[0] if k in own else 0)
        del sd[k]
    for k in [k for k in sd if k in own and _other_input_channels(sd[k], own[k])]:
        log.info("checkpoint: %s takes %d input channel(s), the model %d; adapting it (colours summed / grey spread)", k,
                 sd[k].shape[1], own[k].shape[1])
        sd[k] = _adapt_input_channels(sd[k], own[k].shape[1])
    wrong = [k for k in sd if k in own and sd[k].shape != own[k].shape]
    unknown = [k for k in sd if k not in own]
    if wrong or unknown:
        guesses = _guess_models(sd)
        hint = f"create {' or '.join(guesses)} instead" if guesses else "check the model name and its overrides"
        first = wrong[0] if wrong else unknown[0]
        detail = (f"{first}: checkpoint {tuple(sd[first].shape)} vs model {tuple(own[first].shape)}" if wrong
                  else f"unexpected key {first}")
        raise CheckpointError(f"checkpoint does not fit this model ({len(wrong)} shapes differ, {len(unknown)} "
                              f"unknown keys; {detail}); {hint}")
    return sd


def _adapt_input_channels(weight: torch.Tensor, channels: int) -> torch.Tensor:
    """A kernel for ``channels`` input channels from one for the other count: RGB to grey sums over the colours
    (timm's ``adapt_input_conv``); grey to RGB spreads the grey kernel over the three (a grey image repeated over
    the channels then gives the grey model's output)."""
    if channels == 1:
        return weight.sum(1, keepdim=True)  # as timm's adapt_input_conv, for 2-D and 3-D (video) kernels alike
    return weight.repeat(1, channels, *([1] * (weight.dim() - 2))) / channels


def _other_input_channels(theirs: torch.Tensor, mine: torch.Tensor) -> bool:
    """Whether a checkpoint's convolution kernel is the model's for another number of image channels (1 <-> 3):
    a patch embedding of a grey encoder loaded into an RGB one, or the reverse."""
    return (theirs.dim() in (4, 5) and theirs.shape != mine.shape and theirs.shape[0] == mine.shape[0]
            and theirs.shape[2:] == mine.shape[2:] and {theirs.shape[1], mine.shape[1]} == {1, 3})


def effective_config(model: nn.Module) -> dict[str, Any]:
    """Every constructor argument in effect, defaults included (an MAE: its encoder's arguments under its own)."""
    if getattr(model, "is_mae", False):
        return {**{k: v for k, v in model.encoder.config.items() if k != "num_classes"}, **model.config}
    return dict(model.config)


def config_differences(model: nn.Module, saved_name: str | None, saved: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """``{argument: (saved, model's)}`` for the constructor arguments a ``save_pretrained`` folder was written with
    that differ from ``model``'s and are not adaptable (:data:`ADAPTABLE_ARGS`)."""
    theirs = dict(saved)
    if saved_name is not None:
        try:  # the saved model's arguments with its defaults, built on the meta device (no weights allocated)
            with torch.device("meta"):
                theirs = effective_config(registry.build(saved_name, **saved))
        except Exception:  # a model this version cannot build: compare what was saved
            pass
    own = effective_config(model)
    return {k: (v, own[k]) for k, v in theirs.items() if k not in ADAPTABLE_ARGS and k in own and own[k] != v}


def _check_saved_config(model: nn.Module, folder: Path) -> None:
    """A ``save_pretrained`` folder loads only into a model built with the same arguments (the adaptable ones
    aside); an MAE's folder loads into its encoder's class, compared on the encoder's architecture."""
    meta = read_config(folder)
    name, saved = meta.get("model_name"), meta.get("config", {})
    if name in registry.list_models(dense=True):
        cls = registry.model_class(name)
        encoder_cls = getattr(cls, "encoder_class", None)
        if encoder_cls is not None and isinstance(model, encoder_cls) and not getattr(model, "is_mae", False):
            with torch.device("meta"):  # the MAE's encoder, on the meta device: its arguments with defaults
                encoder = registry.build(name, **saved).encoder
            skip = set(getattr(cls, "PRETRAINING_ONLY", ()))
            diff = {k: (v, model.config[k]) for k, v in encoder.config.items()
                    if k not in skip | ADAPTABLE_ARGS and k in model.config and model.config[k] != v}
            _raise_if_different(diff, folder)
            return
        if not isinstance(model, cls):
            if getattr(model, "takes_weights_of", lambda _: False)(cls):  # HieraDet from a Hiera: its own conversion
                return  # checks the widths and depth (hieradet.checkpoint_filter_fn)
            raise CheckpointError(f"checkpoint does not fit this model: {folder} holds {name} (a {cls.__name__}), "
                                  f"this is a {type(model).__name__}; create {name} instead, or load it with "
                                  f"hieralab.from_pretrained('{folder}')")
    _raise_if_different(config_differences(model, name, saved), folder)


def _raise_if_different(diff: dict[str, tuple[Any, Any]], folder: Path) -> None:
    if diff:
        saved = ", ".join(f"{k}={a!r}" for k, (a, _) in diff.items())
        mine = ", ".join(f"{k}={b!r}" for k, (_, b) in diff.items())
        raise CheckpointError(f"{folder} was saved with {saved} (this model: {mine}); create the model with those "
                              f"arguments, or load the folder with hieralab.from_pretrained('{folder}')")


def load_checkpoint(model: nn.Module, path_or_state: str | os.PathLike | Mapping[str, Any]) -> list[str]:
    """Load weights in any supported layout into ``model``: a file, a ``save_pretrained`` folder, a state dict or a
    loaded training checkpoint (``{"model_state": ...}`` and the like). Returns the model keys the checkpoint did
    not have (e.g. ``head`` for an MAE encoder checkpoint)."""
    if isinstance(path_or_state, Mapping):
        sd = unwrap_state_dict(path_or_state, "the state dict given")
    else:
        folder = Path(path_or_state).expanduser()
        other = _other_layout(folder) if folder.is_dir() else None
        if other is not None:  # timm's / transformers' save_pretrained: their weights file, keys converted below
            folder = other[2]
        elif folder.is_dir() and (folder / CONFIG_NAME).exists():
            _check_saved_config(model, folder)
        sd = read_state_dict(folder)
    if getattr(model, "is_mae", False):
        own_filter = getattr(model, "convert_checkpoint", None)  # a family's own MAE layout (MAE-ST's video ViT)
        sd = own_filter(sd)[1] if own_filter is not None else to_mae_keys(sd)
        missing = [k for k in model.state_dict() if k not in sd]
        unknown = [k for k in sd if k not in model.state_dict()]
        if missing or unknown:
            raise CheckpointError(f"checkpoint does not fit this MAE model ({len(missing)} tensors missing, e.g. "
                                  f"{(missing or unknown)[0]}); check the model name")
        model.load_state_dict(sd)
        return []
    own_filter = getattr(model, "convert_checkpoint", None)  # a family's key conversion beside its model (HieraDet)
    kind, sd = own_filter(sd) if own_filter is not None else to_hieralab_keys(sd)
    sd = adapt_state_dict(model, sd)
    result = model.load_state_dict(sd, strict=False)
    if result.missing_keys:
        log.info("checkpoint (%s layout): %d model tensors not in it, left initialised: %s", kind,
                 len(result.missing_keys), ", ".join(result.missing_keys[:6]))
    return list(result.missing_keys)


# ---------------------------------------------------------------- our own format
def save_pretrained(model: nn.Module, directory: str | os.PathLike, *,
                    extra: Mapping[str, Any] | None = None) -> Path:
    """Write ``model.safetensors``, the ``extra`` JSON files (``{"classifier.json": {...}}``) and ``config.json``
    (the registered name, the constructor's arguments, the class), each atomically; ``config.json`` goes last, so
    a folder with one is complete."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = {"model_name": getattr(model, "model_name", None), "config": model.config,
              "architecture": type(model).__name__}
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    files.atomic_write(directory / WEIGHTS_NAME, lambda p: save_file(tensors, p, metadata={"format": "pt"}))
    for name, data in (extra or {}).items():
        files.write_json(directory / name, data)
    files.write_json(directory / CONFIG_NAME, config)
    return directory


def read_config(directory: str | os.PathLike) -> dict[str, Any]:
    """The ``config.json`` of a ``save_pretrained`` folder; a one-line error for anything else."""
    directory = Path(directory).expanduser()
    path = directory / CONFIG_NAME
    if not path.exists():
        inside = sorted(p.name + "/" for p in directory.iterdir() if (p / CONFIG_NAME).exists()) \
            if directory.is_dir() else []
        hint = (f"; it holds the save_pretrained folders {', '.join(inside)}: pass one of those" if inside
                else "; it was not written by save_pretrained")
        raise FileNotFoundError(f"{directory} has no {CONFIG_NAME}{hint}")
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is not valid JSON ({e})") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("config"), dict):
        raise CheckpointError(f"{path} is not a save_pretrained config (no 'config' mapping)")
    return meta


def from_pretrained(directory: str | os.PathLike, *, expect: type | None = None, features_only: bool = False,
                    out_indices: int | Sequence[int] | None = None, **overrides: Any) -> nn.Module:
    """Rebuild a model saved by :func:`save_pretrained` and load its weights; with ``expect`` (the class
    ``from_pretrained`` was called on) a folder holding another kind of model is an error. ``"hf-hub:ORG/REPO"``
    takes a hub repo in that layout, timm's or transformers' (:func:`_from_hub`), and so does a local folder that
    timm's or transformers' ``save_pretrained`` wrote. ``features_only`` returns the feature interface
    (:class:`~hieralab.models.features.FeatureMaps`, the maps at ``out_indices``), as ``create_model`` does."""
    if features_only:
        return FeatureMaps(from_pretrained(directory, expect=expect, **overrides), out_indices)
    if str(directory).startswith(weights.HUB_PREFIX):
        return _from_hub(str(directory), expect=expect, **overrides)
    directory = Path(directory).expanduser()
    other = _other_layout(directory)
    if other is not None:  # timm's or transformers' save_pretrained: built as from their hub repo
        return _from_layout(str(directory), *other, expect=expect, **overrides)
    meta = read_config(directory)
    name = meta.get("model_name")
    if name is None:
        raise CheckpointError(f"{directory / CONFIG_NAME} names no registered model")
    cls = registry.model_class(name)
    if expect is not None and not (isinstance(cls, type) and issubclass(cls, expect)):
        raise CheckpointError(f"{directory} holds a {meta.get('architecture') or cls.__name__} ({name}), not a "
                              f"{expect.__name__}; load it with hieralab.from_pretrained or "
                              f"{meta.get('architecture')}.from_pretrained")
    model = registry.build(name, **{**meta["config"], **overrides})
    sd = adapt_state_dict(model, read_safetensors(directory / WEIGHTS_NAME))
    result = model.load_state_dict(sd, strict=False)
    head = _head_prefix(model)
    missing = [k for k in result.missing_keys if not ("num_classes" in overrides and head and k.startswith(head))]
    if missing:
        raise CheckpointError(f"{directory / WEIGHTS_NAME} lacks {', '.join(missing[:4])}"
                              f"{' ...' if len(missing) > 4 else ''} of {name}; it was saved from another "
                              f"architecture. Load it with hieralab.create_model('{name}', checkpoint=...) to start "
                              "the missing tensors fresh")
    return model


def _from_hub(spec: str, *, expect: type | None = None, **overrides: Any) -> nn.Module:
    """A hub repo (fetched once into the Hugging Face cache): ours is rebuilt as :func:`save_pretrained` wrote it;
    timm's builds the registered model its ``config.json`` names (with its class count), transformers' the registered
    image Hiera of the same shape; then the weights file is loaded."""
    repo = weights.hub_repo(spec)
    if repo.kind == "hieralab":
        return from_pretrained(repo.folder, expect=expect, **overrides)
    return _from_layout(spec, repo.kind, repo.config, repo.weights, expect=expect, **overrides)


def _other_layout(directory: Path) -> tuple[str, dict[str, Any], Path] | None:
    """``(kind, config, weights file)`` of a folder that timm's (``"timm"``: its config.json names an
    ``architecture``) or transformers' (``"transformers"``: ``model_type`` ``"hiera"``) ``save_pretrained`` wrote;
    ``None`` for ours, or a folder without a readable config (:func:`read_config` says what is wrong). Another
    transformers model is a one-line error naming what to pass instead."""
    path = directory / CONFIG_NAME
    try:
        config = json.loads(path.read_text()) if path.is_file() else None
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    if not isinstance(config, dict) or isinstance(config.get("config"), dict):
        return None
    if "architecture" in config:
        kind = "timm"
    elif config.get("model_type") == "hiera":
        kind = "transformers"
    elif "model_type" in config or "architectures" in config:
        raise CheckpointError(f"{path} is a transformers {config.get('model_type') or '?'} "
                              f"({', '.join(config.get('architectures') or []) or 'no architectures'}), not a Hiera: "
                              f"build the matching registered model and load the weights into it, e.g. "
                              f"hieralab.create_model(NAME, checkpoint='{directory / WEIGHT_FILES[0]}') "
                              f"(hieralab.list_models())")
    else:
        return None
    found = [directory / f for f in WEIGHT_FILES if (directory / f).is_file()]
    if not found:
        raise CheckpointError(f"{directory} has a {kind} {CONFIG_NAME} but no {' or '.join(WEIGHT_FILES)}; a sharded "
                              f"save (model.safetensors.index.json) is not read: save it again in one file")
    return kind, config, found[0]


def _from_layout(spec: str, kind: str, config: dict[str, Any], weights_file: Path, *, expect: type | None = None,
                 **overrides: Any) -> nn.Module:
    """The registered model a timm or transformers ``config.json`` describes, with ``weights_file`` loaded."""
    if kind == "timm":
        name, args = config["architecture"], {k: v for k, v in config.items() if k == "num_classes"}
    else:
        try:
            args = weights.transformers_arguments(config)
        except CheckpointError as e:
            raise CheckpointError(f"{spec}: {e}") from None
        shape = {k: args.pop(k) for k in ("embed_dim", "num_heads", "stages", "input_size")}
        name = next((n for n in registry.list_models("hiera_*") if {
            "embed_dim": (c := registry.model_config(n)).get("embed_dim"), "num_heads": c.get("num_heads"),
            "stages": tuple(c.get("stages", ())), "input_size": tuple(c.get("input_size", (224, 224)))} == shape),
            f"a Hiera with {shape}")
    if name not in registry.list_models(dense=True):
        raise CheckpointError(f"{spec} holds {kind}'s {name}, which is not a registered hieralab model: build the "
                              f"closest one and load the weights into it, hieralab.create_model(NAME, "
                              f"checkpoint='{weights_file}', ...) (hieralab.list_models())")
    model = registry.build(name, **{**args, **overrides})
    if expect is not None and not isinstance(model, expect):
        raise CheckpointError(f"{spec} holds a {type(model).__name__} ({name}), not a {expect.__name__}")
    try:
        load_checkpoint(model, weights_file)
    except CheckpointError as e:
        raise CheckpointError(f"{spec}: {e}") from None
    return model
