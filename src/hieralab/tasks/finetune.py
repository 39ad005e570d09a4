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

import csv
import io
import logging
from pathlib import Path
from typing import Any

import torch
from PIL import UnidentifiedImageError
from timm.data import Mixup
from timm.data.mixup import mixup_target
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.utils import ModelEmaV3
from torch import nn

from .. import files, seeds
from ..config import FinetuneConfig
from ..data import catalog
from ..data.geometry import Geometry, takes_clips
from ..data.images import Unreadable, load_image
from ..data.pipeline import SeededSamples, build_dataset, check_repeat_aug, data_channels, labelled_splits
from ..data.transforms import finetune_transform, preprocessing
from ..data.video import video_train_transform
from ..engine import distributed, encoder
from ..engine.artifacts import (check_model, classifier_dir, data_tag, eval_folder_name, image_files, load_classifier,
                                save_classifier)
from ..engine.evaluate import predict_logits
from ..engine.schedule import Schedule
from ..engine.task import Action, Flag, Task
from ..engine.trainer import Curve, Trainer, optim_job
from ..errors import DataError
from ..metrics.classification import classification_metrics, confusion_matrix
from ..viz.figures import plot_confusion

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


def build_model(cfg: FinetuneConfig, num_classes: int, data_channels: int, source: str) -> nn.Module:
    """The classifier: ``cfg.model`` as the one encoder start-up decides it (:func:`hieralab.engine.encoder.plan`)
    with a head for ``num_classes``, its weights from ``init`` and a near-zero new head, as MAE fine-tuning starts."""
    start = encoder.plan(cfg.model, cfg.model_args, cfg.init, data_channels=data_channels, source=source,
                         drop_path=cfg.drop_path, num_classes=num_classes)
    model = start.create()
    missing = start.load(model)
    head = model.get_classifier()
    if start.init is not None and any(k.startswith(f"{model.classifier_name()}.") for k in missing) \
            and isinstance(head, nn.Linear):
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
        video = takes_clips(cfg.model, cfg.model_args)
        train_set, val_set, classes, mean, std = labelled_splits(d, cfg.val_source, cfg.val_fraction, video=video)
        torch.manual_seed(seeds.seed_int(cfg.seed, "init"))  # the initial weights (and a fresh head)
        model = build_model(cfg, len(classes), data_channels(train_set), d.source).to(device)
        mean, std = encoder.normalisation(cfg.init, d, mean, std)
        geometry = Geometry.of(model, d.img_size, num_frames=d.num_frames, frame_stride=d.frame_stride)
        meta: dict[str, Any] = {"classes": classes, "mean": list(mean), "std": list(std), **geometry.record(),
                                "preprocess": preprocessing(d.img_size, mean, std, channels=model.in_chans)}
        repeats = check_repeat_aug(d, video)
        if video:  # one crop, flip and RandAugment for all frames of a clip, erasing in the same box (MAE-ST)
            train_tf = video_train_transform(geometry.num_frames, d.frame_stride, d.img_size, mean, std,
                                             scale=a.crop_scale, hflip=a.hflip > 0, repeats=repeats,
                                             randaug=a.randaug, reprob=a.reprob, decoder=d.video_decoder)
        else:
            train_tf = finetune_transform(d.img_size, mean, std, channels=model.in_chans, randaug=a.randaug,
                                          reprob=a.reprob, scale=a.crop_scale, hflip=a.hflip)
        val_tf = geometry.eval_transform(mean, std, decoder=d.video_decoder)  # one view while training
        samples = SeededSamples(train_set, train_tf, seed=cfg.seed, repeats=repeats, shuffle_buffer=d.shuffle_buffer)
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
                    return criterion(train_model(x).float(), mixup_target(y, len(classes), 1.0, a.smoothing))
                x, y = x[:-1], y[:-1]
            if mixup is not None:  # draws from numpy, which the Trainer seeds per micro-batch ("mixup" stream)
                if x.dim() == 5:  # video: one mixup / cutmix box for all frames (time folded into channels)
                    C = x.shape[1]
                    x, y = mixup(x.flatten(1, 2), y)
                    x = x.unflatten(1, (C, -1))
                else:
                    x, y = mixup(x, y)
            return criterion(train_model(x).float(), y)  # the (log-)softmax in fp32 under precision=bf16

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

        job = optim_job(o, model, samples, forward, recipe_lr=FinetuneConfig().optim.base_lr,
                        layer_decay=cfg.layer_decay, num_workers=d.num_workers, clips_per_sample=repeats,
                        checkpoint=nn.ModuleDict({"model": model, "ema": ema}) if ema else model,
                        after_step=after_step, state=lambda: {"best": dict(best)},
                        restore=lambda state: best.update(state.get("best", {})))
        return trainer.fit(job, outputs=outputs, curve=Curve("curves.png", f"fine-tuning {cfg.model}",
                                                             extra=("val_top1", "val_top5", "ema_val_top1")))


def report(cfg: FinetuneConfig, s: dict[str, Any]) -> list[str]:
    """The lines a finished fine-tuning run prints."""
    return [f"fine-tuned {cfg.model} for {s['steps']} steps in {s['seconds']:.0f} s: best top-1 {s['best_top1']:.2f} % "
            f"(step {s['best_step']}, {s['best_weights']}), last {s['last_top1']:.2f} %",
            *(f"  {key:8s} {s[key]}" for key in ("best", "last", "curve") if key in s)]


# ---------------------------------------------------------------- a finished run: evaluate, predict
def evaluate(checkpoint: str | Path, *, data: str = catalog.DEFAULT, split: str | None = None, out: str | None = None,
             img_size: int | None = None, limit: int | None = None, device: str = "cpu", temporal_views: int = 1,
             spatial_views: int = 1, overwrite: bool = False) -> dict[str, Any]:
    """Top-1 / top-5 of a classifier (a fine-tuning run, its ``best/`` or ``last/``) on a labelled set; writes
    ``metrics.json`` and ``confusion.png`` to ``out`` (default: beside the checkpoint, in :func:`eval_folder_name`).
    A video classifier averages ``temporal_views x spatial_views`` views per clip (5 x 3 is the Kinetics protocol of
    the Hiera paper)."""
    for flag, value in (("--limit", limit), ("--img-size", img_size), ("--temporal-views", temporal_views),
                        ("--spatial-views", spatial_views)):
        if value is not None and value < 1:
            raise ValueError(f"{flag} {value}: must be at least 1")
    model, meta = load_classifier(checkpoint)
    classes = meta["classes"]
    geometry = Geometry.from_record(meta, img_size)
    split = split or catalog.held_out_split(data, "test")
    dataset, _, _, data_classes = build_dataset(data, split, limit, video=geometry.video)
    if data_classes != classes:
        raise DataError(f"the data's classes ({', '.join(data_classes[:4])}, ...) are not the classifier's "
                        f"({', '.join(classes[:4])}, ...); evaluate on data with the same class folders")
    views = (temporal_views, spatial_views) if geometry.video else None
    out_dir = Path(out) if out else classifier_dir(checkpoint) / eval_folder_name(data, split, views)
    with files.output_folder(out_dir, overwrite=overwrite, command="eval") as work:
        tf = geometry.eval_transform(meta["mean"], meta["std"], views=views or (1, 1))
        logits, labels = predict_logits(model.to(device), dataset, tf, device=device, desc="eval")
        metrics = classification_metrics(logits, labels)
        cm = confusion_matrix(logits, labels, len(classes))
        metrics.update(source=data, split=split, checkpoint=str(checkpoint), views=list(views) if views else None,
                       given=len(dataset), per_class_recall={c: round(100 * (cm[i, i] / max(1, cm[i].sum())).item(), 2)
                                                            for i, c in enumerate(classes)})
        plot_confusion(cm, classes, work / "confusion.png",
                       f"top-1 {metrics['top1']:.2f} % on {Path(data).name} {split} ({metrics['count']} of "
                       f"{len(dataset)} scored)")
        files.write_json(work / "metrics.json", metrics)
    metrics["out"] = str(out_dir)
    return metrics


def eval_report(m: dict[str, Any]) -> list[str]:
    skipped = m["given"] - m["count"]
    return [f"top-1 {m['top1']:.2f} %  top-5 {m['top5']:.2f} %  ({m['count']} images"
            + (f"; {skipped} unreadable, skipped" if skipped else "") + ")",
            f"  wrote {m['out']}/metrics.json and confusion.png"]


class _Files(torch.utils.data.Dataset):
    """Image files as ``(PIL image | Unreadable, index)``."""

    def __init__(self, paths: list[Path]):
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        try:
            return load_image(self.paths[i]), i
        except (OSError, UnidentifiedImageError, ValueError) as e:
            return Unreadable.of(self.paths[i], e), i


def predict_files(checkpoint: str | Path, inputs: list[str], *, topk: int = 5, batch_size: int = 64,
                  device: str = "cpu") -> list[dict[str, Any]]:
    """The top-k ``(label, probability)`` of every image in ``inputs`` (files and folders), batched: one row per
    file, ``{"file", "top": [(label, p), ...]}`` or ``{"file", "error"}`` for an unreadable one."""
    if topk < 1:
        raise ValueError(f"--topk {topk}: must be at least 1")
    if batch_size < 1:
        raise ValueError(f"--batch-size {batch_size}: must be at least 1")
    model, meta = load_classifier(checkpoint)
    model.to(device)
    classes, paths = meta["classes"], image_files(inputs)
    tf = Geometry.from_record(meta).eval_transform(meta["mean"], meta["std"])
    k = min(topk, len(classes))
    rows: list[dict[str, Any]] = [{"file": str(p), "error": "unreadable"} for p in paths]
    images = _Files(paths)
    try:
        scores, index = predict_logits(model, images, tf, device=device, batch_size=batch_size,
                                       desc="predict" if len(paths) > batch_size else None)
    except ValueError:  # not one readable image
        scores, index = torch.zeros(0, len(classes)), torch.zeros(0, dtype=torch.long)
    probs, top = scores.softmax(-1).topk(k, dim=1)
    for row_p, row_i, i in zip(probs.tolist(), top.tolist(), index.tolist()):
        rows[i] = {"file": str(paths[i]), "top": [(classes[j], round(v, 4)) for v, j in zip(row_p, row_i)]}
    for i, row in enumerate(rows):  # the few files that could not be read: why
        if "error" in row and isinstance(bad := images[i][0], Unreadable):
            row["error"] = bad.reason
    return rows


def write_predictions(rows: list[dict[str, Any]], path: Path, topk: int, *, overwrite: bool = False) -> Path:
    """``file, label_1, p_1, ..., label_k, p_k, error`` per file, as CSV (atomically; an existing file only with
    ``overwrite``)."""
    header = ["file"] + [f"{kind}_{i}" for i in range(1, topk + 1) for kind in ("label", "p")] + ["error"]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    for r in rows:
        cells = [x for label, p in r.get("top", []) for x in (label, p)]
        w.writerow([r["file"], *cells, *[""] * (2 * topk - len(cells)), r.get("error", "")])
    path.parent.mkdir(parents=True, exist_ok=True)
    text = buf.getvalue()
    return files.atomic_write(path, lambda p: Path(p).write_text(text), exclusive=not overwrite)


def predict_image(checkpoint: str, image: str, *, topk: int = 5) -> list[tuple[str, float]]:
    """The top-k ``(label, probability)`` for one image file."""
    [row] = predict_files(checkpoint, [image], topk=topk)
    if "error" in row:
        raise DataError(f"{image} is not a readable image file ({row['error']})")
    return row["top"]


def predict(checkpoint: str | Path, images: list[str], *, topk: int = 5, batch_size: int = 64,
            csv: str | None = None, overwrite: bool = False, device: str = "cpu", out: str | None = None
            ) -> dict[str, Any]:
    """``hieralab predict`` on a classifier: the top-k of every file, to ``csv`` (default for several files:
    ``<classifier>/predict-<name of the inputs>.csv``; one file alone is only printed unless ``csv`` is given)."""
    if out is not None:
        raise ValueError("--out is for detect and segment runs; a classifier's predictions go to --csv FILE")
    if csv:
        files.refuse_existing(csv, overwrite)
    rows = predict_files(checkpoint, images, topk=topk, batch_size=batch_size, device=device)
    if len(rows) == 1 and not csv:
        if "error" in rows[0]:
            raise DataError(f"{rows[0]['file']} is not a readable image file ({rows[0]['error']})")
        return {"rows": rows, "topk": topk}
    path = Path(csv) if csv else classifier_dir(checkpoint) / f"predict-{data_tag(images)}.csv"
    width = min(topk, max((len(r.get("top", [])) for r in rows), default=topk)) or topk
    write_predictions(rows, path, width, overwrite=overwrite or not csv)
    return {"rows": rows, "topk": topk, "csv": str(path)}


def predict_report(r: dict[str, Any]) -> list[str]:
    rows = r["rows"]
    if "csv" not in r:  # one image: its top-k, one per line
        return [f"{p:7.2%}  {label}" for label, p in rows[0]["top"]]
    lines = [f"{row['file']}: " + (row["error"] if "error" in row else
                                   ", ".join(f"{label} {p:.1%}" for label, p in row["top"][:3])) for row in rows[:20]]
    if len(rows) > 20:
        lines.append(f"... and {len(rows) - 20} more")
    bad = sum("error" in row for row in rows)
    lines.append(f"wrote the top-{r['topk']} of {len(rows)} files to {r['csv']}" + (f" ({bad} unreadable)" if bad else ""))
    return lines


TASK = Task(
    name="finetune", config=FinetuneConfig, run=run, report=report,
    help="fine-tune an encoder (from an MAE run, an official checkpoint or scratch) on Fashion-MNIST or a labelled "
         "image folder",
    example="model=hiera_mini_32 init=runs/mae_hiera_fmnist epochs=5 data.source=~/labelled",
    flags=(Flag("--trainable-blocks", "partial fine-tuning: train only the last k blocks (and the final norm and "
                "head)", type=int, override="trainable_blocks"),),
    evaluate=Action(evaluate, eval_report, flags=(
        Flag("--data", f"{catalog.describe_sources()} or a labelled image folder / clip list "
             f"(default: {catalog.DEFAULT})", default=catalog.DEFAULT),
        Flag("--split", "a built-in dataset's split (default: its held-out one)"),
        Flag("--img-size", "default: the size it was trained at", type=int),
        Flag("--limit", "only the first N images", type=int),
        Flag("--temporal-views", "video: clips per video, evenly spaced (5 for the Kinetics protocol)", type=int,
             default=1),
        Flag("--spatial-views", "video: crops per clip along the long side (3)", type=int, default=1))),
    predict=Action(predict, predict_report, flags=(
        Flag("--topk", "labels per image (default 5)", type=int, default=5),
        Flag("--batch-size", "images per batch (default 64)", type=int, default=64),
        Flag("--csv", "write the top-k of every file here (default for several files: "
             "<classifier>/predict-<name of the inputs>.csv)"))),
    model_folders=("best", "last"), legacy_file="classifier.json")
