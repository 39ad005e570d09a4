"""``hieralab pretrain``: MAE pretraining of any ``mae_*`` model on an image folder or Fashion-MNIST.

``run(cfg)`` builds the model, the data, AdamW and the schedule, then trains with checkpoints every
``ckpt_every`` steps; ``run(cfg, resume=True)`` continues from the newest complete checkpoint and reproduces the
uninterrupted run's losses exactly on CPU (every random draw is a function of the step, see ``data/pipeline.py``).
One process or many (``torchrun``): the same code.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import PretrainConfig, to_dict
from ..data.pipeline import SeededSamples, check_repeat_aug, build_dataset, steps_per_epoch, total_steps
from ..data.transforms import mae_train_transform
from ..data.video import video_train_transform
from ..engine import checkpoints, distributed, loop
from ..engine.loop import NonFiniteLossError, pick_device  # noqa: F401  (NonFiniteLossError: part of this API)
from ..engine.optim import build_adamw
from ..engine.run_log import plot_curve
from ..engine.schedule import scaled_lr
from ..mae.masking import seeded_generator
from ..models.checkpoint import atomic_write
from ..models.registry import create_model

log = logging.getLogger(__name__)


def input_geometry(model: nn.Module, img_size: int, num_frames: int | None = None) -> tuple[tuple[int, ...], int]:
    """``([C, (T,) H, W], #MU)`` of the model's input at ``img_size`` (and ``num_frames`` for video: default the
    model's); a one-line error for sizes that do not divide into mask units."""
    enc = model.encoder
    frames = (num_frames or enc.config["input_size"][0],) if enc.ndim == 3 else ()
    shape = (enc.in_chans, *frames, img_size, img_size)
    return shape, math.prod(model.num_units(torch.empty(1, *shape, device="meta")))


def build_model(cfg: PretrainConfig) -> nn.Module:
    model = create_model(cfg.model, **cfg.model_args)
    if not getattr(model, "is_mae", False):
        raise ValueError(f"{cfg.model} is not an MAE model; pretrain takes mae_* names (hieralab list 'mae_*')")
    return model


def run(cfg: PretrainConfig, *, resume: bool = False) -> dict[str, Any]:
    """Train; returns a summary (steps, final loss, time, where things were written)."""
    where = loop.start_run(cfg.device, cfg.out_dir, resume)
    device, dist, run_dir, last = where.device, where.dist, where.dir, where.last
    ckpt_dir = run_dir / "checkpoints"

    torch.manual_seed(cfg.seed)  # the initial weights
    model = build_model(cfg).to(device)
    mask_ratio = model.mask_ratio if cfg.mask_ratio is None else cfg.mask_ratio
    d = cfg.data
    video = model.encoder.ndim == 3
    shape, num_units = input_geometry(model, d.img_size, d.num_frames)
    dataset, mean, std, _ = build_dataset(d.source, d.split, d.limit, video=video)
    repeats = check_repeat_aug(d, video)
    if video:
        transform = video_train_transform(shape[1], d.frame_stride, d.img_size, d.mean or mean, d.std or std,
                                          scale=d.crop_scale, hflip=d.hflip, repeats=repeats)
    else:
        transform = mae_train_transform(d.img_size, d.mean or mean, d.std or std, scale=d.crop_scale, hflip=d.hflip,
                                        channels=shape[0])
    samples = SeededSamples(dataset, transform, seed=cfg.seed, num_units=num_units, mask_ratio=mask_ratio,
                            repeats=repeats)
    o = cfg.optim
    per_epoch = steps_per_epoch(len(dataset), o.batch_size, o.accum_steps, dist.world)
    total = total_steps(cfg.epochs, per_epoch)
    stop = min(total, cfg.max_steps) if cfg.max_steps else total
    lr = scaled_lr(o.base_lr, o.batch_size * o.accum_steps * dist.world * repeats)
    warmup = round(o.warmup_epochs * per_epoch)
    optimizer = build_adamw(model, lr=lr, weight_decay=o.weight_decay, betas=o.betas)

    step, loss_value = 0, float("nan")
    if resume and last is not None:
        state = checkpoints.load(last, model, optimizer)
        step, loss_value = state["step"], state.get("loss", loss_value)
        log.info("resuming from %s (step %d of %d)", last, step, stop)
    elif resume:
        log.info("no checkpoint in %s: starting from scratch", ckpt_dir)
    train_model = loop.prepare(where, model, to_dict(cfg), compile=cfg.compile)

    log.info("%s: %d %s, %d steps/epoch, %d steps, lr %.3g, batch %d x %d accum x %d processes%s, mask %.2f",
             cfg.model, len(dataset), "videos" if video else "images", per_epoch, stop, lr, o.batch_size,
             o.accum_steps, dist.world, f" x {repeats} clips each" if repeats > 1 else "", mask_ratio)

    def forward(batch: dict[str, Any], step: int, k: int) -> torch.Tensor:
        x, visible = batch["x"].to(device, non_blocking=True), batch["visible"].to(device)
        return train_model(x, visible).loss

    result = loop.train(
        name="pretrain", model=model, train_model=train_model, optimizer=optimizer, samples=samples, forward=forward,
        schedule=loop.Schedule(per_epoch, total, stop, lr, warmup, o.min_lr), dist=dist, device=device, amp=cfg.amp,
        seed=cfg.seed, batch_size=o.batch_size, accum_steps=o.accum_steps, num_workers=cfg.data.num_workers,
        clip_grad=o.clip_grad, run_dir=run_dir, ckpt_every=cfg.ckpt_every, keep_last=cfg.keep_last,
        log_every=cfg.log_every, start_step=step, start_loss=loss_value,
    )
    if result.skipped:
        log.warning("skipped %d unreadable images", result.skipped)
    summary: dict[str, Any] = {
        "run_dir": str(run_dir), "steps": result.step, "final_loss": result.loss, "seconds": result.seconds,
        "images_per_s": result.images_per_s, "skipped_images": result.skipped,
    }
    if dist.is_main:
        summary.update(_finish(cfg, model, run_dir))
        atomic_write(run_dir / "summary.json", lambda p: Path(p).write_text(json.dumps(summary, indent=2) + "\n"))
    distributed.barrier()
    return summary


def _finish(cfg: PretrainConfig, model: nn.Module, run_dir: Path) -> dict[str, str]:
    """Final weights (the MAE, and the encoder alone for fine-tuning), the loss curve and reconstructions."""
    model.model_name = cfg.model
    model.save_pretrained(str(run_dir / "model"))
    encoder = model.encoder
    encoder.model_name = cfg.model.removeprefix("mae_")
    encoder.save_pretrained(str(run_dir / "encoder"))
    out = {"model": str(run_dir / "model"), "encoder": str(run_dir / "encoder")}
    if (run_dir / "log.csv").exists():
        out["loss_curve"] = str(plot_curve(run_dir / "log.csv", run_dir / "loss_curve.png",
                                           title=f"MAE pretraining of {cfg.model}"))
    if cfg.recon_images > 0:
        from .reconstruct import reconstruct_source

        d = cfg.data
        split = "test" if d.source == "fashion-mnist" else d.split
        paths = reconstruct_source(model, d.source, split, run_dir / "reconstructions", d.img_size,
                                   num=cfg.recon_images, generator=seeded_generator(cfg.seed, -1),
                                   num_frames=d.num_frames, frame_stride=d.frame_stride)
        out["reconstructions"] = str(paths[0].parent)
    return out
