"""Dataclass schemas of a run and the YAML + ``key=value`` layering on top of them.

Each field carries its own rule (:func:`setting`): what values it allows, and whether changing it alters a run's
trajectory (the ``--resume`` check). :func:`load_config` checks every value before anything is built and reports
every problem, one line each, naming the key and what is allowed.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
import re
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError

log = logging.getLogger(__name__)
PRESETS = Path(__file__).parent / "presets"
Check = Callable[[Any], "str | None"]  # a value -> what is wrong with it, or None


# ---------------------------------------------------------------- rules
def setting(default: Any = dataclasses.MISSING, *, factory: Callable[[], Any] | None = None, check: Check | None = None,
            trajectory: bool = True) -> Any:
    """A config field with its rule. ``trajectory=False`` marks keys that change how a run is watched or stored,
    not what it computes (``log_every``, ``num_workers``, ...): ``--resume`` accepts changes to those silently."""
    meta = {"check": check, "trajectory": trajectory}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def at_least(low: float) -> Check:
    return lambda v: None if _number(v) and math.isfinite(v) and v >= low else f"must be at least {low:g}"


def above(low: float) -> Check:
    return lambda v: None if _number(v) and math.isfinite(v) and v > low else f"must be a finite number above {low:g}"


def between(low: float, high: float, *, low_open: bool = False, high_open: bool = False) -> Check:
    def check(v: Any) -> str | None:
        ok = _number(v) and (low < v if low_open else low <= v) and (v < high if high_open else v <= high)
        return None if ok else f"must be in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    return check


def one_of(*choices: Any) -> Check:
    return lambda v: None if v in choices else "must be one of " + ", ".join(repr(c) for c in choices)


def optional(check: Check) -> Check:
    return lambda v: None if v is None else check(v)


def each(check: Check, *, non_empty: bool = True) -> Check:
    def check_all(v: Any) -> str | None:
        if non_empty and not v:
            return "must list at least one value"
        problems = [p for x in v if (p := check(x))]
        return f"every value {problems[0]}" if problems else None
    return check_all


def scale_range(v: Any) -> str | None:
    ok = len(v) == 2 and all(_number(x) for x in v) and 0 < v[0] <= v[1] <= 1
    return None if ok else "must be [low, high] with 0 < low <= high <= 1 (fractions of the image area)"


def device_name(v: Any) -> str | None:
    ok = isinstance(v, str) and re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", v)
    return None if ok else "must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'"


def non_empty(v: Any) -> str | None:
    return None if isinstance(v, str) and v.strip() else "must not be empty"


def channel_stats(v: Any) -> str | None:
    return None if v is None or (len(v) in (1, 3) and all(_number(x) for x in v)) else "must list 1 or 3 numbers"


def positive_stats(v: Any) -> str | None:
    return channel_stats(v) or (None if v is None or all(x > 0 for x in v) else "must be positive")


# ---------------------------------------------------------------- sections
@dataclass
class DataConfig:
    source: str = setting("fashion-mnist", check=non_empty)  # "fashion-mnist" (the Debian package), a folder of
    #                      images / class subfolders, of clips / a clip list, or WebDataset tar shards written by
    #                      hieralab shards ('dir/shard-{000000..000099}.tar')
    split: str = setting("train", check=one_of("train", "test"))  # fashion-mnist: "train" (60,000) / "test" (10,000)
    img_size: int = setting(32, check=at_least(1))
    crop_scale: tuple[float, float] = setting((0.2, 1.0), check=scale_range)  # RandomResizedCrop scale, as MAE
    hflip: bool = True
    mean: tuple[float, ...] | None = setting(None, check=channel_stats)  # None: the dataset's own statistics
    std: tuple[float, ...] | None = setting(None, check=positive_stats)
    limit: int | None = setting(None, check=optional(at_least(1)))  # use only the first N images (quick runs)
    num_workers: int = setting(2, check=at_least(0), trajectory=False)
    num_frames: int | None = setting(None, check=optional(at_least(1)))  # video: frames per clip (None: the model's)
    frame_stride: int = setting(4, check=at_least(1))  # video: take every n-th frame (Kinetics 16 x 4)
    repeat_aug: int = setting(1, check=at_least(1))  # video: clips cut from each decoded video (MAE-ST's repeated
    #                      augmentation, 4 for K400 MAE); a step then holds batch_size x repeat_aug clips, lr scales
    video_decoder: str = setting("auto", check=one_of("auto", "torchcodec", "pyav"), trajectory=False)  # "auto":
    #                      torchcodec when it loads (FFmpeg from Debian's ffmpeg package), else PyAV; the same frames
    shuffle_buffer: int = setting(1000, check=at_least(1))  # tar shards (source 'dir/shard-{000000..000099}.tar'):
    #                      samples each loader worker shuffles among, after the shards' own order is shuffled


@dataclass
class OptimConfig:
    batch_size: int = setting(64, check=at_least(1))  # per process and micro-batch; the effective batch is
    #                                                   batch_size * accum_steps * world
    accum_steps: int = setting(1, check=at_least(1))
    base_lr: float = setting(1.5e-4, check=at_least(0))  # lr = base_lr * effective batch / 256 (MAE's rule)
    min_lr: float = setting(0.0, check=at_least(0))
    weight_decay: float = setting(0.05, check=at_least(0))
    betas: tuple[float, float] = setting((0.9, 0.95), check=each(between(0, 1, high_open=True)))
    warmup_epochs: float = setting(1.0, check=at_least(0))
    clip_grad: float | None = setting(None, check=optional(above(0)))


@dataclass
class RunConfig:
    """What every trainable task shares: where the run lives, how long it is, how it is seeded, saved and logged.
    A task's config extends it; a task that wants another default re-declares the field with :meth:`default`."""

    out_dir: str = setting("runs/run", check=non_empty, trajectory=False)
    epochs: float = setting(1.0, check=above(0))
    max_steps: int | None = setting(None, check=optional(at_least(1)), trajectory=False)  # stop early (the schedule
    #                                                                                       still spans `epochs`)
    seed: int = setting(0, check=at_least(0))
    ckpt_every: int = setting(200, check=at_least(1), trajectory=False)  # steps between checkpoints (and at the end)
    keep_last: int = setting(2, check=at_least(0), trajectory=False)  # checkpoints kept (0: all)
    log_every: int = setting(10, check=at_least(1), trajectory=False)
    precision: str = setting("auto", check=one_of("auto", "fp32", "bf16"))  # the compute dtype of the forward and
    #                      backward (weights, optimizer state and the loss stay fp32): "auto" is bf16 on CUDA, fp32 on
    #                      CPU; "bf16" on a CPU without native bf16 falls back to fp32 with a log line
    compile: bool = setting(False, trajectory=False)
    grad_checkpointing: bool = setting(False, trajectory=False)  # recompute each block's activations in the backward
    #                      pass instead of keeping them: less memory, about one more forward; the same numbers
    parallel: str = setting("ddp", check=one_of("ddp", "fsdp"), trajectory=False)  # under torchrun: DDP (a full copy
    #                      per process) or FSDP2's fully_shard (weights, gradients and AdamW moments sharded per block)
    device: str = setting("auto", check=device_name, trajectory=False)

    @classmethod
    def default(cls, name: str, value: Any) -> Any:
        """Field ``name`` of this class with another default and the same rule."""
        meta = cls.__dataclass_fields__[name].metadata
        return setting(value, check=meta["check"], trajectory=meta["trajectory"])


RUN_FIELDS = frozenset(f.name for f in dataclasses.fields(RunConfig))

# keys of earlier versions' run configs: old key -> (new key, old value -> new value). A config.yaml, preset or
# override that uses the old key still loads (one log line); a run folder written with it still resumes.
RENAMED: dict[str, tuple[str, dict[Any, Any]]] = {
    # amp=auto|bf16|off until 2026-12 (YAML reads a bare off as False)
    "amp": ("precision", {"auto": "auto", "bf16": "bf16", "off": "fp32", False: "fp32"}),
}


def upgrade_keys(data: dict[str, Any], *, quiet: bool = False) -> tuple[dict[str, Any], list[str]]:
    """``data`` (a run config as a dict) with the keys of :data:`RENAMED` under their new names, and the problems
    (an old key beside its new one, or an old value with no new meaning). Logs one line per key renamed."""
    data, problems = dict(data), []
    for old, (new, values) in RENAMED.items():
        if old not in data:
            continue
        value = data.pop(old)
        if new in data:
            problems.append(f"{old}={value!r}: {old} is the earlier name of {new}, which is also given; keep {new}")
        elif not isinstance(value, (str, bool)) or value not in values:
            problems.append(f"{old}={value!r}: {old} is the earlier name of {new}; write {new}=" +
                            "|".join(dict.fromkeys(values.values())))
        else:
            data[new] = values[value]
            if not quiet:
                log.info("config key %s=%s is read as %s=%s (its current name)", old, value, new,
                         values[value])
    return data, problems


@dataclass
class PretrainConfig(RunConfig):
    model: str = setting("mae_hiera_mini_32", check=non_empty)
    model_args: dict[str, Any] = setting(factory=dict)  # constructor overrides on top of the registered config
    mask_ratio: float | None = setting(None, check=optional(between(0, 1, low_open=True, high_open=True)))  # None:
    #                          the model's (0.6 images, 0.9 video for Hiera; 0.75 for ViT)
    data: DataConfig = setting(factory=DataConfig)
    optim: OptimConfig = setting(factory=OptimConfig)
    recon_images: int = setting(8, check=at_least(0), trajectory=False)  # reconstructions at the end (0: none)
    knn_every: int | None = setting(None, check=optional(at_least(0)), trajectory=False)  # steps between online
    #                      k-NN probes of the encoder on labelled data (None: 4 over the run, and one at the start;
    #                      0: off); knn_top1 goes to log.csv, TensorBoard and the loss curve's lower panel
    knn_bank: int = setting(1000, check=at_least(2), trajectory=False)  # labelled training images it votes with
    knn_queries: int = setting(500, check=at_least(1), trajectory=False)  # images it classifies (Fashion-MNIST:
    #                      from the test split; a folder: other training images)
    knn_k: int = setting(20, check=at_least(1), trajectory=False)
    out_dir: str = RunConfig.default("out_dir", "runs/pretrain")


@dataclass
class AugConfig:
    """Fine-tuning augmentation, the MAE / Hiera recipe through timm (``create_transform``, ``Mixup``)."""

    # timm's auto_augment string (None: off). MAE's "rand-m9-mstd0.5-inc1", with the magnitude capped at 9: at 10,
    # timm's increasing posterize asks Pillow (>= 10) for 0 bits, which it now refuses
    randaug: str | None = "rand-m9-mstd0.5-inc1-mmax9"
    reprob: float = setting(0.25, check=between(0, 1))  # random erasing probability
    mixup: float = setting(0.8, check=at_least(0))  # mixup alpha (0: off)
    cutmix: float = setting(1.0, check=at_least(0))  # cutmix alpha (0: off)
    smoothing: float = setting(0.1, check=between(0, 1, high_open=True))  # label smoothing
    crop_scale: tuple[float, float] = setting((0.08, 1.0), check=scale_range)  # RandomResizedCrop scale
    hflip: float = setting(0.5, check=between(0, 1))


def _finetune_optim() -> OptimConfig:
    return OptimConfig(batch_size=64, base_lr=1e-3, betas=(0.9, 0.999), warmup_epochs=1.0, min_lr=1e-6)


@dataclass
class FinetuneConfig(RunConfig):
    model: str = setting("hiera_mini_32", check=non_empty)  # an encoder name (hieralab list); the head is sized to
    #                                                         the dataset's classes
    model_args: dict[str, Any] = setting(factory=dict)
    init: str | None = None  # start from: a pretrain run folder (its encoder/), a save_pretrained folder, or an
    #                          official / timm / T2T-ViT checkpoint file; None: from scratch
    data: DataConfig = setting(factory=DataConfig)
    val_source: str | None = None  # labelled folder for validation; None: fashion-mnist's test split, or for a
    #                                folder, `val_fraction` of it held out (the same images every run)
    val_fraction: float = setting(0.1, check=between(0, 1, low_open=True, high_open=True))
    aug: AugConfig = setting(factory=AugConfig)
    optim: OptimConfig = setting(factory=_finetune_optim)
    layer_decay: float = setting(0.75, check=between(0, 1, low_open=True))  # layer-wise lr decay (1: off)
    drop_path: float = setting(0.1, check=between(0, 1, high_open=True))
    trainable_blocks: int | None = setting(None, check=optional(at_least(0)))  # partial fine-tuning: the last k
    #                                                         blocks, the final norm and the head train
    ema_decay: float | None = setting(None, check=optional(between(0, 1, low_open=True, high_open=True)))  # an EMA of
    #                                                         the weights (e.g. 0.9999), evaluated and saved beside
    eval_every: int | None = setting(None, check=optional(at_least(1)), trajectory=False)  # steps between
    #                                                         evaluations; None: once per epoch (and at the end)
    out_dir: str = RunConfig.default("out_dir", "runs/finetune")
    epochs: float = RunConfig.default("epochs", 10.0)
    ckpt_every: int = RunConfig.default("ckpt_every", 500)


@dataclass
class LinprobeConfig(RunConfig):
    model: str = setting("hiera_mini_32", check=non_empty)  # the encoder, or "pixels" (a probe on raw pixels)
    model_args: dict[str, Any] = setting(factory=dict)
    init: str | None = None  # its weights (as finetune's init); None: random init, the baseline
    data: DataConfig = setting(factory=DataConfig)
    val_source: str | None = None
    val_fraction: float = setting(0.1, check=between(0, 1, low_open=True, high_open=True))
    lrs: tuple[float, ...] = setting((0.01, 0.03, 0.1, 0.3, 1.0, 3.0), check=each(above(0)))  # SGD lrs at batch 256,
    #                                                                              one head each, trained together
    batch_size: int = setting(256, check=at_least(1))
    weight_decay: float = setting(0.0, check=at_least(0))
    out_dir: str = RunConfig.default("out_dir", "runs/linprobe")
    epochs: float = RunConfig.default("epochs", 30.0)


@dataclass
class DenseDataConfig:
    """Where dense data is: COCO JSON + images (detection), image + mask-PNG folders (semantic segmentation).
    ``"scenes"`` (the default) is the Fashion-MNIST scenes, written once to ``scenes_root``."""

    train_ann: str = setting("scenes", check=non_empty)  # a COCO instances .json (detect)
    train_images: str | None = None  # the images of train_ann (default: the scenes')
    val_ann: str = setting("scenes", check=non_empty)
    val_images: str | None = None
    train_masks: str | None = None  # segment: mask PNGs named as the train_images (default: the scenes')
    val_masks: str | None = None
    classes: tuple[str, ...] | None = None  # segment: class names by index (default: the scenes' 11)
    reduce_zero_label: bool = False  # segment: ADE20K's masks, where 0 is "other" (ignored)
    scenes_root: str = setting("runs/fashion-mnist-scenes", check=non_empty)
    scenes_train: int = setting(2000, check=at_least(1))  # scenes written for training / validation
    scenes_val: int = setting(300, check=at_least(1))
    img_size: int = setting(160, check=at_least(8))  # the side of the training crops
    scale_range: tuple[float, float] = setting((0.5, 1.5), check=each(above(0)))  # scale jitter of training
    hflip: bool = True
    limit: int | None = setting(None, check=optional(at_least(1)))  # the first N images of each split
    num_workers: int = setting(2, check=at_least(0), trajectory=False)


def _dense_optim() -> OptimConfig:
    """ViTDet's recipe (AdamW, betas 0.9 / 0.999, weight decay 0.1, a short warmup) at the lr a short CPU schedule
    needs: 2e-4 at batch 4 (ViTDet trains 100 epochs at 1e-4 for batch 64); on the scenes, 250 steps from random
    init reach box AP 7.7 with it."""
    return OptimConfig(batch_size=4, base_lr=1.28e-2, betas=(0.9, 0.999), weight_decay=0.1, warmup_epochs=0.05,
                       min_lr=1e-6)


@dataclass
class DenseConfig(RunConfig):
    """What a detect and a segment run share: the encoder and its weights, the neck, the data, ViTDet's recipe."""

    model: str = setting("hiera_mini_32", check=non_empty)  # the encoder (hieralab list)
    model_args: dict[str, Any] = setting(factory=dict)
    init: str | None = None  # the encoder's weights: a pretrain run, a save_pretrained folder, an official / timm
    #                          file; None: random init
    neck: str = setting("auto", check=one_of("auto", "fpn", "topdown", "simple"))
    neck_channels: int = setting(128, check=at_least(8))
    data: DenseDataConfig = setting(factory=DenseDataConfig)
    optim: OptimConfig = setting(factory=_dense_optim)
    layer_decay: float = setting(0.75, check=between(0, 1, low_open=True))
    drop_path: float = setting(0.1, check=between(0, 1, high_open=True))
    pictures: int = setting(8, check=at_least(0), trajectory=False)  # validation images drawn with predictions
    epochs: float = RunConfig.default("epochs", 6.0)


@dataclass
class DetectConfig(DenseConfig):
    head: str = setting("maskrcnn", check=one_of("maskrcnn", "retinanet", "fcos"))
    box_head_dim: int = setting(256, check=at_least(8))  # Mask R-CNN's box head width (1024 in the paper)
    mask_head_layers: tuple[int, ...] = setting((128, 128), check=each(at_least(8)))  # its mask head convs
    roi_batch: int = setting(128, check=at_least(1))  # proposals per image that train the box / mask heads (512)
    min_size: int | None = None  # the short side torchvision resizes every image to (None: data.img_size)
    max_size: int | None = None  # its long-side cap (None: 2 x min_size)
    score_threshold: float = setting(0.3, check=between(0, 1), trajectory=False)  # for the pictures
    out_dir: str = RunConfig.default("out_dir", "runs/detect")


@dataclass
class SegmentConfig(DenseConfig):
    head_width: int = setting(128, check=at_least(8))
    inference: str = setting("whole", check=one_of("whole", "slide"), trajectory=False)  # validation: the whole
    #                      image, or windows of data.img_size at 2/3 of it apart, logits averaged
    out_dir: str = RunConfig.default("out_dir", "runs/segment")


@dataclass
class ActionDataConfig:
    """Where AVA-format action data is (``hieralab action``): annotation CSVs, the videos (or AVA frame folders),
    a label map. ``"actions"`` (the default) is the bundled Fashion-MNIST action clips, written once to
    ``actions_root``."""

    train_ann: str = setting("actions", check=non_empty)  # an AVA annotation CSV, or "actions" (the bundled clips)
    train_videos: str | None = None  # its videos ({video_id}.mp4 ...) or frame folders (default: the clips')
    val_ann: str = setting("actions", check=non_empty)
    val_videos: str | None = None
    labels: str | None = None  # the .pbtxt label map (default: the bundled clips'; needed for other data)
    val_boxes: str | None = None  # person boxes to classify at evaluation (a CSV with scores, as AVA's detected
    #                      people); None: the ground-truth boxes
    exclude: str | None = None  # excluded-timestamps CSV (AVA's): neither trained on nor scored
    frame_rule: str = setting("seconds", check=one_of("seconds", "ava"))  # the keyframe's frame: "seconds" into the
    #                      video at its own rate, or "ava" (30 fps frame folders from second 900)
    frames_layout: str = setting("videos", check=one_of("videos", "frames"))  # video files, or AVA's frame folders
    #                      ({video_id}/{video_id}_000001.jpg)
    num_frames: int | None = setting(None, check=optional(at_least(1)))  # frames per clip (None: the model's)
    frame_stride: int = setting(2, check=at_least(1))  # frames between two of the clip's (SlowFast's AVA: 8 x 8)
    img_size: int = setting(64, check=at_least(8))  # the side clips are resized to (square)
    box_jitter: float = setting(0.05, check=between(0, 0.5))  # training boxes moved and resized by up to this
    #                      fraction of their side (uniform); evaluation boxes never are
    single_frame: bool = False  # the keyframe repeated over the clip (a baseline that cannot see motion)
    mean: tuple[float, ...] | None = setting(None, check=channel_stats)  # None: the encoder's pretraining values,
    std: tuple[float, ...] | None = setting(None, check=positive_stats)  # else ImageNet's
    limit: int | None = setting(None, check=optional(at_least(1)))  # the first N keyframes of each split
    actions_root: str = setting("runs/fashion-mnist-actions", check=non_empty)
    actions_train: int = setting(400, check=at_least(1))  # bundled clips written for training / validation
    actions_val: int = setting(100, check=at_least(1))
    video_decoder: str = setting("auto", check=one_of("auto", "torchcodec", "pyav"), trajectory=False)
    num_workers: int = setting(2, check=at_least(0), trajectory=False)


def _action_optim() -> OptimConfig:
    """ViTDet's AdamW recipe (betas 0.9 / 0.999, weight decay 0.1, a short warmup) as the dense tasks', at batch 8:
    lr 3e-4 (base 1e-2 per 256)."""
    return OptimConfig(batch_size=8, base_lr=1e-2, betas=(0.9, 0.999), weight_decay=0.1, warmup_epochs=0.2,
                       min_lr=1e-6)


@dataclass
class ActionConfig(RunConfig):
    """Spatio-temporal action detection (AVA): a video encoder, an RoI head on the keyframe clip's map."""

    model: str = setting("hiera_mini_8x32", check=non_empty)  # a video encoder (hieralab list '*x*')
    model_args: dict[str, Any] = setting(factory=dict)
    init: str | None = None  # the encoder's weights: a (video MAE) pretrain run, a save_pretrained folder, an
    #                          official / timm file; None: random init
    data: ActionDataConfig = setting(factory=ActionDataConfig)
    optim: OptimConfig = setting(factory=_action_optim)
    layer_decay: float = setting(0.75, check=between(0, 1, low_open=True))
    drop_path: float = setting(0.1, check=between(0, 1, high_open=True))
    feature: str = setting("last", check=one_of("last", "stage1", "stage2", "stage3", "stage4", "fuse"))  # the
    #                      map the RoI head pools: the encoder's last (a plain ViT's only one), a Hiera stage
    #                      (1-based; the mini has 3), or "fuse": the last two, each pooled at its own stride,
    #                      concatenated (docs/action_study.md: the last won on the bundled clips at one seed, within
    #                      the seed spread)
    dropout: float = setting(0.5, check=between(0, 1, high_open=True))  # before the classifier (SlowFast's 0.5)
    top_k: int | None = setting(None, check=optional(at_least(1)), trajectory=False)  # detections kept per
    #                      keyframe when scoring (None: all; the official script: 50)
    pictures: int = setting(4, check=at_least(0), trajectory=False)  # validation keyframes drawn
    epochs: float = RunConfig.default("epochs", 6.0)
    out_dir: str = RunConfig.default("out_dir", "runs/action")


# ---------------------------------------------------------------- checking
def validate(cfg: Any, prefix: str = "") -> list[str]:
    """Every rule of every field of ``cfg`` (a dataclass, recursively): one line per problem."""
    problems = []
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            problems += validate(value, f"{prefix}{f.name}.")
        elif (check := f.metadata.get("check")) is not None and (msg := check(value)) is not None:
            shown = list(value) if isinstance(value, tuple) else value
            problems.append(f"{prefix}{f.name}={shown!r}: {msg}")
    return problems


def check(cfg: Any) -> Any:
    """``cfg``, or a :class:`ConfigError` listing every problem."""
    problems = validate(cfg)
    if problems:
        raise ConfigError(problems)
    return cfg


def trajectory_changes(old: dict[str, Any], new: dict[str, Any], cls: type) -> dict[str, tuple[Any, Any]]:
    """``{dotted key: (old, new)}`` for the keys that differ between two resolved configs (:func:`to_dict` of
    ``cls``) and alter what the run computes (see :func:`setting`)."""
    if issubclass(cls, RunConfig):  # a run started by an earlier version: its keys under their current names
        old, new = upgrade_keys(old, quiet=True)[0], upgrade_keys(new, quiet=True)[0]
    a, b = flatten(old), flatten(new)
    quiet = {k for k in set(a) | set(b) if not _alters_trajectory(cls, k.split("."))}
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if k not in quiet and a.get(k) != b.get(k)}


def _alters_trajectory(cls: Any, path: list[str]) -> bool:
    for i, name in enumerate(path):
        fields = {f.name: f for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else {}
        if name not in fields:
            return True  # a model_args key, or a key this version no longer has: it may matter
        if not fields[name].metadata.get("trajectory", True):
            return False
        cls = typing.get_type_hints(cls)[name]
    return True


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"optim": {"lr": 1}}`` -> ``{"optim.lr": 1}`` (lists stay values)."""
    out: dict[str, Any] = {}
    for k, v in data.items():
        if isinstance(v, dict) and v:
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


# ---------------------------------------------------------------- building
def _convert(tp: Any, value: Any, where: str, problems: list[str]) -> Any:
    """Coerce a YAML value to the annotated type; a problem naming the key otherwise (the value is kept)."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            problems.append(f"{where}={value!r}: must be a mapping of {tp.__name__} keys")
            return tp()
        return _from_dict(tp, value, where + ".", None, problems)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        return _convert(next(a for a in args if a is not type(None)), value, where, problems)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            problems.append(f"{where}={value!r}: must be a list, e.g. [0.2, 1.0]")
            return value
        inner = typing.get_args(tp)[0]
        return tuple(_convert(inner, v, where, problems) for v in value)
    if origin is dict:
        if not isinstance(value, dict):
            problems.append(f"{where}={value!r}: must be a mapping")
            return {}
        return dict(value)
    if tp is float and not isinstance(value, bool):
        try:  # also "1e-3", which YAML 1.1 reads as a string, and "inf" / "nan" (then refused by the field's rule)
            return float(value)
        except (TypeError, ValueError):
            problems.append(f"{where}={value!r}: must be a number")
            return value
    if tp in (int, str, bool) and (not isinstance(value, tp) or (tp is int and isinstance(value, bool))):
        if tp is int and isinstance(value, float) and value.is_integer():
            return int(value)
        problems.append(f"{where}={value!r}: must be {'a whole number' if tp is int else tp.__name__}")
    return value


def _from_dict(cls: type, data: dict[str, Any], prefix: str, base: Any, problems: list[str]) -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for k in sorted(set(data) - set(fields)):
        problems.append(f"unknown config key {prefix}{k}; known: {', '.join(sorted(fields))}")
    values = {}
    for k, v in data.items():
        if k not in fields:
            continue
        if dataclasses.is_dataclass(hints[k]) and isinstance(v, dict):
            default = getattr(base, k) if base is not None else _field_default(fields[k])
            values[k] = _from_dict(hints[k], v, prefix + k + ".", default, problems)
        else:
            values[k] = _convert(hints[k], v, prefix + k, problems)
    return dataclasses.replace(base, **values) if base is not None else cls(**values)


def from_dict(cls: type, data: dict[str, Any], prefix: str = "", base: Any = None) -> Any:
    """Build dataclass ``cls`` from a nested dict, over ``base`` (an instance) when given; unknown keys and values
    of the wrong type are a :class:`ConfigError` listing every one. A section given in part keeps the rest of its
    field's own default, e.g. ``optim.batch_size=128`` leaves fine-tuning's lr at fine-tuning's default."""
    problems: list[str] = []
    if not prefix and isinstance(cls, type) and issubclass(cls, RunConfig):
        data, problems = upgrade_keys(data)
    cfg = _from_dict(cls, data, prefix, base, problems)
    if problems:
        raise ConfigError(problems)
    return cfg


def _field_default(f: dataclasses.Field) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None if f.default is dataclasses.MISSING else f.default


def plain(value: Any) -> Any:
    """Data as YAML / JSON writes it back: tuples become lists, at any depth."""
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return value


def to_dict(cfg: Any) -> dict[str, Any]:
    """A dataclass as plain YAML-able data (tuples become lists); a task's own keys before the shared run keys."""
    data = plain(dataclasses.asdict(cfg))
    if isinstance(cfg, RunConfig):
        data = {**{k: v for k, v in data.items() if k not in RUN_FIELDS},
                **{k: v for k, v in data.items() if k in RUN_FIELDS}}
    return data


_EXPONENT_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _parse_value(raw: str) -> Any:
    """A ``key=value`` value as YAML, except that ``1e-6`` is a float (YAML 1.1 reads it as a string)."""
    if raw == "":
        return None
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw  # e.g. an unbalanced bracket: kept as text, the field's type check names it
    return float(value) if isinstance(value, str) and _EXPONENT_FLOAT.fullmatch(value) else value


def _join_overrides(overrides: list[str]) -> list[str]:
    """The overrides as argv gives them, each ``key=value`` made one item again where spaces around ``=`` split it:
    ``["optim.base_lr", "=", "1e-3"]``, ``["optim.base_lr", "=1e-3"]`` and ``["optim.base_lr=", "1e-3"]`` all
    become ``"optim.base_lr=1e-3"``. An item is only joined with its neighbour when it could not stand alone."""
    items, out, i = [str(o) for o in overrides], [], 0
    while i < len(items):
        item = items[i]
        if "=" not in item and i + 1 < len(items) and items[i + 1].lstrip().startswith("="):
            item, i = item + items[i + 1], i + 1  # "key" "=..." -> "key=..."
        if item.rstrip().endswith("=") and i + 1 < len(items) and "=" not in items[i + 1]:
            item, i = item + items[i + 1], i + 1  # "key=" "value" -> "key=value" (a lone "value" is no override)
        out.append(item)
        i += 1
    return out


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """``["optim.base_lr=1e-3", "data.source=/imgs"]`` onto a nested dict; values are parsed as YAML. The list may
    come as argv gives it: ``optim.base_lr = 1e-3`` (spaces around ``=``) is read as ``optim.base_lr=1e-3``."""
    data = yaml.safe_load(yaml.safe_dump(data))  # a deep copy
    for item in _join_overrides(overrides):
        key, sep, raw = item.partition("=")
        key, raw = key.strip(), raw.strip()
        if not sep or not key:
            raise ConfigError([f"override {item!r} is not key=value: write it as one word, e.g. optim.base_lr=1e-3"])
        if any(c.isspace() for c in key):
            raise ConfigError([f"override {item!r}: the key {key!r} holds a space; write key=value, e.g. "
                               f"optim.base_lr=1e-3"])
        node = data
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError([f"override {item!r}: {p} is not a section"])
        node[leaf] = _parse_value(raw)
    return data


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESETS.glob("*.yaml"))


def preset_task(name: str) -> str:
    """The command a preset is for: its ``task:`` key ("?" when it names none)."""
    return str(read_preset(name).get("task", "?"))


def preset_summary(name: str) -> tuple[str, str]:
    """``(task, the first sentence of the preset's opening comment)``."""
    lines = (PRESETS / f"{name}.yaml").read_text().splitlines()
    comment = " ".join(line.lstrip("#").strip() for line in itertools.takewhile(lambda x: x.startswith("#"), lines))
    return preset_task(name), re.split(r"(?<=[.)])\s+(?=[A-Z])", comment, maxsplit=1)[0]


class _DuplicateKeyError(yaml.YAMLError):
    """A key given twice in one mapping of a YAML file (plain YAML keeps the last one without a word)."""


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # "<<: *anchor" merges, it is not a key
            key = self.construct_object(key_node, deep=deep)
            line = key_node.start_mark.line + 1
            try:
                first = seen.get(key)
            except TypeError:
                continue  # an unhashable key: SafeLoader's own error names it
            if first is not None:
                raise _DuplicateKeyError(f"the key {key!r} is given twice (lines {first} and {line}); keep one")
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def read_preset(preset: str) -> dict[str, Any]:
    """A preset (a name from :func:`preset_names` or a YAML path) as a dict."""
    path = Path(preset).expanduser() if preset.endswith((".yaml", ".yml")) else PRESETS / f"{preset}.yaml"
    if not path.exists():
        raise ConfigError([f"no preset {preset!r}: use one of {', '.join(preset_names())} or a .yaml path"])
    try:
        data = yaml.load(path.read_text(), Loader=_UniqueKeyLoader) or {}
    except _DuplicateKeyError as e:
        raise ConfigError([f"{path}: {e}"]) from None
    except yaml.YAMLError as e:
        raise ConfigError([f"{path} is not valid YAML ({str(e).splitlines()[0]})"]) from None
    if not isinstance(data, dict):
        raise ConfigError([f"{path} must hold a mapping of config keys"])
    return data


def load_config(cls: type, preset: str | None, overrides: list[str], *, task: str | None = None) -> Any:
    """Defaults <- preset <- overrides, every value checked: a :class:`ConfigError` lists every problem (unknown
    keys, wrong types, values out of range), one line each. A preset declares its command (``task:``); given
    ``task``, a preset for another command is refused."""
    data = read_preset(preset) if preset else {}
    declared = data.pop("task", None)
    if task is not None and declared is not None and declared != task:
        raise ConfigError([f"--preset {preset} is a {declared} preset; use it with hieralab {declared}, or choose a "
                           f"{task} preset (hieralab presets)"])
    data = apply_overrides(data, overrides)
    problems: list[str] = []
    if issubclass(cls, RunConfig):
        data, problems = upgrade_keys(data)
    cfg = _from_dict(cls, data, "", None, problems)
    named = {re.split(r"[=:;]", p, maxsplit=1)[0].removeprefix("unknown config key ") for p in problems}
    problems += [p for p in validate(cfg) if p.split("=", 1)[0] not in named]
    if problems:
        raise ConfigError(problems)
    return cfg
