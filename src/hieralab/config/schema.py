"""Dataclass schemas of a run and the YAML + ``key=value`` layering on top of them."""

from __future__ import annotations

import dataclasses
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

PRESETS = Path(__file__).parent / "presets"


@dataclass
class DataConfig:
    source: str = "fashion-mnist"  # "fashion-mnist" (the Debian package) or a folder of images / class subfolders
    split: str = "train"  # for fashion-mnist: "train" (60,000) or "test" (10,000)
    img_size: int = 32
    crop_scale: tuple[float, float] = (0.2, 1.0)  # RandomResizedCrop scale, as MAE
    hflip: bool = True
    mean: tuple[float, ...] | None = None  # None: the dataset's own statistics (ImageNet's for folders)
    std: tuple[float, ...] | None = None
    limit: int | None = None  # use only the first N images (quick runs, tests)
    num_workers: int = 2
    num_frames: int | None = None  # video: frames per clip (None: the model's, 16 for the Kinetics models)
    frame_stride: int = 4  # video: take every n-th frame (Kinetics 16 x 4)
    repeat_aug: int = 1  # video: clips cut from each decoded video (MAE-ST's repeated augmentation, 4 for K400 MAE);
    #                      a step then holds batch_size x repeat_aug clips, and the lr scales with that


@dataclass
class OptimConfig:
    batch_size: int = 64  # per process and micro-batch; the effective batch is batch_size * accum_steps * world
    accum_steps: int = 1
    base_lr: float = 1.5e-4  # lr = base_lr * effective batch / 256 (MAE's rule)
    min_lr: float = 0.0
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.95)
    warmup_epochs: float = 1.0
    clip_grad: float | None = None


@dataclass
class PretrainConfig:
    model: str = "mae_hiera_mini_32"
    model_args: dict[str, Any] = field(default_factory=dict)  # constructor overrides on top of the registered config
    mask_ratio: float | None = None  # None: the model's default (0.6 images, 0.9 video for Hiera; 0.75 for ViT)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    epochs: float = 1.0
    max_steps: int | None = None  # stop early (the schedule still spans `epochs`)
    seed: int = 0
    out_dir: str = "runs/pretrain"
    ckpt_every: int = 200  # optimizer steps between checkpoints (and one at the end)
    keep_last: int = 2
    log_every: int = 10
    amp: str = "auto"  # "auto" (bf16 on CUDA, off on CPU), "bf16" or "off"
    compile: bool = False
    device: str = "auto"
    recon_images: int = 8  # reconstructions written at the end of the run (0: none)


@dataclass
class AugConfig:
    """Fine-tuning augmentation, the MAE / Hiera recipe through timm (``create_transform``, ``Mixup``)."""

    # timm's auto_augment string (None: off). MAE's "rand-m9-mstd0.5-inc1", with the magnitude capped at 9: at 10,
    # timm's increasing posterize asks Pillow (>= 10) for 0 bits, which it now refuses
    randaug: str | None = "rand-m9-mstd0.5-inc1-mmax9"
    reprob: float = 0.25  # random erasing probability
    mixup: float = 0.8  # mixup alpha (0: off)
    cutmix: float = 1.0  # cutmix alpha (0: off)
    smoothing: float = 0.1  # label smoothing
    crop_scale: tuple[float, float] = (0.08, 1.0)  # RandomResizedCrop scale
    hflip: float = 0.5


def _finetune_optim() -> OptimConfig:
    return OptimConfig(batch_size=64, base_lr=1e-3, betas=(0.9, 0.999), warmup_epochs=1.0, min_lr=1e-6)


@dataclass
class FinetuneConfig:
    model: str = "hiera_mini_32"  # an encoder name (hieralab list); the head is sized to the dataset's classes
    model_args: dict[str, Any] = field(default_factory=dict)
    init: str | None = None  # start from: a pretrain run folder (its encoder/), a save_pretrained folder, or an
    #                          official / timm / T2T-ViT checkpoint file; None: from scratch
    data: DataConfig = field(default_factory=DataConfig)
    val_source: str | None = None  # labelled folder for validation; None: fashion-mnist's test split, or for a
    #                                folder, `val_fraction` of it held out (the same images every run)
    val_fraction: float = 0.1
    aug: AugConfig = field(default_factory=AugConfig)
    optim: OptimConfig = field(default_factory=_finetune_optim)
    layer_decay: float = 0.75  # layer-wise lr decay (1: off)
    drop_path: float = 0.1
    trainable_blocks: int | None = None  # partial fine-tuning: train only the last k blocks, the final norm and head
    ema_decay: float | None = None  # keep an EMA of the weights (e.g. 0.9999); evaluated and saved beside the model
    epochs: float = 10.0
    max_steps: int | None = None
    eval_every: int | None = None  # steps between evaluations; None: once per epoch (and always at the end)
    seed: int = 0
    out_dir: str = "runs/finetune"
    ckpt_every: int = 500
    keep_last: int = 2
    log_every: int = 10
    amp: str = "auto"
    compile: bool = False
    device: str = "auto"


@dataclass
class LinprobeConfig:
    model: str = "hiera_mini_32"  # the encoder
    model_args: dict[str, Any] = field(default_factory=dict)
    init: str | None = None  # its weights (as finetune's init); None: random init, the baseline
    data: DataConfig = field(default_factory=DataConfig)
    val_source: str | None = None
    val_fraction: float = 0.1
    lrs: tuple[float, ...] = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0)  # SGD lrs at batch 256; one head each, one pass
    epochs: int = 30
    batch_size: int = 256
    weight_decay: float = 0.0
    seed: int = 0
    out_dir: str = "runs/linprobe"
    device: str = "auto"


def _convert(tp: Any, value: Any, where: str) -> Any:
    """Coerce a YAML value to the annotated type, with an error that names the key."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ValueError(f"{where} must be a mapping, got {value!r}")
        return from_dict(tp, value, where + ".")
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        return _convert(next(a for a in args if a is not type(None)), value, where)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{where} must be a list, got {value!r}")
        inner = typing.get_args(tp)[0]
        return tuple(_convert(inner, v, where) for v in value)
    if origin is dict:
        if not isinstance(value, dict):
            raise ValueError(f"{where} must be a mapping, got {value!r}")
        return dict(value)
    if tp is float and not isinstance(value, bool):
        try:  # also "1e-3", which YAML 1.1 reads as a string
            return float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{where} must be float, got {value!r}") from None
    if tp in (int, str, bool) and not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
        raise ValueError(f"{where} must be {tp.__name__}, got {value!r}")
    return value


def from_dict(cls: type, data: dict[str, Any], prefix: str = "", base: Any = None) -> Any:
    """Build dataclass ``cls`` from a nested dict, over ``base`` (an instance) when given; unknown keys are an error
    that lists the known ones. A section given in part keeps the rest of its field's own default, e.g.
    ``optim.batch_size=128`` leaves the fine-tuning optimiser's lr at its fine-tuning default, not OptimConfig's."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"unknown config key {prefix}{unknown[0]}; known: {', '.join(sorted(fields))}")
    values = {}
    for k, v in data.items():
        if dataclasses.is_dataclass(hints[k]) and isinstance(v, dict):
            default = getattr(base, k) if base is not None else _field_default(fields[k])
            values[k] = from_dict(hints[k], v, prefix + k + ".", default)
        else:
            values[k] = _convert(hints[k], v, prefix + k)
    return dataclasses.replace(base, **values) if base is not None else cls(**values)


def _field_default(f: dataclasses.Field) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None if f.default is dataclasses.MISSING else f.default


def to_dict(cfg: Any) -> dict[str, Any]:
    """A dataclass as plain YAML-able data (tuples become lists)."""
    def plain(v: Any) -> Any:
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v
    return plain(dataclasses.asdict(cfg))


_EXPONENT_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _parse_value(raw: str) -> Any:
    """A ``key=value`` value as YAML, except that ``1e-6`` is a float (YAML 1.1 reads it as a string)."""
    if raw == "":
        return None
    value = yaml.safe_load(raw)
    return float(value) if isinstance(value, str) and _EXPONENT_FLOAT.fullmatch(value) else value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """``["optim.base_lr=1e-3", "data.source=/imgs"]`` onto a nested dict; values are parsed as YAML."""
    data = yaml.safe_load(yaml.safe_dump(data))  # a deep copy
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ValueError(f"override {item!r} is not key=value (e.g. optim.base_lr=1e-3)")
        node = data
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ValueError(f"override {item!r}: {p} is not a section")
        node[leaf] = _parse_value(raw)
    return data


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESETS.glob("*.yaml"))


def load_config(cls: type, preset: str | None, overrides: list[str]) -> Any:
    """Defaults <- preset (a name from :func:`preset_names` or a YAML path) <- overrides."""
    data: dict[str, Any] = {}
    if preset:
        path = Path(preset) if preset.endswith((".yaml", ".yml")) else PRESETS / f"{preset}.yaml"
        if not path.exists():
            raise ValueError(f"no preset {preset!r}: use one of {', '.join(preset_names())} or a .yaml path")
        data = yaml.safe_load(path.read_text()) or {}
    return from_dict(cls, apply_overrides(data, overrides))
