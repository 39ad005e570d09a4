"""``hieralab action``: spatio-temporal action detection (AVA) on a video encoder, trained through the shared
:class:`~hieralab.engine.trainer.Trainer`.

Each keyframe's clip (``data.num_frames`` frames ``data.frame_stride`` apart, centred on it) goes through the
encoder; an RoI head (:class:`~hieralab.models.action.ActionDetector`, SlowFast's) classifies each person's box into
actions, several at once (a sigmoid per action). Training boxes are the ground truth (moved by up to
``data.box_jitter``); evaluation boxes are ``data.val_boxes`` (a person detector's, as AVA's protocol has) or the
ground truth. Data is AVA's format (annotation CSVs, videos or frame folders, a ``.pbtxt`` label map), by default the
bundled action clips. At the end the validation keyframes are scored with the official frame AP at IoU 0.5
(:mod:`hieralab.metrics.ava`): ``metrics.json`` (``frame_mAP`` and per-class AP in %, and what was scored),
``detections.csv`` (AVA's results format), ``predictions.png`` and ``motion.png``, and ``model/`` (``save_pretrained``
with ``action.json``: classes, label map, geometry).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from .. import files, seeds
from ..config import ActionConfig, ActionDataConfig, from_dict
from ..data.ava import (AVA_FRAMES, SECONDS, AvaClips, FrameFolders, FrameRule, Keyframe, Person, Row, VideoFiles,
                        format_rows, read_annotations, read_csv, read_excluded, read_label_map, read_person_boxes,
                        multi_hot, video_fps)
from ..data.fmnist_actions import action_sources
from ..data.geometry import Geometry
from ..data.images import IMAGENET_MEAN, IMAGENET_STD, Unreadable, drop_unreadable
from ..data.video import VIDEO_EXTENSIONS, decode_frames, video_frame_count
from ..engine import encoder
from ..engine.artifacts import check_model, data_tag, input_files
from ..engine.dense import load_dense_model, save_dense_model
from ..engine.task import Action, Flag, Task
from ..engine.trainer import Curve, Trainer, optim_job
from ..errors import ConfigError, DataError
from ..metrics.ava import evaluate
from ..models.action import ActionDetector
from ..progress import bar as tqdm
from ..viz.actions import Actor, draw_actions, draw_motion

log = logging.getLogger(__name__)
META = "action.json"
BUNDLED = "actions"  # data.train_ann / val_ann naming the bundled clips
TOP_DRAWN = 3  # actions drawn per predicted box


# ---------------------------------------------------------------- data
def sources(d: ActionDataConfig) -> dict[str, Any]:
    """The files of a run's data: ``train_ann``, ``train_videos``, ``val_ann``, ``val_videos``, ``labels``,
    ``val_boxes`` (None: the ground truth), ``exclude``; the bundled clips (written first when needed) fill what
    ``d`` leaves to them."""
    bundled = None
    if BUNDLED in (d.train_ann, d.val_ann):
        bundled = action_sources(d.actions_root, train=d.actions_train, val=d.actions_val)
    elif d.labels is None:
        raise ConfigError(["data.labels: the label map (.pbtxt) of data.train_ann's actions"])
    out: dict[str, Any] = {}
    for split in ("train", "val"):
        ann = getattr(d, f"{split}_ann")
        videos = getattr(d, f"{split}_videos")
        if ann == BUNDLED:
            out[f"{split}_ann"], out[f"{split}_videos"] = bundled[f"{split}_ann"], Path(videos or bundled["videos"])
        elif videos is None:
            raise ConfigError([f"data.{split}_videos: the videos (or frame folders) of data.{split}_ann={ann}"])
        else:
            out[f"{split}_ann"], out[f"{split}_videos"] = Path(ann).expanduser(), Path(videos).expanduser()
    out["labels"] = Path(d.labels).expanduser() if d.labels else bundled["labels"]
    out["val_boxes"] = Path(d.val_boxes).expanduser() if d.val_boxes else None
    out["exclude"] = Path(d.exclude).expanduser() if d.exclude else None
    return out


def frame_source(root: Path, layout: str, decoder: str) -> FrameFolders | VideoFiles:
    return FrameFolders(root) if layout == "frames" else VideoFiles(root, decoder=decoder)


def clip_set(ann: Path, root: Path, labels: dict[int, str], d: ActionDataConfig, geometry: Geometry, *,
             excluded: set = frozenset(), boxes: Path | None = None, limit: int | None = None,
             layout: str | None = None, rule: str | None = None) -> AvaClips:
    """The keyframes of ``ann`` (the first ``limit``) as clips of ``geometry``'s frames from ``root``, with
    ``boxes``' person boxes as proposals; what was skipped (bad rows, missing videos...) is in ``.skipped``."""
    keyframes, skipped = read_annotations(ann, labels, excluded=excluded)
    if limit is not None:
        keyframes = keyframes[:limit]
    proposals = None
    if boxes is not None:
        proposals, box_skips = read_person_boxes(boxes)
        skipped.update(box_skips)
    if skipped:
        log.warning("%s: skipped %s", ann, skipped.summary())
    rule = rule or d.frame_rule
    clips = AvaClips(keyframes, frame_source(root, layout or d.frames_layout, d.video_decoder),
                     num_frames=geometry.num_frames, stride=geometry.frame_stride,
                     rule=AVA_FRAMES if rule == "ava" else SECONDS, proposals=proposals)
    clips.skipped.update(skipped)
    return clips


def prepare(clip: torch.Tensor, geometry: Geometry, *, single_frame: bool = False) -> torch.Tensor:
    """A clip ``uint8 [T, H, W, 3]`` as the model's input before normalisation: ``float [C, T, S, S]`` in 0..1,
    resized to ``geometry.img_size`` a side (boxes are fractions of the frame, so they follow), grey when the
    encoder is; ``single_frame``: the keyframe (the middle frame) repeated over the clip."""
    x = clip.permute(0, 3, 1, 2).float() / 255  # [T, 3, H, W]
    if single_frame:
        x = x[x.shape[0] // 2].expand_as(x)  # [T, 3, H, W]
    S = geometry.img_size
    x = F.interpolate(x, size=(S, S), mode="bilinear", antialias=True, align_corners=False)  # [T, 3, S, S]
    if geometry.channels == 1:
        x = x.mean(dim=1, keepdim=True)  # [T, 1, S, S]
    return x.clamp(0, 1).movedim(0, 1).contiguous()  # [C, T, S, S]


def normalise(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """``[..., C, T, H, W]`` in 0..1, normalised per channel."""
    C = x.shape[-4]
    m = torch.tensor(list(mean)[:C], dtype=x.dtype).view(C, 1, 1, 1)
    s = torch.tensor(list(std)[:C], dtype=x.dtype).view(C, 1, 1, 1)
    return (x - m) / s


def jitter_boxes(boxes: torch.Tensor, amount: float, generator: torch.Generator) -> torch.Tensor:
    """Boxes ``[N, 4]`` in 0..1 with each side moved by up to ``amount`` of the box's width / height (uniform),
    kept inside the frame and at least 1 % a side."""
    if amount == 0 or len(boxes) == 0:
        return boxes
    wh = (boxes[:, 2:] - boxes[:, :2]).repeat(1, 2)  # [N, 4]: w, h, w, h
    noise = (torch.rand(boxes.shape, generator=generator) * 2 - 1) * amount * wh  # [N, 4]
    out = (boxes + noise).clamp(0, 1)
    out[:, 2:] = torch.maximum(out[:, 2:], out[:, :2] + 0.01)
    return out.clamp(0, 1)


class ActionSamples(torch.utils.data.Dataset):
    """Training samples of :class:`AvaClips`, indexed by ``(epoch, i)`` as the Trainer's sampler asks: ``{"x":
    float [C, T, S, S] normalised, "boxes": float [N, 4] in pixels, "target": float [N, K] multi-hot}``; the box
    jitter of sample ``i`` in ``epoch`` is drawn from its own stream (``"augment"``). Unreadable clips pass through as
    :class:`Unreadable`."""

    def __init__(self, clips: AvaClips, to_input: Callable[[torch.Tensor], torch.Tensor], class_ids: Sequence[int],
                 img_size: int, *, jitter: float, seed: int):
        self.clips, self.to_input, self.class_ids = clips, to_input, list(class_ids)
        self.img_size, self.jitter, self.seed = img_size, jitter, seed

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, Any] | Unreadable:
        epoch, i = key
        item = self.clips[i]
        if isinstance(item, Unreadable):
            return item
        boxes = jitter_boxes(item["boxes"], self.jitter, seeds.generator(self.seed, "augment", epoch, i))
        return {"x": self.to_input(item["clip"]), "boxes": boxes * self.img_size,
                "target": multi_hot(item["actions"], self.class_ids)}


def collate_actions(samples: Sequence[Any]) -> dict[str, Any]:
    """Clips stacked, boxes as a list (a clip has any number of people), targets concatenated in the boxes' order:
    ``{"x": [B, C, T, H, W], "boxes": [B x [N_i, 4]], "target": [sum N_i, K], "size", "skipped", "unreadable"}``."""
    good, skipped = drop_unreadable(samples)
    batch: dict[str, Any] = {**skipped, "size": len(good), "boxes": [s["boxes"] for s in good]}
    if good:
        batch["x"] = torch.stack([s["x"] for s in good])
        batch["target"] = torch.cat([s["target"] for s in good])
    return batch


def loss_of(model: torch.nn.Module, batch: dict[str, Any], device: torch.device) -> torch.Tensor:
    """Binary cross-entropy of every box and action (multi-label, as SlowFast's AVA loss)."""
    logits = model(batch["x"].to(device), [b.to(device) for b in batch["boxes"]])  # [N, K]
    return F.binary_cross_entropy_with_logits(logits.float(), batch["target"].to(device))


# ---------------------------------------------------------------- scoring
@torch.no_grad()
def detect(model: ActionDetector, clips: AvaClips, to_input: Callable, class_ids: Sequence[int], img_size: int, *,
           proposals: bool, device: torch.device | str = "cpu", batch_size: int = 8, keep: int = 0,
           desc: str | None = "actions") -> tuple[list[Row], list[tuple], list[dict[str, Any]]]:
    """Every action's score (sigmoid) for every box of every readable keyframe: ``(detection rows, the keys
    scored, the first keep items with their scores)``. Boxes: the keyframe's proposals (a person detector's)
    when ``proposals``, else its ground truth."""
    was = model.training
    model.eval()
    rows: list[Row] = []
    scored: list[tuple] = []
    kept: list[dict[str, Any]] = []
    unreadable: list[str] = []

    def run(batch: list[dict[str, Any]]) -> None:
        boxes = [(b["proposals"][:, :4] if proposals else b["boxes"]) for b in batch]  # [N_i, 4] in 0..1
        with_boxes = [k for k, b in enumerate(boxes) if len(b)]
        probs: list[torch.Tensor] = [torch.zeros(0, len(class_ids))] * len(batch)
        if with_boxes:
            x = torch.stack([to_input(batch[k]["clip"]) for k in with_boxes]).to(device)  # [B, C, T, S, S]
            logits = model(x, [(boxes[k] * img_size).to(device) for k in with_boxes]).float().cpu()  # [N, K]
            for k, p in zip(with_boxes, logits.sigmoid().split([len(boxes[k]) for k in with_boxes])):
                probs[k] = p
        for item, b, p in zip(batch, boxes, probs):
            video, t = item["key"]
            scored.append(item["key"])
            rows.extend(Row(video, t, *(float(v) for v in box), class_ids[c], float(p[n, c]))
                        for n, box in enumerate(b.tolist()) for c in range(len(class_ids)))
            if len(kept) < keep:
                kept.append({**item, "scored_boxes": b, "probs": p})

    batch: list[dict[str, Any]] = []
    for i in tqdm(range(len(clips)), desc=desc, disable=desc is None or len(clips) < 16, leave=False):
        item = clips[i]
        if isinstance(item, Unreadable):
            unreadable.append(f"{item.path} ({item.reason})")
            continue
        batch.append({**item, "indices": clips.indices(i)})
        if len(batch) == batch_size:
            run(batch)
            batch = []
    if batch:
        run(batch)
    for where in unreadable:
        clips.skipped.add("unreadable clips", where)
    model.train(was)
    return rows, scored, kept


def score(model: ActionDetector, clips: AvaClips, ann: Path, labels: dict[int, str], meta: dict[str, Any], *,
          proposals: bool, excluded: set, top_k: int | None, device, keep: int = 0
          ) -> tuple[dict[str, Any], list[Row], list[dict[str, Any]]]:
    """Frame AP (IoU 0.5, :func:`hieralab.metrics.ava.evaluate`) of ``model`` on the keyframes of ``clips``
    against ``ann``'s ground truth of the keyframes that were scored: ``(metrics, detections, kept items)``."""
    geometry = Geometry.from_record(meta["geometry"])
    class_ids = [int(c) for c in meta["class_ids"]]

    def to_input(clip: torch.Tensor) -> torch.Tensor:
        return normalise(prepare(clip, geometry, single_frame=meta.get("single_frame", False)), meta["mean"],
                         meta["std"])

    rows, scored, kept = detect(model, clips, to_input, class_ids, geometry.img_size, proposals=proposals,
                                device=device, keep=keep)
    keys = set(scored)
    truth = [r for r in read_csv(ann, kind="annotations", class_ids=labels).rows if r.key in keys]
    result = evaluate(truth, rows, labels, excluded=excluded, top_k=top_k)
    metrics = {
        "frame_mAP": result["mAP"],
        "AP": {labels[c]: ap for c, ap in result["AP"].items()},
        "AP_by_id": {str(c): ap for c, ap in result["AP"].items()},
        "scored": {**result["scored"], "keyframes_given": len(clips) + sum(
            n for reason, n in clips.skipped.counts.items() if reason.startswith("keyframes ")),
            "keyframes_read": len(keys),
            "boxes": "person boxes" if proposals else "ground-truth boxes", "top_k": top_k,
            "data_skipped": clips.skipped.as_dict()},
    }
    return metrics, rows, kept


def write_results(model: ActionDetector, clips: AvaClips, ann: Path, labels: dict[int, str], meta: dict[str, Any],
                  out: Path, *, proposals: bool, excluded: set, top_k: int | None, device, pictures: int,
                  title: str) -> dict[str, Any]:
    """Score ``clips`` and write ``metrics.json``, ``detections.csv`` and (``pictures`` > 0) ``predictions.png``
    and ``motion.png`` to ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    metrics, rows, kept = score(model, clips, ann, labels, meta, proposals=proposals, excluded=excluded,
                                top_k=top_k, device=device, keep=pictures)
    files.write_text(out / "detections.csv", format_rows(rows, "detections"))
    metrics = {**metrics, "detections": len(rows)}
    files.write_json(out / "metrics.json", metrics)
    if pictures and kept:
        draw(kept, labels, meta, out, title=f"{title}: frame mAP {_pct(metrics['frame_mAP'])}", truth=True)
    log.info("%s: frame mAP %s on %d keyframes", title, _pct(metrics["frame_mAP"]), metrics["scored"]["keyframes"])
    return metrics


def _pct(value: float | None) -> str:
    return "n/a (no ground truth)" if value is None else f"{value:.2f}"


def draw(kept: list[dict[str, Any]], labels: dict[int, str], meta: dict[str, Any], out: Path, *, title: str,
         truth: bool, picture: str = "predictions.png") -> None:
    """``picture``: each kept keyframe's boxes with their top actions (beside the ground truth when ``truth``);
    ``motion.png``: the frames of the first one's clip."""
    geometry = Geometry.from_record(meta["geometry"])
    names = [labels.get(int(c), str(c)) for c in meta["class_ids"]]
    S = geometry.img_size
    items = []
    for it in kept:
        x = prepare(it["clip"], geometry, single_frame=meta.get("single_frame", False))  # [C, T, S, S]
        key = x[:, x.shape[1] // 2]  # [C, S, S]
        predicted = []
        for box, p in zip(it["scored_boxes"].tolist(), it["probs"]):
            top = p.topk(min(TOP_DRAWN, len(names)))
            predicted.append(Actor([v * S for v in box], [names[int(c)] for c in top.indices],
                                   top.values.tolist()))
        gt = [Actor([float(v) * S for v in box], [labels.get(a, str(a)) for a in acts])
              for box, acts in zip(it["boxes"].tolist(), it["actions"])] if truth else None
        items.append((key, gt, predicted, f"{it['key'][0]} @ {it['key'][1]:g} s"))
    draw_actions(items, out / picture, title=title)
    first = kept[0]
    x = prepare(first["clip"], geometry, single_frame=meta.get("single_frame", False))
    actors = ([Actor([float(v) * S for v in box], [labels.get(a, str(a)) for a in acts])
               for box, acts in zip(first["boxes"].tolist(), first["actions"])] if truth else
              [Actor(a.box, a.actions) for a in items[0][2]])
    draw_motion(x, actors, out / "motion.png", keyframe=x.shape[1] // 2, frame_numbers=first["indices"],
                title=f"{items[0][3]}: the clip the model sees" + (" (ground truth)" if truth else
                                                                   " (predicted top actions)"))


# ---------------------------------------------------------------- training
def run(cfg: ActionConfig, *, resume: bool = False, **options: Any) -> dict[str, Any]:
    """Train, then score the validation keyframes; returns the summary (with ``frame_mAP``)."""
    check_model(cfg.model, cfg.model_args, mae=False)
    with Trainer(cfg, task="action", resume=resume, **options) as trainer:
        d = cfg.data
        src = sources(d)
        labels, label_skips = read_label_map(src["labels"])
        if label_skips:
            log.warning("%s: skipped %s", src["labels"], label_skips.summary())
        excluded = read_excluded(src["exclude"])[0] if src["exclude"] else set()
        start = encoder.plan(cfg.model, cfg.model_args, cfg.init, data_channels=3, source=str(src["train_videos"]),
                             drop_path=cfg.drop_path)
        mean, std = encoder.normalisation(cfg.init, d, IMAGENET_MEAN, IMAGENET_STD)
        torch.manual_seed(seeds.seed_int(cfg.seed, "init"))
        model = ActionDetector(encoder=cfg.model, encoder_args=start.args, num_classes=len(labels),
                               feature=cfg.feature, dropout=cfg.dropout)
        start.load_into(model)
        model.to(trainer.device)
        geometry = Geometry.of(model.encoder, d.img_size, num_frames=d.num_frames, frame_stride=d.frame_stride)
        if d.img_size % model.encoder.size_multiple:
            raise ConfigError([f"data.img_size={d.img_size}: {cfg.model} takes sides that are multiples of "
                               f"{model.encoder.size_multiple}"])
        train_clips = clip_set(src["train_ann"], src["train_videos"], labels, d, geometry, excluded=excluded,
                               limit=d.limit)
        val_clips = clip_set(src["val_ann"], src["val_videos"], labels, d, geometry, excluded=excluded,
                             boxes=src["val_boxes"], limit=d.limit)
        if len(train_clips) == 0:
            raise DataError(f"{src['train_ann']}: no keyframe has a readable clip (skipped: "
                            f"{train_clips.skipped.summary() or 'nothing'})")
        class_ids = sorted(labels)
        meta = {"classes": [labels[c] for c in class_ids], "class_ids": class_ids,
                "label_map": {str(c): n for c, n in labels.items()}, "encoder": cfg.model, "feature": cfg.feature,
                "geometry": geometry.record(), "mean": list(mean), "std": list(std),
                "single_frame": d.single_frame, "frame_rule": d.frame_rule, "frames_layout": d.frames_layout}

        def to_input(clip: torch.Tensor) -> torch.Tensor:
            return normalise(prepare(clip, geometry, single_frame=d.single_frame), mean, std)

        samples = ActionSamples(train_clips, to_input, class_ids, geometry.img_size, jitter=d.box_jitter,
                                seed=cfg.seed)
        log.info("action on %s (%s): %d train / %d val keyframes, %d actions, clips of %d frames every %d at %d px",
                 cfg.model, cfg.feature, len(train_clips), len(val_clips), len(labels), geometry.num_frames,
                 geometry.frame_stride, geometry.img_size)
        train_model = trainer.wrap(model)

        def forward(batch: dict[str, Any], step: int, k: int) -> torch.Tensor:
            return loss_of(train_model, batch, trainer.device)

        def outputs(run_dir: Path) -> dict[str, Any]:
            save_dense_model(model, run_dir / "model", "action_detector", META, meta)
            metrics = write_results(model, val_clips, src["val_ann"], labels, meta, run_dir,
                                    proposals=src["val_boxes"] is not None, excluded=excluded, top_k=cfg.top_k,
                                    device=trainer.device, pictures=cfg.pictures, title=f"actions on {cfg.model}")
            return {**metrics, "model": str(run_dir / "model"), "metrics": str(run_dir / "metrics.json")}

        job = optim_job(cfg.optim, model, samples, forward, recipe_lr=ActionConfig().optim.base_lr,
                        layer_decay=cfg.layer_decay, num_workers=d.num_workers, collate=collate_actions)
        return trainer.fit(job, outputs=outputs, curve=Curve("curves.png", f"actions on {cfg.model}"))


def report(cfg: ActionConfig, s: dict[str, Any]) -> list[str]:
    """The lines a finished action run prints."""
    return [f"trained the action head on {cfg.model} for {s['steps']} steps in {s['seconds']:.0f} s: {_map(s)}",
            f"  wrote {s['run_dir']}: metrics.json, detections.csv, predictions.png, motion.png, model/"]


def _map(m: dict[str, Any]) -> str:
    return f"frame mAP {_pct(m['frame_mAP'])} on {m['scored']['keyframes']} keyframes ({m['scored']['boxes']})"


# ---------------------------------------------------------------- eval and predict
def load_action_model(run: str | Path) -> tuple[ActionDetector, dict[str, Any], dict[str, Any]]:
    """``(model in eval mode, action.json, the run's config)`` of a finished action run (or its ``model/``)."""
    return load_dense_model(run, META, ActionDetector, "action")


def _labels(meta: dict[str, Any]) -> dict[int, str]:
    return {int(c): n for c, n in meta["label_map"].items()}


def evaluate_run(run: str | Path, *, ann: str | None = None, videos: str | None = None, boxes: str | None = None,
                 out: str | None = None, device: str = "cpu", pictures: int = 4, limit: int | None = None,
                 top_k: int | None = None, overwrite: bool = False) -> dict[str, Any]:
    """Score a finished action run on its validation keyframes (its boxes) or another annotation CSV (``ann`` +
    ``videos``; ``boxes``: person boxes to classify, default the ground truth; the first ``limit`` keyframes); the
    results go to ``out`` (default: ``<run>/eval-<data>/``)."""
    for flag, value in (("--limit", limit), ("--top-k", top_k)):
        if value is not None and value < 1:
            raise ValueError(f"{flag} {value}: must be at least 1")
    model, meta, cfg = load_action_model(run)
    labels = _labels(meta)
    config = from_dict(ActionConfig, cfg)
    d = config.data
    excluded: set = set()
    if ann is None:  # the run's own validation data
        src = sources(d)
        ann_path, root = src["val_ann"], src["val_videos"]
        box_path = Path(boxes).expanduser() if boxes else src["val_boxes"]
        excluded = read_excluded(src["exclude"])[0] if src["exclude"] else set()
    else:
        if videos is None:
            raise ValueError("--videos: the folder of the videos (or frame folders) of --ann")
        ann_path, root = Path(ann).expanduser(), Path(videos).expanduser()
        box_path = Path(boxes).expanduser() if boxes else None
    geometry = Geometry.from_record(meta["geometry"])
    clips = clip_set(ann_path, root, labels, d, geometry, excluded=excluded, boxes=box_path, limit=limit,
                     layout=meta.get("frames_layout"), rule=meta.get("frame_rule"))
    tag = data_tag([str(ann_path)] + ([str(box_path)] if box_path else []))
    target = Path(out) if out else Path(run) / f"eval-{tag}"
    with files.output_folder(target, overwrite=overwrite, command="eval") as work:
        metrics = write_results(model.to(device), clips, ann_path, labels, meta, work, proposals=box_path is not None,
                                excluded=excluded, top_k=top_k if top_k is not None else config.top_k, device=device,
                                pictures=pictures, title=f"actions on {meta['encoder']}")
    return {**metrics, "out": str(target)}


def eval_report(m: dict[str, Any]) -> list[str]:
    s = m["scored"]
    dropped = s["keyframes_given"] - s["keyframes_read"]
    return [_map(m) + (f" ({dropped} keyframes skipped: see metrics.json)" if dropped > 0 else ""),
            f"  wrote {m['out']}/metrics.json, detections.csv, predictions.png, motion.png"]


class NamedVideos:
    """Video files by their stem (``video_id``), wherever they are: the frame source :class:`AvaClips` reads for
    ``predict``."""

    def __init__(self, paths: Sequence[Path], decoder: str = "auto"):
        self.paths, self.decoder = {p.stem: p for p in paths}, decoder

    def where(self, video_id: str) -> str:
        return str(self.paths.get(video_id, video_id))

    def frames(self, video_id: str) -> int:
        path = self.paths.get(video_id)
        return 0 if path is None else video_frame_count(path, self.decoder)

    def fps(self, video_id: str) -> float | None:
        path = self.paths.get(video_id)
        return None if path is None else video_fps(path)

    def read(self, video_id: str, indices: Sequence[int]) -> torch.Tensor:
        return decode_frames(self.paths[video_id], indices, self.decoder)  # [T, H, W, 3]


def video_files(inputs: Sequence[str]) -> list[Path]:
    """The video files among ``inputs`` (files, and folders of videos)."""
    return input_files(inputs, lambda p: p.suffix.lower() in VIDEO_EXTENSIONS,
                       what=f"videos ({', '.join(VIDEO_EXTENSIONS)})", recursive=False)


@torch.no_grad()
def predict_videos(run: str | Path, inputs: list[str], *, boxes: str | None = None, out: str | None = None,
                   device: str = "cpu", overwrite: bool = False) -> dict[str, Any]:
    """Actions of a finished action run for the people of ``boxes`` (a person-box CSV: ``video_id, timestamp, x1,
    y1, x2, y2[, , score]``, video ids the videos' file names without extension) in new videos: ``detections.csv``
    (AVA's results format: every box and action with its score) and ``predictions.png`` / ``motion.png`` in
    ``out`` (default ``<run>/predict-<inputs>``). Keyframes of other videos, or outside their video, are
    skipped and counted."""
    if boxes is None:
        raise ValueError("--boxes: a CSV of the person boxes to classify (video_id, timestamp, x1, y1, x2, y2 in "
                         "0..1, and a score)")
    model, meta, _ = load_action_model(run)
    model.to(device)
    labels = _labels(meta)
    found, skipped = read_person_boxes(Path(boxes).expanduser())
    keyframes = [Keyframe(v, t, tuple(Person(b, ()) for b, _ in people)) for (v, t), people in found.items()]
    geometry = Geometry.from_record(meta["geometry"])
    # videos, not AVA's frame folders: at their own rate (from second 900 for an AVA-trained model)
    rule = FrameRule(fps=None, offset=AVA_FRAMES.offset) if meta.get("frame_rule") == "ava" else SECONDS
    clips = AvaClips(keyframes, NamedVideos(video_files(inputs)), num_frames=geometry.num_frames,
                     stride=geometry.frame_stride, rule=rule)
    clips.skipped.update(skipped)
    target = Path(out) if out else Path(run) / f"predict-{data_tag(inputs)}"
    with files.output_folder(target, overwrite=overwrite, command="predict") as work:
        class_ids = [int(c) for c in meta["class_ids"]]

        def to_input(clip: torch.Tensor) -> torch.Tensor:
            return normalise(prepare(clip, geometry, single_frame=meta.get("single_frame", False)), meta["mean"],
                             meta["std"])

        rows, scored, kept = detect(model, clips, to_input, class_ids, geometry.img_size, proposals=False,
                                    device=device, keep=4)
        files.write_text(work / "detections.csv", format_rows(rows, "detections"))
        if kept:
            draw(kept, labels, meta, work, truth=False,
                 title=f"actions on {meta['encoder']} (new videos: no ground truth)")
    return {"out": str(target), "keyframes": len(scored), "boxes": len(rows) // max(len(class_ids), 1),
            "skipped": clips.skipped.total}


def predict_report(r: dict[str, Any]) -> list[str]:
    return [f"actions of {r['boxes']} boxes on {r['keyframes']} keyframes"
            + (f" ({r['skipped']} skipped: see the log)" if r["skipped"] else "") + f"; wrote {r['out']}"]


TASK = Task(
    name="action", config=ActionConfig, run=run, report=report,
    help="train spatio-temporal action detection (AVA) on a video encoder: an RoI head on the keyframe clip's map; "
         "AVA data (default: the bundled action clips); frame mAP at the end",
    description="Defaults <- --preset <- key=value overrides (hieralab/config/schema.py: ActionConfig), e.g. "
                "data.train_ann=train.csv data.train_videos=videos/ data.labels=labels.pbtxt init=runs/mae_video",
    example="init=runs/pretrain max_steps=300 out_dir=runs/action",
    evaluate=Action(evaluate_run, eval_report, flags=(
        Flag("--ann", "detect / action: an annotation file (default: the run's validation data)"),
        Flag("--videos", "action: the videos (or frame folders) of --ann"),
        Flag("--boxes", "action: person boxes to classify (an AVA box CSV with scores; default: the run's "
                        "data.val_boxes, else the ground truth)"),
        Flag("--limit", "only the first N images / keyframes", type=int),
        Flag("--top-k", "action: detections kept per keyframe when scoring (the official script: 50)",
             type=int))),
    predict=Action(predict_videos, predict_report, flags=(
        Flag("--boxes", "action: the person boxes to classify (video_id, timestamp, x1, y1, x2, y2 in 0..1, "
                        "score)"),)),
    model_folders=("model",), legacy_file=META)
