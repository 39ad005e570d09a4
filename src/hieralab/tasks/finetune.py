"""``hieralab finetune``: supervised training of any encoder, from an MAE run, an official checkpoint or scratch.

The MAE / Hiera recipe through timm's implementations: layer-wise lr decay (``param_groups_layer_decay`` over the
models' layer ids), drop path, RandAugment and random erasing (``create_transform``), mixup / cutmix with label
smoothing (``Mixup``, ``SoftTargetCrossEntropy``), warmup + cosine, an optional EMA of the weights (``ModelEmaV3``).
Partial fine-tuning (``trainable_blocks=k``) trains only the last k blocks, the final norm and the head.
The run writes ``last/`` and ``best/`` (``save_pretrained`` folders with ``classifier.json``), ``log.csv``, ``tb/``,
``curves.png`` and ``summary.json``; ``--resume`` continues from the newest checkpoint, exactly as pretraining does.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..config import FinetuneConfig, to_dict
from ..data.pipeline import SeededSamples, check_repeat_aug, labelled_splits, steps_per_epoch, total_steps
from ..data.transforms import eval_transform, finetune_transform
from ..data.video import video_eval_transform, video_train_transform
from ..engine import checkpoints, distributed, loop
from ..engine.optim import build_adamw
from ..engine.run_log import plot_curve
from ..engine.schedule import scaled_lr
from ..models.checkpoint import atomic_write, load_checkpoint
from ..models.registry import create_model
from .evaluate import classification_metrics, predict_logits, save_classifier

log = logging.getLogger(__name__)


def init_weights_path(init: str) -> Path:
    """A pretrain run folder means its ``encoder/``; anything else is read as it is."""
    path = Path(init).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"init={init}: no such file or folder (a pretrain run, a save_pretrained folder or a "
                                "checkpoint file)")
    return path / "encoder" if (path / "encoder" / "config.json").exists() else path


def saved_config(path: Path, model: str) -> dict[str, Any]:
    """The constructor arguments saved with ``path`` (a ``save_pretrained`` folder) when it holds ``model``, so that
    e.g. a 1-channel MAE encoder is rebuilt with one channel; without its head size and drop path."""
    meta = path / "config.json"
    if not meta.exists():
        return {}
    saved = json.loads(meta.read_text())
    if saved.get("model_name") != model:
        return {}
    return {k: v for k, v in saved["config"].items() if k not in ("num_classes", "drop_path_rate")}


def is_video_model(name: str, model_args: dict[str, Any]) -> bool:
    """Whether ``name`` (with ``model_args``) takes clips ``[B, C, T, H, W]``."""
    from ..models.registry import model_config

    return len({**model_config(name), **model_args}.get("input_size", ())) == 3


def classifier(model: nn.Module) -> nn.Linear | nn.Module:
    """The final Linear of a model (Hiera keeps it at ``head.projection``, the ViTs at ``head``)."""
    return getattr(model.head, "projection", model.head)


def freeze_all_but_last_blocks(model: nn.Module, k: int) -> list[str]:
    """Partial fine-tuning (MAE paper, Fig. 9): only the last ``k`` blocks, the final norms and the head train.
    Returns the names of the trainable parameters."""
    depth = len(model.blocks)
    if not 0 <= k <= depth:
        raise ValueError(f"trainable_blocks={k}: the model has {depth} blocks; use 0..{depth}")
    first = depth - k
    for name, p in model.named_parameters():
        in_block = name.startswith("blocks.") and int(name.split(".")[1]) >= first
        tail = model.layer_id(name) == model.num_layers - 1  # final norms and head
        p.requires_grad_(in_block or tail)
    return [n for n, p in model.named_parameters() if p.requires_grad]


def build_model(cfg: FinetuneConfig, num_classes: int) -> nn.Module:
    if cfg.model.startswith("mae_"):
        raise ValueError(f"{cfg.model} is an MAE model; fine-tune its encoder ({cfg.model.removeprefix('mae_')}) "
                         f"with init=<the pretrain run>")
    init = init_weights_path(cfg.init) if cfg.init else None
    model = create_model(cfg.model, **{**(saved_config(init, cfg.model) if init else {}), "num_classes": num_classes,
                                       "drop_path_rate": cfg.drop_path, **cfg.model_args})
    if init:
        missing = load_checkpoint(model, init)
        log.info("init from %s (%d tensors not in it: %s)", cfg.init, len(missing), ", ".join(missing[:4]))
        head = classifier(model)
        if any(k.startswith("head") for k in missing) and isinstance(head, nn.Linear):
            nn.init.trunc_normal_(head.weight, std=2e-5)  # MAE fine-tuning: a near-zero new head
            nn.init.zeros_(head.bias)
    if cfg.trainable_blocks is not None:
        freeze_all_but_last_blocks(model, cfg.trainable_blocks)
    return model


def run(cfg: FinetuneConfig, *, resume: bool = False) -> dict[str, Any]:
    """Train and evaluate; returns a summary (best and last top-1, where things were written)."""
    from timm.data import Mixup
    from timm.data.mixup import mixup_target
    from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
    from timm.utils import ModelEmaV3

    where = loop.start_run(cfg.device, cfg.out_dir, resume)
    device, dist, run_dir, last = where.device, where.dist, where.dir, where.last

    video = is_video_model(cfg.model, cfg.model_args)
    train_set, val_set, classes, mean, std = labelled_splits(cfg.data, cfg.val_source, cfg.val_fraction, video=video)
    torch.manual_seed(cfg.seed)  # the initial weights (and a fresh head)
    model = build_model(cfg, len(classes)).to(device)
    d, a = cfg.data, cfg.aug
    meta = {"classes": classes, "mean": list(mean), "std": list(std), "img_size": d.img_size}
    repeats = check_repeat_aug(d, video)
    if video:  # one crop and flip per clip; RandAugment and erasing are image recipes, not used here
        frames = d.num_frames or model.config["input_size"][0]
        train_tf = video_train_transform(frames, d.frame_stride, d.img_size, mean, std, scale=a.crop_scale,
                                         hflip=a.hflip > 0, repeats=repeats)
        val_tf = video_eval_transform(frames, d.frame_stride, d.img_size, mean, std)  # 1 view while training
        meta.update(num_frames=frames, frame_stride=d.frame_stride)
    else:
        train_tf = finetune_transform(d.img_size, mean, std, channels=model.in_chans, randaug=a.randaug,
                                      reprob=a.reprob, scale=a.crop_scale, hflip=a.hflip)
        val_tf = eval_transform(d.img_size, mean, std, channels=model.in_chans)
    samples = SeededSamples(train_set, train_tf, seed=cfg.seed, repeats=repeats)
    o = cfg.optim
    per_epoch = steps_per_epoch(len(train_set), o.batch_size, o.accum_steps, dist.world)
    total = total_steps(cfg.epochs, per_epoch)
    stop = min(total, cfg.max_steps) if cfg.max_steps else total
    lr = scaled_lr(o.base_lr, o.batch_size * o.accum_steps * dist.world * repeats)
    optimizer = build_adamw(model, lr=lr, weight_decay=o.weight_decay, betas=o.betas, layer_decay=cfg.layer_decay)
    ema = ModelEmaV3(model, decay=cfg.ema_decay) if cfg.ema_decay else None
    ckpt_module = nn.ModuleDict({"model": model, "ema": ema}) if ema else model

    mixing = a.mixup > 0 or a.cutmix > 0
    mixup = Mixup(mixup_alpha=a.mixup, cutmix_alpha=a.cutmix, label_smoothing=a.smoothing,
                  num_classes=len(classes)) if mixing else None
    criterion = (SoftTargetCrossEntropy() if mixing else
                 LabelSmoothingCrossEntropy(a.smoothing) if a.smoothing > 0 else nn.CrossEntropyLoss())

    step, loss_value, best = 0, float("nan"), {"top1": -1.0, "step": 0, "weights": "model"}
    if resume and last is not None:
        state = checkpoints.load(last, ckpt_module, optimizer)
        step, loss_value, best = state["step"], state.get("loss", loss_value), state.get("best", best)
        log.info("resuming from %s (step %d of %d)", last, step, stop)
    train_model = loop.prepare(where, model, to_dict(cfg), compile=cfg.compile)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log.info("%s: %d train / %d val images, %d classes, %d steps/epoch, %d steps, lr %.3g, layer decay %s, "
             "%.2fM trainable parameters", cfg.model, len(train_set), len(val_set), len(classes), per_epoch, stop, lr,
             cfg.layer_decay, trainable / 1e6)

    def forward(batch: dict[str, Any], step: int, k: int) -> torch.Tensor:
        x, y = batch["x"].to(device, non_blocking=True), batch["label"].to(device)
        if mixup is not None and len(x) % 2:  # timm's Mixup pairs images: an odd batch (a skipped file) loses one
            if len(x) == 1:
                return criterion(train_model(x), mixup_target(y, len(classes), 1.0, a.smoothing))
            x, y = x[:-1], y[:-1]
        if mixup is not None:
            np.random.seed(hash((cfg.seed, step, k, dist.rank)) & 0xFFFF_FFFF)  # timm's Mixup draws from numpy
            if x.dim() == 5:  # video: one mixup / cutmix box for all frames (time folded into channels)
                B, C, T = x.shape[:3]
                x, y = mixup(x.flatten(1, 2), y)
                x = x.unflatten(1, (C, T))
            else:
                x, y = mixup(x, y)
        return criterion(train_model(x), y)

    eval_every = cfg.eval_every or per_epoch
    latest: dict[str, dict[str, float]] = {}  # the newest evaluation of the model (and the EMA)

    def evaluate(weights: nn.Module) -> dict[str, float]:
        logits, labels = predict_logits(weights, val_set, val_tf, device=device)
        return classification_metrics(logits, labels)

    def after_step(step: int) -> dict[str, Any]:
        if ema is not None:
            ema.update(model, step=step)
        if step % eval_every and step != stop:
            return {}
        out: dict[str, Any] = {}
        if dist.is_main:
            for key, weights in (("model", model), ("ema", ema.module if ema else None)):
                if weights is None:
                    continue
                m = evaluate(weights)
                latest[key] = m
                prefix = "val" if key == "model" else "ema_val"
                out.update({f"{prefix}_top1": m["top1"], f"{prefix}_top5": m["top5"], f"{prefix}_loss": m["loss"]})
                if m["top1"] > best["top1"]:
                    best.update(top1=m["top1"], step=step, weights=key)
                    save_classifier(weights, cfg.model, meta, run_dir / "best")
            model.train()
        distributed.barrier()
        return out

    result = loop.train(
        name="finetune", model=model, train_model=train_model, optimizer=optimizer, samples=samples, forward=forward,
        schedule=loop.Schedule(per_epoch, total, stop, lr, round(o.warmup_epochs * per_epoch), o.min_lr), dist=dist,
        device=device, amp=cfg.amp, seed=cfg.seed, batch_size=o.batch_size, accum_steps=o.accum_steps,
        num_workers=cfg.data.num_workers, clip_grad=o.clip_grad, run_dir=run_dir, ckpt_every=cfg.ckpt_every,
        keep_last=cfg.keep_last, log_every=cfg.log_every, start_step=step, start_loss=loss_value,
        ckpt_module=ckpt_module, after_step=after_step, ckpt_state=lambda: {"best": dict(best)},
    )
    summary: dict[str, Any] = {"run_dir": str(run_dir), "steps": result.step, "final_loss": result.loss,
                               "seconds": result.seconds, "images_per_s": result.images_per_s,
                               "skipped_images": result.skipped, "best_top1": best["top1"],
                               "best_step": best["step"], "best_weights": best["weights"],
                               "trainable_params": trainable}
    if dist.is_main:
        last_metrics = latest.get("model") or evaluate(model)
        summary.update(last_top1=last_metrics["top1"], last_top5=last_metrics["top5"])
        save_classifier(model, cfg.model, meta, run_dir / "last")
        summary.update(last=str(run_dir / "last"), best=str(run_dir / "best"))
        if (run_dir / "log.csv").exists():
            summary["curves"] = str(plot_curve(run_dir / "log.csv", run_dir / "curves.png",
                                               title=f"fine-tuning {cfg.model}",
                                               extra=("val_top1", "ema_val_top1")))
        atomic_write(run_dir / "summary.json", lambda p: Path(p).write_text(json.dumps(summary, indent=2) + "\n"))
    distributed.barrier()
    if not math.isfinite(summary["final_loss"]):
        log.warning("the final loss is not finite")
    return summary
