"""``hieralab pretrain``: MAE pretraining of any ``mae_*`` model on Fashion-MNIST, an image folder or clips.

The task builds the MAE, the data (crops, flips and a mask per sample) and the step's forward (the MAE loss), and
hands them to the shared :class:`~hieralab.engine.trainer.Trainer`, which owns the run folder, resume,
checkpoints, logs and processes. At the end it writes the MAE (``model/``), its encoder alone for fine-tuning
(``encoder/``) and reconstruction pictures.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import seeds
from ..config import PretrainConfig
from ..data.pipeline import SeededSamples, build_dataset, check_repeat_aug, data_channels, model_channels
from ..data.transforms import mae_train_transform
from ..data.video import video_train_transform
from ..engine.artifacts import check_model, is_video_model
from ..engine.optim import build_adamw
from ..engine.trainer import Curve, Job, Trainer, lower_lr_hint
from ..errors import ConfigError
from ..models.factory import create_model
from ..viz.reconstructions import reconstruct_source

log = logging.getLogger(__name__)


def input_geometry(model: nn.Module, img_size: int, num_frames: int | None = None) -> tuple[tuple[int, ...], int]:
    """``([C, (T,) H, W], #MU)`` of the model's input at ``img_size`` (and ``num_frames`` for video: default the
    model's); a one-line error for sizes that do not divide into mask units."""
    enc = model.encoder
    frames = (num_frames or enc.config["input_size"][0],) if enc.ndim == 3 else ()
    shape = (enc.in_chans, *frames, img_size, img_size)
    return shape, math.prod(model.num_units(torch.empty(1, *shape, device="meta")))


def run(cfg: PretrainConfig, *, resume: bool = False, **options: Any) -> dict[str, Any]:
    """Train (or continue, with ``resume``); returns the summary. ``options``: ``overwrite``, ``accept_changes``
    (see :class:`~hieralab.engine.trainer.Trainer`)."""
    check_model(cfg.model, cfg.model_args, mae=True)
    with Trainer(cfg, task="pretrain", resume=resume, **options) as trainer:
        d, o = cfg.data, cfg.optim
        video = is_video_model(cfg.model, cfg.model_args)
        dataset, mean, std, _ = build_dataset(d.source, d.split, d.limit, video=video)
        channels = model_channels(cfg.model_args.get("in_chans"), data_channels(dataset), d.source)
        torch.manual_seed(seeds.seed_int(cfg.seed, "init"))  # the initial weights
        model = create_model(cfg.model, **{**cfg.model_args, "in_chans": channels}).to(trainer.device)
        mask_ratio = model.mask_ratio if cfg.mask_ratio is None else cfg.mask_ratio
        if not 0 < mask_ratio < 1:
            raise ConfigError([f"mask_ratio={mask_ratio!r} (the model's): must be in (0, 1); at 0 nothing is hidden "
                               "and the MAE loss is 0"])
        shape, num_units = input_geometry(model, d.img_size, d.num_frames)
        repeats = check_repeat_aug(d, video)
        if video:
            transform = video_train_transform(shape[1], d.frame_stride, d.img_size, d.mean or mean, d.std or std,
                                              scale=d.crop_scale, hflip=d.hflip, repeats=repeats)
        else:
            transform = mae_train_transform(d.img_size, d.mean or mean, d.std or std, scale=d.crop_scale,
                                            hflip=d.hflip, channels=channels)
        samples = SeededSamples(dataset, transform, seed=cfg.seed, num_units=num_units, mask_ratio=mask_ratio,
                                repeats=repeats)
        log.info("%s: %d %s of %s, %d channels, mask %.2f of %d units", cfg.model, len(dataset),
                 "videos" if video else "images", d.source, channels, mask_ratio, num_units)

        train_model = trainer.wrap(model)  # DDP / compiled

        def forward(batch: dict[str, Any], step: int, k: int) -> torch.Tensor:
            x, visible = batch["x"].to(trainer.device, non_blocking=True), batch["visible"].to(trainer.device)
            return train_model(x, visible).loss

        job = Job(model=model, optimizer=build_adamw(model, lr=o.base_lr, weight_decay=o.weight_decay, betas=o.betas),
                  samples=samples, forward=forward, batch_size=o.batch_size, base_lr=o.base_lr,
                  lower_lr=lower_lr_hint("optim.base_lr", o.base_lr, PretrainConfig().optim.base_lr),
                  accum_steps=o.accum_steps, warmup_epochs=o.warmup_epochs, min_lr=o.min_lr, clip_grad=o.clip_grad,
                  clips_per_sample=repeats, num_workers=d.num_workers)
        return trainer.fit(job, outputs=lambda run_dir: _outputs(cfg, model, run_dir),
                           curve=Curve("loss_curve.png", f"MAE pretraining of {cfg.model}"))


def _outputs(cfg: PretrainConfig, model: nn.Module, run_dir: Path) -> dict[str, str]:
    """Final weights (the MAE, and the encoder alone for fine-tuning) and reconstructions."""
    model.model_name = cfg.model
    model.save_pretrained(run_dir / "model")
    model.export_encoder(cfg.model.removeprefix("mae_")).save_pretrained(run_dir / "encoder")
    out = {"model": str(run_dir / "model"), "encoder": str(run_dir / "encoder")}
    if cfg.recon_images > 0:
        d = cfg.data
        split = "test" if d.source == "fashion-mnist" else d.split
        paths = reconstruct_source(model, d.source, split, run_dir / "reconstructions", d.img_size,
                                   num=cfg.recon_images, generator=seeds.generator(cfg.seed, "recon"),
                                   num_frames=d.num_frames, frame_stride=d.frame_stride)
        out["reconstructions"] = str(paths[0].parent)
    return out
