"""``hieralab segment``: semantic segmentation with a light FPN head (Panoptic FPN's semantic branch) on any
encoder here, trained with the dense recipe (AdamW, layer-wise lr decay, drop path, scale-jitter and crop,
cross-entropy with pixels marked 255 ignored) through the shared :class:`~hieralab.engine.trainer.Trainer`.

Data is a folder of images and one of mask PNGs of the same names (``data.train_images``, ``data.train_masks``,
``data.val_images``, ``data.val_masks``; ADE20K's layout with ``data.reduce_zero_label``), by default the
Fashion-MNIST scenes (11 classes: background and the 10 garments). At the end the validation set is scored, on
whole images or by sliding windows (``inference``): ``metrics.json`` (``mIoU``, per-class IoU, pixel accuracy),
``predictions.png`` (image | ground truth | prediction) and ``model/`` (with ``segmenter.json``: the classes).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .. import files, seeds
from ..config import SegmentConfig, from_dict
from ..data.coco import DenseSamples, collate_dense, eval_transform, train_transform
from ..data.images import Unreadable, channels_of, load_image
from ..data.masks import IGNORE, MaskFolder
from ..data.scenes import dense_sources
from ..engine import encoder
from ..engine.artifacts import check_model, data_tag, image_files
from ..engine.dense import evaluate_segmentation, load_dense_model, save_dense_model, segment_logits
from ..engine.task import Action, Flag, Task
from ..engine.trainer import Curve, Trainer, optim_job
from ..errors import DataError
from ..models.dense import Segmenter
from ..viz.detections import draw_segmentations

log = logging.getLogger(__name__)
META = "segmenter.json"


def datasets(cfg: SegmentConfig) -> tuple[MaskFolder, MaskFolder, dict[str, Any]]:
    src = dense_sources(cfg.data)
    if not src["classes"]:
        raise DataError("data.classes: name the classes of your masks by index, e.g. "
                        "'data.classes=[background,road,car]'")
    if not src["train_masks"] or not src["val_masks"]:
        raise DataError("set data.train_masks and data.val_masks to the folders of the mask PNGs")
    d = cfg.data
    train = MaskFolder(src["train_images"], src["train_masks"], classes=src["classes"],
                       reduce_zero_label=d.reduce_zero_label, limit=d.limit)
    val = MaskFolder(src["val_images"], src["val_masks"], classes=src["classes"],
                     reduce_zero_label=d.reduce_zero_label, limit=d.limit)
    return train, val, src


def build_model(cfg: SegmentConfig, num_classes: int, start: encoder.EncoderStart) -> Segmenter:
    """The segmenter: ``cfg.model`` as the one encoder start-up decided it (``start``), the encoder's weights from
    ``start.init``."""
    model = Segmenter(encoder=cfg.model, encoder_args=start.args, num_classes=num_classes, neck=cfg.neck,
                      neck_channels=cfg.neck_channels, head_width=cfg.head_width)
    start.load_into(model)
    return model


class Normalised(torch.nn.Module):
    """A segmenter fed 0..1 images: normalises them with the data's mean and std first."""

    def __init__(self, model: Segmenter, mean, std):
        super().__init__()
        C = model.encoder.in_chans
        self.model = model
        self.register_buffer("mean", torch.tensor(list(mean)[:C]).view(1, C, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(list(std)[:C]).view(1, C, 1, 1), persistent=False)

    @property
    def backbone(self):
        return self.model.backbone

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model((x - self.mean) / self.std)


def write_results(model: Normalised, dataset: MaskFolder, out: Path, *, device, mode: str, window: int,
                  pictures: int, title: str) -> dict[str, Any]:
    """mIoU of ``dataset``: ``metrics.json`` and ``predictions.png`` in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    metrics, items = evaluate_segmentation(model, dataset, eval_transform(model.model.encoder.in_chans),
                                           dataset.classes, device=device, mode=mode, window=window, keep=pictures)
    metrics = {**metrics, "given": len(dataset), "inference": mode}
    files.write_json(out / "metrics.json", metrics)
    if items:
        draw_segmentations(items, dataset.classes, out / "predictions.png",
                           title=f"{title}: mIoU {metrics['mIoU']:.1f}")
    log.info("%s: mIoU %.2f, pixel accuracy %.2f", title, metrics["mIoU"], metrics["pixel_accuracy"])
    return metrics


def run(cfg: SegmentConfig, *, resume: bool = False, **options: Any) -> dict[str, Any]:
    """Train, then score the validation set; returns the summary (with mIoU)."""
    check_model(cfg.model, cfg.model_args, mae=False)
    with Trainer(cfg, task="segment", resume=resume, **options) as trainer:
        train_set, val_set, src = datasets(cfg)
        start = encoder.plan(cfg.model, cfg.model_args, cfg.init, data_channels=channels_of(
            [p for p, _ in train_set.samples]), source=src["train_images"], drop_path=cfg.drop_path)
        mean, std = encoder.normalisation(cfg.init, cfg.data, src["mean"], src["std"])
        torch.manual_seed(seeds.seed_int(cfg.seed, "init"))
        model = build_model(cfg, len(src["classes"]), start).to(trainer.device)
        net = Normalised(model, mean, std).to(trainer.device)
        d = cfg.data
        samples = DenseSamples(train_set, train_transform(d.img_size, scale_range=d.scale_range, hflip=d.hflip,
                                                          boxes=False, mask_fill=IGNORE, channels=start.in_chans),
                               seed=cfg.seed)
        log.info("segmenter on %s: %d train / %d val images, %d classes, %d channels", cfg.model, len(train_set),
                 len(val_set), len(src["classes"]), start.in_chans)
        train_model = trainer.wrap(net)

        def forward(batch: dict[str, Any], step: int, k: int) -> torch.Tensor:
            x = torch.stack(batch["x"]).to(trainer.device)  # [B, C, S, S]: the training crops share one size
            y = torch.stack([t["mask"] for t in batch["target"]]).long().to(trainer.device)  # [B, S, S]
            return F.cross_entropy(train_model(x).float(), y, ignore_index=IGNORE)  # fp32 under precision=bf16

        def outputs(run_dir: Path) -> dict[str, Any]:
            save_dense_model(model, run_dir / "model", "segmenter", META, {
                "classes": src["classes"], "mean": list(mean), "std": list(std), "encoder": cfg.model})
            metrics = write_results(net, val_set, run_dir, device=trainer.device, mode=cfg.inference,
                                    window=d.img_size, pictures=cfg.pictures, title=f"segmenter on {cfg.model}")
            return {"mIoU": metrics["mIoU"], "pixel_accuracy": metrics["pixel_accuracy"], "images": metrics["images"],
                    "model": str(run_dir / "model"), "metrics": str(run_dir / "metrics.json")}

        job = optim_job(cfg.optim, model, samples, forward, recipe_lr=SegmentConfig().optim.base_lr,
                        layer_decay=cfg.layer_decay, num_workers=d.num_workers, collate=collate_dense)
        return trainer.fit(job, outputs=outputs, curve=Curve("curves.png", f"segmenter on {cfg.model}"))


def load_segmenter(run: str | Path) -> tuple[Normalised, dict[str, Any], dict[str, Any]]:
    """``(segmenter taking 0..1 images, segmenter.json, the run's config)`` of a finished segment run."""
    model, meta, cfg = load_dense_model(run, META, Segmenter, "segment")
    return Normalised(model, meta["mean"], meta["std"]).eval(), meta, cfg


def report(cfg: SegmentConfig, s: dict[str, Any]) -> list[str]:
    """The lines a finished segment run prints."""
    return [f"trained the segmenter on {cfg.model} for {s['steps']} steps in {s['seconds']:.0f} s: mIoU "
            f"{s['mIoU']:.2f} % on {s['images']} images", f"  wrote {s['run_dir']}: metrics.json, predictions.png, model/"]


def evaluate_run(run: str | Path, *, images: str | None = None, masks: str | None = None, out: str | None = None,
                 device: str = "cpu", inference: str = "whole", pictures: int = 8, limit: int | None = None,
                 overwrite: bool = False) -> dict[str, Any]:
    """mIoU of a finished segment run on its validation set or another image + mask folder pair (the first
    ``limit`` images)."""
    if limit is not None and limit < 1:
        raise ValueError(f"--limit {limit}: must be at least 1")
    net, meta, cfg = load_segmenter(run)
    parsed = from_dict(SegmentConfig, cfg) if cfg else SegmentConfig()
    if images is None:
        src = dense_sources(parsed.data)
        images, masks = src["val_images"], src["val_masks"]
    if masks is None:
        raise ValueError("--masks: the folder of the mask PNGs of --images")
    dataset = MaskFolder(images, masks, classes=meta["classes"], reduce_zero_label=parsed.data.reduce_zero_label,
                         limit=limit)
    target = Path(out) if out else Path(run) / f"eval-{data_tag([images])}"
    with files.output_folder(target, overwrite=overwrite, command="eval") as work:
        metrics = write_results(net.to(device), dataset, work, device=device, mode=inference,
                                window=parsed.data.img_size, pictures=pictures,
                                title=f"segmenter on {meta['encoder']}")
    return {**metrics, "out": str(target)}


def eval_report(m: dict[str, Any]) -> list[str]:
    return [f"mIoU {m['mIoU']:.2f} %, pixel accuracy {m['pixel_accuracy']:.2f} % on {m['images']} images"
            + (f" ({m['given'] - m['images']} unreadable, skipped)" if m["given"] > m["images"] else ""),
            f"  wrote {m['out']}/metrics.json and predictions.png"]


@torch.no_grad()
def predict_images(run: str | Path, inputs: list[str], *, out: str | None = None, inference: str = "whole",
                   device: str = "cpu", overwrite: bool = False) -> dict[str, Any]:
    """Class masks of a finished segment run for new images (files and folders; colour or grey, converted to the
    encoder's channels): one PNG of class indices per image in ``out/masks/`` (default ``<run>/predict-<inputs>``;
    ``name.png``, ``name-2.png`` when two inputs share a name), ``masks.json`` (per input: its mask, or why it
    could not be read) and ``predictions.png``."""
    net, meta, cfg = load_segmenter(run)
    net.to(device)
    window = (from_dict(SegmentConfig, cfg) if cfg else SegmentConfig()).data.img_size
    tf = eval_transform(net.model.encoder.in_chans)
    paths = image_files(inputs)
    target = Path(out) if out else Path(run) / f"predict-{data_tag(inputs)}"
    written, items, bad, rows, names = [], [], [], [], set()
    with files.output_folder(target, overwrite=overwrite, command="predict") as work:
        (work / "masks").mkdir()
        for path in paths:
            try:
                image = tf(load_image(path), {})[0]
            except Exception as e:
                bad.append(f"{path} ({Unreadable.of(path, e).reason})")
                rows.append({"file": str(path), "error": Unreadable.of(path, e).reason})
                continue
            pred = segment_logits(net, image[None].to(device), mode=inference, window=window).argmax(1)[0].cpu()
            name = unique_name(path.stem, names)
            png = Image.fromarray(pred.numpy().astype(np.uint8))
            files.atomic_write(work / "masks" / f"{name}.png", lambda p, png=png: png.save(p, format="PNG"))
            written.append(str(target / "masks" / f"{name}.png"))
            rows.append({"file": str(path), "mask": f"masks/{name}.png"})
            if len(items) < 8:
                items.append((image, torch.full_like(pred, IGNORE), pred))
        if items:
            draw_segmentations(items, meta["classes"], work / "predictions.png",
                               title=f"segmenter on {meta['encoder']} (new images: no ground truth)")
        files.write_json(work / "masks.json", rows)
    for line in bad[:5]:
        log.warning("unreadable, skipped: %s", line)
    return {"out": str(target), "masks": written, "images": len(written), "unreadable": len(bad)}


def predict_report(r: dict[str, Any]) -> list[str]:
    return [f"{len(r['masks'])} masks for {r['images']} images" + (f" ({r['unreadable']} unreadable)"
                                                                  if r["unreadable"] else "") + f"; wrote {r['out']}"]


def unique_name(stem: str, taken: set[str]) -> str:
    """``stem``, or ``stem-2``, ``stem-3``, ... when taken (two inputs of the same name from different folders must
    not write one mask file); the name returned is added to ``taken``."""
    name, n = stem, 1
    while name in taken:
        n += 1
        name = f"{stem}-{n}"
    taken.add(name)
    return name


TASK = Task(
    name="segment", config=SegmentConfig, run=run, report=report,
    help="train a semantic segmenter on an encoder; image + mask-PNG folders (default: the Fashion-MNIST scenes); "
         "mIoU at the end",
    description="Defaults <- --preset <- key=value overrides (SegmentConfig), e.g. data.train_images=img/ "
                "data.train_masks=masks/ 'data.classes=[sky,road]'",
    example="init=runs/mae_hiera_fmnist max_steps=300 out_dir=runs/segment",
    evaluate=Action(evaluate_run, eval_report, flags=(
        Flag("--images", "detect / segment: the folder of the images of --ann / --masks"),
        Flag("--masks", "segment: the folder of mask PNGs (default: the run's validation data)"),
        Flag("--limit", "only the first N images", type=int),
        Flag("--inference", "segment: whole images or sliding windows", default="whole", choices=("whole", "slide")))),
    predict=Action(predict_images, predict_report, flags=(
        Flag("--inference", "segment: whole images or sliding windows", default="whole", choices=("whole", "slide")),)),
    model_folders=("model",), legacy_file=META)
