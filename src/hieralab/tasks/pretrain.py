"""``hieralab pretrain``: MAE pretraining of any ``mae_*`` model on an image folder or Fashion-MNIST.

``run(cfg)`` builds the model, the data, AdamW and the schedule, then trains with checkpoints every
``ckpt_every`` steps; ``run(cfg, resume=True)`` continues from the newest complete checkpoint and reproduces the
uninterrupted run's losses exactly on CPU (every random draw is a function of the step, see ``data/pipeline.py``).
One process or many (``torchrun``): the same code.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn
from tqdm.auto import tqdm

from ..config import PretrainConfig, to_dict
from ..data.pipeline import EpochSampler, SeededSamples, build_dataset, collate, steps_per_epoch, total_steps
from ..data.transforms import mae_train_transform
from ..engine import checkpoints, distributed
from ..engine.optim import build_adamw
from ..engine.run_log import RunLog, plot_curve
from ..engine.schedule import scaled_lr, warmup_cosine
from ..mae.masking import seeded_generator
from ..models.checkpoint import atomic_write
from ..models.registry import create_model

log = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or inf; training stopped before the bad step touched the weights."""


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def autocast(device: torch.device, amp: str):
    """bf16 autocast on CUDA where asked (or ``auto``); fp32 on CPU, where bf16 matmuls are slower on this class of
    machine (no AMX) and the resume test needs bit-exact fp32."""
    if amp not in ("auto", "bf16", "off"):
        raise ValueError(f"amp must be 'auto', 'bf16' or 'off', got {amp!r}")
    if amp == "bf16" or (amp == "auto" and device.type == "cuda"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def input_geometry(model: nn.Module, img_size: int) -> tuple[tuple[int, ...], int]:
    """``([C, H, W], #MU)`` of the model's input at ``img_size``; a one-line error for sizes that do not divide."""
    shape = (model.encoder.in_chans, img_size, img_size)
    return shape, math.prod(model.num_units(torch.empty(1, *shape, device="meta")))


def build_model(cfg: PretrainConfig) -> nn.Module:
    model = create_model(cfg.model, **cfg.model_args)
    if not getattr(model, "is_mae", False):
        raise ValueError(f"{cfg.model} is not an MAE model; pretrain takes mae_* names (hieralab list 'mae_*')")
    return model


def _micro_batches(loader, accum: int, count: int) -> Iterator[list[dict[str, Any]]]:
    """Group the loader's batches into ``count`` optimizer steps of ``accum`` micro-batches each."""
    group: list[dict[str, Any]] = []
    for batch in loader:
        group.append(batch)
        if len(group) == accum:
            yield group
            group = []
            count -= 1
            if count == 0:
                return


def run(cfg: PretrainConfig, *, resume: bool = False) -> dict[str, Any]:
    """Train; returns a summary (steps, final loss, time, where things were written)."""
    device = pick_device(cfg.device)
    dist = distributed.init(device.type)
    if device.type == "cuda":
        device = torch.device("cuda", dist.local_rank)
        torch.cuda.set_device(device)
    run_dir = Path(cfg.out_dir)
    ckpt_dir = run_dir / "checkpoints"
    last = checkpoints.latest(ckpt_dir)
    if last is not None and not resume:
        raise ValueError(f"{run_dir} already holds checkpoints (newest {last.name}); pass --resume to continue it, "
                         "or set out_dir to a new folder")

    torch.manual_seed(cfg.seed)  # the initial weights
    model = build_model(cfg).to(device)
    mask_ratio = model.mask_ratio if cfg.mask_ratio is None else cfg.mask_ratio
    shape, num_units = input_geometry(model, cfg.data.img_size)
    dataset, mean, std, _ = build_dataset(cfg.data.source, cfg.data.split, cfg.data.limit)
    transform = mae_train_transform(cfg.data.img_size, cfg.data.mean or mean, cfg.data.std or std,
                                    scale=cfg.data.crop_scale, hflip=cfg.data.hflip, channels=shape[0])
    samples = SeededSamples(dataset, transform, seed=cfg.seed, num_units=num_units, mask_ratio=mask_ratio)
    o = cfg.optim
    per_epoch = steps_per_epoch(len(dataset), o.batch_size, o.accum_steps, dist.world)
    total = total_steps(cfg.epochs, per_epoch)
    stop = min(total, cfg.max_steps) if cfg.max_steps else total
    lr = scaled_lr(o.base_lr, o.batch_size * o.accum_steps * dist.world)
    warmup = round(o.warmup_epochs * per_epoch)
    optimizer = build_adamw(model, lr=lr, weight_decay=o.weight_decay, betas=o.betas)

    step, loss_value = 0, float("nan")
    if resume and last is not None:
        state = checkpoints.load(last, model, optimizer)
        step, loss_value = state["step"], state.get("loss", loss_value)
        log.info("resuming from %s (step %d of %d)", last, step, stop)
    elif resume:
        log.info("no checkpoint in %s: starting from scratch", ckpt_dir)
    if dist.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        text = yaml.safe_dump(to_dict(cfg), sort_keys=False)
        atomic_write(run_dir / "config.yaml", lambda p: Path(p).write_text(text))
    train_model: nn.Module = model
    if dist.world > 1:
        ids = [device.index] if device.type == "cuda" else None
        train_model = nn.parallel.DistributedDataParallel(model, device_ids=ids)
    if cfg.compile:
        train_model = torch.compile(train_model)

    run_log = RunLog(run_dir, resume_step=step) if dist.is_main else None
    bar = tqdm(total=stop, initial=step, desc="pretrain", unit="step", disable=not dist.is_main, dynamic_ncols=True)
    log.info("%s: %d images, %d steps/epoch, %d steps, lr %.3g, batch %d x %d accum x %d processes, mask %.2f",
             cfg.model, len(dataset), per_epoch, stop, lr, o.batch_size, o.accum_steps, dist.world, mask_ratio)
    model.train()
    start_time, start_step, skipped_total = time.perf_counter(), step, 0
    try:
        while step < stop:
            epoch, in_epoch = divmod(step, per_epoch)
            sampler = EpochSampler(len(dataset), epoch=epoch, seed=cfg.seed, rank=dist.rank, world=dist.world,
                                   start=in_epoch * o.accum_steps * o.batch_size)
            loader = torch.utils.data.DataLoader(samples, o.batch_size, sampler=sampler, collate_fn=collate,
                                                 num_workers=cfg.data.num_workers, drop_last=True)
            for group in _micro_batches(loader, o.accum_steps, min(per_epoch - in_epoch, stop - step)):
                t0 = time.perf_counter()
                for g in optimizer.param_groups:
                    g["lr"] = warmup_cosine(step, lr=lr, total_steps=total, warmup_steps=warmup, min_lr=o.min_lr)
                optimizer.zero_grad(set_to_none=True)
                losses, images, skipped = [], 0, 0
                group_size = max(1, sum(b["size"] for b in group))  # micro-batches weigh by their image count
                for k, batch in enumerate(group):
                    skipped += batch["skipped"]
                    if batch["size"] == 0:
                        continue
                    torch.manual_seed(hash((cfg.seed, step, k, dist.rank)) & 0x7FFF_FFFF)  # drop path, per step
                    x, visible = batch["x"].to(device, non_blocking=True), batch["visible"].to(device)
                    sync = k == len(group) - 1 or dist.world == 1
                    with (contextlib.nullcontext() if sync else train_model.no_sync()), autocast(device, cfg.amp):
                        loss = train_model(x, visible).loss
                        finite = distributed.all_mean(torch.isfinite(loss.detach()).float())
                        if finite.item() < 1:
                            raise NonFiniteLossError(f"loss is {loss.item()} at step {step}")
                        (loss * (batch["size"] / group_size)).backward()
                    losses.append(loss.detach() * (batch["size"] * len(group) / group_size))
                    images += x.shape[0]
                if o.clip_grad:
                    nn.utils.clip_grad_norm_(model.parameters(), o.clip_grad)
                optimizer.step()
                step += 1
                skipped_total += skipped
                loss_value = distributed.all_mean(torch.stack(losses).mean()).item() if losses else float("nan")
                speed = images * dist.world / (time.perf_counter() - t0)
                bar.update(1)
                bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{optimizer.param_groups[0]['lr']:.2e}",
                                img_s=f"{speed:.0f}")
                if run_log and (step % cfg.log_every == 0 or step == stop):
                    run_log.write({"step": step, "epoch": round(step / per_epoch, 4), "loss": loss_value,
                                   "lr": optimizer.param_groups[0]["lr"], "images_per_s": round(speed, 1),
                                   "skipped": skipped_total})
                if step % cfg.ckpt_every == 0 or step == stop:
                    if dist.is_main:
                        checkpoints.save(ckpt_dir, step, model, optimizer, {"epoch": step / per_epoch,
                                                                            "loss": loss_value}, cfg.keep_last)
                    distributed.barrier()
    except NonFiniteLossError as e:
        newest = checkpoints.latest(ckpt_dir)
        raise NonFiniteLossError(f"{e}: stopped; the last good checkpoint is {newest or 'none (none written yet)'}; "
                                 "resume from it with a lower optim.base_lr, or check the data") from None
    finally:
        bar.close()
        if run_log:
            run_log.close()
    seconds = time.perf_counter() - start_time
    if skipped_total:
        log.warning("skipped %d unreadable images", skipped_total)
    summary: dict[str, Any] = {
        "run_dir": str(run_dir), "steps": step, "final_loss": loss_value, "seconds": round(seconds, 1),
        "images_per_s": round((step - start_step) * o.batch_size * o.accum_steps * dist.world / max(seconds, 1e-9), 1),
        "skipped_images": skipped_total,
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
        from .reconstruct import reconstruct_dataset

        split = "test" if cfg.data.source == "fashion-mnist" else cfg.data.split
        paths = reconstruct_dataset(model, cfg.data.source, split, run_dir / "reconstructions", cfg.data.img_size,
                                    num=cfg.recon_images, generator=seeded_generator(cfg.seed, -1))
        out["reconstructions"] = str(paths[0].parent)
    return out
