"""``hieralab detect``: object detection and instance segmentation with torchvision's Mask R-CNN (default),
RetinaNet or FCOS on any encoder here, trained with ViTDet's recipe (AdamW, layer-wise lr decay, drop path,
scale-jitter and crop) through the shared :class:`~hieralab.engine.trainer.Trainer`.

Data is COCO JSON + an image folder (``data.train_ann``, ``data.train_images``, ``data.val_ann``,
``data.val_images``), by default the Fashion-MNIST scenes. At the end the validation set is scored with
pycocotools: ``metrics.json`` (``bbox_AP``, ``bbox_AP50``, ``segm_AP``, ... in %), ``predictions.json`` (COCO's
results format), ``predictions.png`` (predictions beside the ground truth) and ``model/`` (``save_pretrained``,
with ``detector.json``: classes, category ids, what the boxes are of).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from ..progress import bar as tqdm

from .. import files, seeds
from ..config import DetectConfig, from_dict
from ..data.coco import CocoInstances, DenseSamples, collate_dense, eval_transform, train_transform
from ..data.images import Unreadable, channels_of, load_image
from ..data.scenes import dense_sources
from ..engine import encoder
from ..engine.artifacts import check_model, data_tag, image_files
from ..engine.dense import load_dense_model, predict_detections, save_dense_model
from ..engine.task import Action, Flag, Task
from ..engine.trainer import Curve, Trainer, optim_job
from ..errors import DataError
from ..metrics.coco import coco_metrics, to_coco_results
from ..models.dense import Detector
from ..viz.detections import draw_detections

log = logging.getLogger(__name__)
META = "detector.json"


def build_model(cfg: DetectConfig, num_classes: int, start: encoder.EncoderStart, mean, std) -> Detector:
    """The detector: ``cfg.model`` as the one encoder start-up decided it (``start``), ``num_classes`` +
    background, the encoder's weights from ``start.init``."""
    min_size = cfg.min_size or cfg.data.img_size
    model = Detector(encoder=cfg.model, encoder_args=start.args, head=cfg.head, num_classes=num_classes + 1,
                     neck=cfg.neck, neck_channels=cfg.neck_channels, min_size=min_size,
                     max_size=cfg.max_size or 2 * min_size, image_mean=mean, image_std=std,
                     box_head_dim=cfg.box_head_dim, mask_head_layers=cfg.mask_head_layers, roi_batch=cfg.roi_batch)
    start.load_into(model)
    return model


def datasets(cfg: DetectConfig) -> tuple[CocoInstances, CocoInstances, dict[str, Any]]:
    src = dense_sources(cfg.data)
    masks = cfg.head == "maskrcnn"
    train = CocoInstances(src["train_ann"], src["train_images"], masks=masks, limit=cfg.data.limit)
    val = CocoInstances(src["val_ann"], src["val_images"], masks=masks, limit=cfg.data.limit)
    if train.classes != val.classes:
        raise DataError(f"the validation categories ({', '.join(val.classes[:4])}, ...) are not the training ones "
                        f"({', '.join(train.classes[:4])}, ...)")
    return train, val, src


def score(model: Detector, dataset: CocoInstances, *, device: torch.device | str = "cpu", with_masks: bool = True
          ) -> tuple[dict[str, float], list[dict[str, Any]], str, list]:
    """COCO box (and mask) AP of ``model`` on ``dataset``: ``(metrics, COCO results, the summary table,
    predictions)``."""
    predictions = predict_detections(model, dataset, eval_transform(model.encoder.in_chans), device=device)
    results = to_coco_results(predictions, dataset.category_id)
    metrics, table = coco_metrics(dataset.coco, results, ("bbox", "segm") if with_masks else ("bbox",),
                                  image_ids=dataset.ids)
    return metrics, results, table, predictions


def write_results(model: Detector, dataset: CocoInstances, out: Path, *, device, pictures: int, threshold: float,
                  title: str) -> dict[str, Any]:
    """Score ``dataset`` and write ``metrics.json``, ``predictions.json``, ``coco_summary.txt`` and
    ``predictions.png`` to ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    with_masks = model.head_kind == "maskrcnn"
    metrics, results, table, predictions = score(model, dataset, device=device, with_masks=with_masks)
    files.write_json(out / "predictions.json", results)
    files.write_text(out / "coco_summary.txt", table)
    metrics = {**metrics, "images": len(predictions), "given": len(dataset), "detections": len(results)}
    files.write_json(out / "metrics.json", metrics)
    if pictures:
        by_id = dict(predictions)  # the readable images' detections
        items = []
        tf = eval_transform(model.encoder.in_chans)
        for i in range(len(dataset)):
            image, truth = dataset[i]
            if truth["image_id"] in by_id:
                items.append((tf(image, truth)[0], truth, by_id[truth["image_id"]]))
                if len(items) == pictures:
                    break
        draw_detections(items, dataset.classes, out / "predictions.png", threshold=threshold,
                        title=f"{title}: box AP {metrics['bbox_AP']:.1f}"
                              + (f", mask AP {metrics['segm_AP']:.1f}" if "segm_AP" in metrics else ""))
    log.info("%s: box AP %.2f (AP50 %.2f)%s", title, metrics["bbox_AP"], metrics["bbox_AP50"],
             f", mask AP {metrics['segm_AP']:.2f}" if "segm_AP" in metrics else "")
    return metrics


def run(cfg: DetectConfig, *, resume: bool = False, **options: Any) -> dict[str, Any]:
    """Train, then score the validation set; returns the summary (with the COCO metrics)."""
    check_model(cfg.model, cfg.model_args, mae=False)
    with Trainer(cfg, task="detect", resume=resume, **options) as trainer:
        train_set, val_set, src = datasets(cfg)
        images = [train_set.image_dir / i["file_name"] for i in train_set.coco.imgs.values()]
        start = encoder.plan(cfg.model, cfg.model_args, cfg.init, data_channels=channels_of(images),
                             source=src["train_images"], drop_path=cfg.drop_path)
        mean, std = encoder.normalisation(cfg.init, cfg.data, src["mean"], src["std"])
        torch.manual_seed(seeds.seed_int(cfg.seed, "init"))
        model = build_model(cfg, len(train_set.classes), start, mean, std).to(trainer.device)
        d = cfg.data
        samples = DenseSamples(train_set, train_transform(d.img_size, scale_range=d.scale_range, hflip=d.hflip,
                                                          channels=start.in_chans), seed=cfg.seed)
        log.info("%s %s: %d train / %d val images, %d classes, %d channels", cfg.head, cfg.model, len(train_set),
                 len(val_set), len(train_set.classes), start.in_chans)
        train_model = trainer.wrap(model)  # DDP / compiled

        def forward(batch: dict[str, Any], step: int, k: int) -> torch.Tensor:
            images = [x.to(trainer.device) for x in batch["x"]]
            targets = [{n: v.to(trainer.device) if isinstance(v, torch.Tensor) else v for n, v in t.items()}
                       for t in batch["target"]]
            return sum(loss.float() for loss in train_model(images, targets).values())

        def outputs(run_dir: Path) -> dict[str, Any]:
            save_dense_model(model, run_dir / "model", "detector", META, {"classes": train_set.classes,
                             "category_ids": train_set.cat_ids, "encoder": cfg.model, "head": cfg.head})
            metrics = write_results(model, val_set, run_dir, device=trainer.device, pictures=cfg.pictures,
                                    threshold=cfg.score_threshold, title=f"{cfg.head} on {cfg.model}")
            return {**metrics, "model": str(run_dir / "model"), "metrics": str(run_dir / "metrics.json")}

        job = optim_job(cfg.optim, model, samples, forward, recipe_lr=DetectConfig().optim.base_lr,
                        layer_decay=cfg.layer_decay, num_workers=d.num_workers, collate=collate_dense)
        return trainer.fit(job, outputs=outputs, curve=Curve("curves.png", f"{cfg.head} on {cfg.model}"))


def report(cfg: DetectConfig, s: dict[str, Any]) -> list[str]:
    """The lines a finished detect run prints."""
    return [f"trained {cfg.head} on {cfg.model} for {s['steps']} steps in {s['seconds']:.0f} s: {_ap(s)}",
            f"  wrote {s['run_dir']}: metrics.json, predictions.json, predictions.png, model/"]


def _ap(m: dict[str, Any]) -> str:
    return (f"box AP {m['bbox_AP']:.2f} (AP50 {m['bbox_AP50']:.2f})" + (f", mask AP {m['segm_AP']:.2f}" if "segm_AP"
                                                                        in m else "") + f" on {m['images']} images")


def load_detector(run: str | Path) -> tuple[Detector, dict[str, Any], dict[str, Any]]:
    """``(detector in eval mode, detector.json, the run's config)`` of a finished detect run (or its ``model/``)."""
    return load_dense_model(run, META, Detector, "detect")


def evaluate_run(run: str | Path, *, ann: str | None = None, images: str | None = None, out: str | None = None,
                 device: str = "cpu", pictures: int = 8, limit: int | None = None, score_threshold: float = 0.3,
                 overwrite: bool = False) -> dict[str, Any]:
    """Score a finished detect run on its validation set or another COCO file (``ann`` + ``images``; the first
    ``limit`` images); the results go to ``out`` (default: ``<run>/eval-<data>/``)."""
    _check_threshold(score_threshold)
    if limit is not None and limit < 1:
        raise ValueError(f"--limit {limit}: must be at least 1")
    model, meta, cfg = load_detector(run)
    if ann is None:  # the run's own validation data
        src = dense_sources(from_dict(DetectConfig, cfg).data)
        ann, images = src["val_ann"], src["val_images"]
    if images is None:
        raise ValueError("--images: the folder of the images of --ann")
    dataset = CocoInstances(ann, images, masks=model.head_kind == "maskrcnn", limit=limit)
    if dataset.classes != meta["classes"]:
        raise DataError(f"{ann} has the categories {dataset.classes[:4]}..., the detector {meta['classes'][:4]}...")
    target = Path(out) if out else Path(run) / f"eval-{data_tag([ann])}"
    with files.output_folder(target, overwrite=overwrite, command="eval") as work:
        metrics = write_results(model.to(device), dataset, work, device=device, pictures=pictures,
                                threshold=score_threshold, title=f"{meta['head']} on {meta['encoder']}")
    return {**metrics, "out": str(target)}


def _check_threshold(value: float) -> None:
    if not 0 <= value <= 1:
        raise ValueError(f"--score-threshold {value}: must be in [0, 1]")


def eval_report(m: dict[str, Any]) -> list[str]:
    return [_ap(m) + (f" ({m['given'] - m['images']} unreadable, skipped)" if m["given"] > m["images"] else ""),
            f"  wrote {m['out']}/metrics.json, predictions.json, predictions.png"]


@torch.no_grad()
def predict_images(run: str | Path, inputs: list[str], *, out: str | None = None, score_threshold: float = 0.3,
                   device: str = "cpu", overwrite: bool = False) -> dict[str, Any]:
    """Detections of a finished detect run on new images (files and folders), colour or grey (converted to the
    encoder's channels): ``detections.json`` (per file: boxes x0, y0, x1, y1, class names, scores at least
    ``score_threshold``, or why it could not be read) and ``detections.png`` in ``out`` (default
    ``<run>/predict-<inputs>``)."""
    _check_threshold(score_threshold)
    model, meta, _ = load_detector(run)
    model.to(device)
    paths = image_files(inputs)
    tf = eval_transform(model.encoder.in_chans)
    target = Path(out) if out else Path(run) / f"predict-{data_tag(inputs)}"
    rows, items, names = [], [], []
    with files.output_folder(target, overwrite=overwrite, command="predict") as work:
        for path in tqdm(paths, desc="detect", disable=len(paths) < 8, leave=False):
            try:
                image = tf(load_image(path), {})[0]
            except Exception as e:
                rows.append({"file": str(path), "error": Unreadable.of(path, e).reason})
                continue
            det = {k: v.cpu() for k, v in model([image.to(device)])[0].items()}
            keep = det["scores"] >= score_threshold
            rows.append({"file": str(path), "detections": [
                {"class": meta["classes"][int(label) - 1], "score": round(float(score), 4),
                 "box": [round(float(v), 1) for v in box]}
                for box, label, score in zip(det["boxes"][keep], det["labels"][keep], det["scores"][keep])]})
            if len(items) < 8:
                items.append((image, None, det))
                names.append(path.name)
        files.write_json(work / "detections.json", rows)
        if items:
            draw_detections(items, meta["classes"], work / "detections.png", threshold=score_threshold, names=names,
                            title=f"{meta['head']} on {meta['encoder']} (new images: no ground truth)")
    bad = sum("error" in r for r in rows)
    for r in [r for r in rows if "error" in r][:5]:
        log.warning("unreadable, skipped: %s (%s)", r["file"], r["error"])
    return {"out": str(target), "images": len(rows) - bad, "unreadable": bad,
            "detections": sum(len(r.get("detections", [])) for r in rows)}


def predict_report(r: dict[str, Any]) -> list[str]:
    return [f"{r['detections']} detections for {r['images']} images" + (f" ({r['unreadable']} unreadable)"
                                                                       if r["unreadable"] else "")
            + f"; wrote {r['out']}"]


THRESHOLD = Flag("--score-threshold", "detect: the score a detection needs to be kept and drawn (default 0.3; "
                 "where none passes, a picture shows the top 3 faint)", type=float, default=0.3)

TASK = Task(
    name="detect", config=DetectConfig, run=run, report=report,
    help="train a detector (Mask R-CNN, RetinaNet, FCOS) on an encoder; COCO data (default: the Fashion-MNIST "
         "scenes); box / mask AP at the end",
    description="Defaults <- --preset <- key=value overrides (hieralab/config/schema.py: DetectConfig), e.g. "
                "data.train_ann=train.json data.train_images=images/ init=runs/mae_hiera_fmnist",
    example="init=runs/mae_hiera_fmnist max_steps=300 out_dir=runs/detect",
    evaluate=Action(evaluate_run, eval_report, flags=(
        Flag("--ann", "detect: a COCO annotation file (default: the run's validation data)"),
        Flag("--images", "detect / segment: the folder of the images of --ann / --masks"),
        Flag("--limit", "only the first N images", type=int), THRESHOLD)),
    predict=Action(predict_images, predict_report, flags=(THRESHOLD,)),
    model_folders=("model",), legacy_file=META)
