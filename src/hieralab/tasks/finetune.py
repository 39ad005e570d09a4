"""``hieralab finetune``: supervised training of any encoder, from an MAE run, an official checkpoint or scratch.

The MAE / Hiera recipe through timm's implementations: layer-wise lr decay (``param_groups_layer_decay`` over the
models' layer ids), drop path, RandAugment and random erasing (``create_transform``), mixup / cutmix with label
smoothing (``Mixup``, ``SoftTargetCrossEntropy``), warmup + cosine, an optional EMA of the weights (``ModelEmaV3``).
Partial fine-tuning (``trainable_blocks=k``) trains only the last k blocks, the final norm and the head.

The task builds the classifier, the data and the step's forward, plus the validation it runs every epoch; the
shared :class:`~hieralab.engine.trainer.Trainer` runs it. It writes ``last/`` and ``best/`` (``save_pretrained``
folders with ``classifier.json``), beside the Trainer's ``log.csv``, ``tb/``, ``curves.png`` and ``summary.json``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from timm.data import Mixup
from timm.data.mixup import mixup_target
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.utils import ModelEmaV3
from torch import nn

from .. import seeds
from ..config import FinetuneConfig
from ..data.pipeline import SeededSamples, check_repeat_aug, data_channels, labelled_splits, model_channels
from ..data.transforms import eval_transform, finetune_transform, preprocessing
from ..data.video import video_eval_transform, video_train_transform
from ..engine import distributed
from ..engine.artifacts import (check_model, is_video_model, requested_channels, resolve_weights, save_classifier,
                                saved_arguments)
from ..engine.evaluate import classification_metrics, predict_logits
from ..engine.optim import build_adamw
from ..engine.schedule import Schedule
from ..engine.trainer import Curve, Job, Trainer, lower_lr_hint
from ..models.checkpoint import load_checkpoint
from ..models.factory import create_model

log = logging.getLogger(__name__)


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


def build_model(cfg: FinetuneConfig, num_classes: int, in_chans: int | None = None) -> nn.Module:
    """The classifier: ``cfg.model`` (at the architecture ``init`` was saved with) with a head for
    ``num_classes``, its weights from ``init`` and a near-zero new head, as MAE fine-tuning starts."""
    init = resolve_weights(cfg.init) if cfg.init else None
    args = {**(saved_arguments(init, cfg.model) if init else {}), "num_classes": num_classes,
            "drop_path_rate": cfg.drop_path, **cfg.model_args, **({"in_chans": in_chans} if in_chans else {})}
    model = create_model(cfg.model, **args)
    if init:
        missing = load_checkpoint(model, init)
        log.info("init from %s (%d tensors not in it: %s)", cfg.init, len(missing), ", ".join(missing[:4]))
        head = model.get_classifier()
        if any(k.startswith(f"{model.classifier_name()}.") for k in missing) and isinstance(head, nn.Linear):
            nn.init.trunc_normal_(head.weight, std=2e-5)  # MAE fine-tuning: a near-zero new head
            nn.init.zeros_(head.bias)
    if cfg.trainable_blocks is not None:
        freeze_all_but_last_blocks(model, cfg.trainable_blocks)
    return model


SMALL_DATA = 10_000  # images: below this, the ImageNet recipe's budget is checked (warn_if_underfitting)


def warn_if_underfitting(cfg: FinetuneConfig, images: int, world: int, repeats: int, mixing: bool) -> str | None:
    """A warning (logged and returned) when a small dataset gets the large-data recipe: few optimizer steps, a
    batch-scaled lr far below the rest of the recipe's, or mixup / cutmix on a few images per class."""
    if images >= SMALL_DATA:
        return None
    o = cfg.optim
    schedule = Schedule.build(samples=images, batch_size=o.batch_size, accum_steps=o.accum_steps, world=world,
                              epochs=cfg.epochs, max_steps=None, base_lr=o.base_lr, warmup_epochs=o.warmup_epochs,
                              clips_per_sample=repeats)
    reasons = ([f"only {schedule.total} optimizer steps"] if schedule.total < 300 else []) + \
              ([f"lr {schedule.lr:.2g} (the batch-scaled rule at batch {o.batch_size * o.accum_steps * world})"]
               if schedule.lr < 1e-4 else []) + (["mixup / cutmix on"] if mixing else [])
    if not reasons:
        return None
    message = (f"{images} training images with {', '.join(reasons)}: the default (ImageNet) recipe tends to "
               "underfit this little data; try --preset finetune_small (lr 5e-4 at batch 16, no mixup / cutmix, "
               "50 epochs) or raise optim.base_lr and epochs")
    log.warning(message)
    return message


def run(cfg: FinetuneConfig, *, resume: bool = False, **options: Any) -> dict[str, Any]:
    """Train and evaluate; returns the summary (best and last top-1, where things were written)."""
    check_model(cfg.model, cfg.model_args, mae=False)
    with Trainer(cfg, task="finetune", resume=resume, **options) as trainer:
        device, dist, d, a, o = trainer.device, trainer.dist, cfg.data, cfg.aug, cfg.optim
        video = is_video_model(cfg.model, cfg.model_args)
        train_set, val_set, classes, mean, std = labelled_splits(d, cfg.val_source, cfg.val_fraction, video=video)
        init = resolve_weights(cfg.init) if cfg.init else None
        channels = 3 if video else model_channels(requested_channels(cfg.model, cfg.model_args, init),
                                                  data_channels(train_set), d.source)
        torch.manual_seed(seeds.seed_int(cfg.seed, "init"))  # the initial weights (and a fresh head)
        model = build_model(cfg, len(classes), channels).to(device)
        meta: dict[str, Any] = {"classes": classes, "mean": list(mean), "std": list(std), "img_size": d.img_size,
                                "channels": model.in_chans,
                                "preprocess": preprocessing(d.img_size, mean, std, channels=model.in_chans)}
        repeats = check_repeat_aug(d, video)
        if video:  # one crop, flip and RandAugment for all frames of a clip, erasing in the same box (MAE-ST)
            frames = d.num_frames or model.config["input_size"][0]
            train_tf = video_train_transform(frames, d.frame_stride, d.img_size, mean, std, scale=a.crop_scale,
                                             hflip=a.hflip > 0, repeats=repeats, randaug=a.randaug, reprob=a.reprob,
                                             decoder=d.video_decoder)
            val_tf = video_eval_transform(frames, d.frame_stride, d.img_size, mean, std,  # 1 view while training
                                          decoder=d.video_decoder)
            meta.update(num_frames=frames, frame_stride=d.frame_stride)
        else:
            train_tf = finetune_transform(d.img_size, mean, std, channels=model.in_chans, randaug=a.randaug,
                                          reprob=a.reprob, scale=a.crop_scale, hflip=a.hflip)
            val_tf = eval_transform(d.img_size, mean, std, channels=model.in_chans)
        samples = SeededSamples(train_set, train_tf, seed=cfg.seed, repeats=repeats, shuffle_buffer=d.shuffle_buffer)
        optimizer = build_adamw(model, lr=o.base_lr, weight_decay=o.weight_decay, betas=o.betas,
                                layer_decay=cfg.layer_decay)
        ema = ModelEmaV3(model, decay=cfg.ema_decay) if cfg.ema_decay else None
        mixing = a.mixup > 0 or a.cutmix > 0
        mixup = Mixup(mixup_alpha=a.mixup, cutmix_alpha=a.cutmix, label_smoothing=a.smoothing,
                      num_classes=len(classes)) if mixing else None
        criterion = (SoftTargetCrossEntropy() if mixing else
                     LabelSmoothingCrossEntropy(a.smoothing) if a.smoothing > 0 else nn.CrossEntropyLoss())
        warn_if_underfitting(cfg, len(train_set), dist.world, repeats, mixing)
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        log.info("%s: %d train / %d val images, %d classes, %d channels, layer decay %s, %.2fM trainable parameters",
                 cfg.model, len(train_set), len(val_set), len(classes), model.in_chans, cfg.layer_decay,
                 trainable / 1e6)
        train_model = trainer.wrap(model)  # DDP / compiled

        def forward(batch: dict[str, Any], step: int, k: int) -> torch.Tensor:
            x, y = batch["x"].to(device, non_blocking=True), batch["label"].to(device)
            if mixup is not None and len(x) % 2:  # timm's Mixup pairs images: an odd batch (a skipped file) loses one
                if len(x) == 1:
                    return criterion(train_model(x), mixup_target(y, len(classes), 1.0, a.smoothing))
                x, y = x[:-1], y[:-1]
            if mixup is not None:  # draws from numpy, which the Trainer seeds per micro-batch ("mixup" stream)
                if x.dim() == 5:  # video: one mixup / cutmix box for all frames (time folded into channels)
                    C = x.shape[1]
                    x, y = mixup(x.flatten(1, 2), y)
                    x = x.unflatten(1, (C, -1))
                else:
                    x, y = mixup(x, y)
            return criterion(train_model(x), y)

        best: dict[str, Any] = {"top1": -1.0, "step": 0, "weights": "model"}
        latest: dict[str, dict[str, float]] = {}  # the newest evaluation of the model (and the EMA)
        def evaluate(weights: nn.Module) -> dict[str, float]:
            logits, labels = predict_logits(weights, val_set, val_tf, device=device, desc="validation")
            return classification_metrics(logits, labels)

        def after_step(step: int) -> dict[str, Any]:
            if ema is not None:
                ema.update(model, step=step)
            schedule = trainer.schedule  # evaluate every epoch (or eval_every steps) and at the end
            if step % (cfg.eval_every or schedule.per_epoch) and step != schedule.stop:
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
                        save_classifier(weights, cfg.model, meta, trainer.dir / "best")
                model.train()
            distributed.barrier()
            return out

        def outputs(run_dir: Path) -> dict[str, Any]:
            last = latest.get("model") or evaluate(model)
            save_classifier(model, cfg.model, meta, run_dir / "last")
            return {"best_top1": best["top1"], "best_step": best["step"], "best_weights": best["weights"],
                    "last_top1": last["top1"], "last_top5": last["top5"], "trainable_params": trainable,
                    "last": str(run_dir / "last"), "best": str(run_dir / "best")}

        job = Job(model=model, optimizer=optimizer, samples=samples, forward=forward, batch_size=o.batch_size,
                  base_lr=o.base_lr, lower_lr=lower_lr_hint("optim.base_lr", o.base_lr, FinetuneConfig().optim.base_lr),
                  accum_steps=o.accum_steps, warmup_epochs=o.warmup_epochs, min_lr=o.min_lr, clip_grad=o.clip_grad,
                  clips_per_sample=repeats, num_workers=d.num_workers,
                  checkpoint=nn.ModuleDict({"model": model, "ema": ema}) if ema else model,
                  after_step=after_step, state=lambda: {"best": dict(best)},
                  restore=lambda state: best.update(state.get("best", {})))
        return trainer.fit(job, outputs=outputs, curve=Curve("curves.png", f"fine-tuning {cfg.model}",
                                                             extra=("val_top1", "val_top5", "ema_val_top1")))
