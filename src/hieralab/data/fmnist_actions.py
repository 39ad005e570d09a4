"""Fashion-MNIST actions: a small spatio-temporal action detection dataset in the AVA format, made deterministically
from Debian's Fashion-MNIST files (no download).

Each clip is :data:`FRAMES` frames at :data:`FPS` fps (2 s) of a black square canvas (:data:`CANVAS` px a side) in
which 1 to 4 garments are the actors. Each actor does one or more actions that no single frame tells apart, because
every look an action passes through is also a look a still garment can have (any position, angle, size and
brightness): moving left / right / up / down, spinning, growing, shrinking, blinking (its brightness drops to 40 %
every other two frames), or standing still (none of these); two actors moving towards each other both "approach",
moving away from each other both "part" (multi-label, as AVA's people). Training clips use training garments,
validation clips test garments.

Written in the AVA format (read with :mod:`hieralab.data.ava`): ``videos/<video_id>.mp4`` (MPEG-4, grey as RGB),
``train.csv`` / ``val.csv`` with each actor's box and actions at the keyframe (the middle frame, at second
:data:`KEYFRAME_SECOND`: timestamps are plain seconds into the video, :data:`FRAME_RULE`), ``labels.pbtxt`` and
``val_person_boxes.csv``: a person detector's boxes for the validation keyframes (the true boxes jittered, some
missed, some false ones, with scores), as AVA's evaluation gives models detected people to classify.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from .. import files, seeds
from .ava import FrameRule, Row, format_rows, write_label_map
from .fashion_mnist import FashionMNIST

log = logging.getLogger(__name__)
SPEC_VERSION = 1
FRAMES = 16
FPS = 8
KEYFRAME = FRAMES // 2  # the middle frame
KEYFRAME_SECOND = KEYFRAME // FPS  # 1: its timestamp
FRAME_RULE = FrameRule(fps=FPS, offset=0.0)  # timestamps are seconds into the clip
CANVAS = (96, 128)  # px, the side (even, for the video's 4:2:0 chroma) drawn in this range
ACTORS = (1, 4)
GARMENT_SIZE = (18, 30)  # px, the side of a 28x28 garment at scale 1
SPEED = (1.2, 2.6)  # px a frame
SPIN = (12.0, 24.0)  # degrees a frame, either way
SCALE = (0.75, 1.3)  # growing goes from the first to the second over the clip, shrinking back
BRIGHTNESS = (0.3, 1.0)  # of a still garment; a blinking one is 0.75..1 and 40 % of that when off
BLINK_DIM = 0.4
THRESHOLD = 20  # a garment's pixel is part of it above this grey level (of 255)
PAIR_CHANCE = 0.4  # a clip with two or more actors makes two of them approach or part
MAX_OVERLAP = 0.3  # IoU of two actors' keyframe boxes above this: the clip is drawn again
DETECTOR = {"miss": 0.08, "false": 0.3, "jitter": 0.04}  # the val person boxes: rates and box noise (of its side)

ACTIONS = {1: "move left", 2: "move right", 3: "move up", 4: "move down", 5: "spin", 6: "grow", 7: "shrink",
           8: "blink", 9: "stand still", 10: "approach", 11: "part"}
ACTION_TYPES = {**{i: "PERSON_MOVEMENT" for i in range(1, 10)}, 10: "PERSON_INTERACTION", 11: "PERSON_INTERACTION"}
_DIRECTIONS = {1: (-1.0, 0.0), 2: (1.0, 0.0), 3: (0.0, -1.0), 4: (0.0, 1.0)}  # (dx, dy), y down


def _actor(rng: np.random.Generator, n_images: int) -> dict[str, Any]:
    """An actor's look and what it does, before it is placed."""
    blink = bool(rng.random() < 0.25)
    return {
        "image": int(rng.integers(n_images)),
        "side": float(rng.uniform(*GARMENT_SIZE)),
        "angle": float(rng.uniform(0, 360)),
        "brightness": float(rng.uniform(0.75, 1.0) if blink else rng.uniform(*BRIGHTNESS)),
        "move": int(rng.choice([0, 1, 2, 3, 4], p=[0.3, 0.175, 0.175, 0.175, 0.175])),  # 0: none, else ACTIONS id
        "speed": float(rng.uniform(*SPEED)),
        "change": int(rng.choice([0, 5, 6, 7], p=[0.4, 0.2, 0.2, 0.2])),  # 0: none, spin, grow, shrink
        "spin": float(rng.uniform(*SPIN) * rng.choice([-1, 1])),
        "blink": blink,
    }


def _scale(actor: dict[str, Any], t: int) -> float:
    f = t / (FRAMES - 1)
    if actor["change"] == 6:
        return SCALE[0] + (SCALE[1] - SCALE[0]) * f
    if actor["change"] == 7:
        return SCALE[1] + (SCALE[0] - SCALE[1]) * f
    return 1.0


def _reach(actor: dict[str, Any]) -> float:
    """The most an actor reaches from its centre in any frame (half the diagonal of its largest square)."""
    return 0.5 * 2 ** 0.5 * actor["side"] * max(_scale(actor, 0), _scale(actor, FRAMES - 1)) + 1


def _velocity(actor: dict[str, Any]) -> np.ndarray:
    return np.array(_DIRECTIONS.get(actor["move"], (0.0, 0.0))) * actor["speed"]


def _place(rng: np.random.Generator, actors: list[dict[str, Any]], side: int, pair: tuple[int, int] | None,
           pair_kind: str) -> bool:
    """Start centres for every actor so that each stays inside the canvas all clip long (and a pair meets its
    action's geometry); False when this draw cannot fit."""
    span = FRAMES - 1
    for k, a in enumerate(actors):
        if pair is not None and k == pair[1]:
            continue
        r = _reach(a)
        if pair is not None and k == pair[0]:
            b = actors[pair[1]]
            axis = int(rng.integers(2))  # 0: along x, 1: along y
            sign = 1.0 if pair_kind == "approach" else -1.0  # a moves towards +axis when approaching, b the other way
            a["move"] = (2 if sign > 0 else 1) if axis == 0 else (4 if sign > 0 else 3)
            b["move"] = (1 if sign > 0 else 2) if axis == 0 else (3 if sign > 0 else 4)
            rb = _reach(b)
            # b starts `gap` after a along the axis; approaching, they end apart by their reaches; parting, they
            # start a little over each other and a moves back, b on
            if pair_kind == "approach":
                gap = r + rb + (a["speed"] + b["speed"]) * span
                lo, hi = r, side - rb - gap
            else:
                gap = 0.6 * (r + rb)
                lo, hi = r + a["speed"] * span, side - rb - gap - b["speed"] * span
            if hi < lo:
                return False
            pa = float(rng.uniform(lo, hi))
            cross = float(rng.uniform(max(r, rb), side - max(r, rb)))
            a["start"] = np.array([pa, cross] if axis == 0 else [cross, pa])
            b["start"] = a["start"] + (np.array([gap, 0.0]) if axis == 0 else np.array([0.0, gap]))
            continue
        shift = _velocity(a) * span
        lo = np.maximum(r, r - shift)  # the start range along each axis keeping the whole path inside
        hi = np.minimum(side - r, side - r - shift)
        if (hi < lo).any():
            return False
        a["start"] = rng.uniform(lo, hi)
    return True


def _pair_actions(actors: list[dict[str, Any]]) -> list[set[int]]:
    """"approach" / "part" from the paths, for every pair: both move, each towards (away from) the other, and their
    distance shrinks (grows) by a quarter or more over the clip."""
    out: list[set[int]] = [set() for _ in actors]
    span = FRAMES - 1
    for i, a in enumerate(actors):
        for j in range(i + 1, len(actors)):
            b = actors[j]
            va, vb = _velocity(a), _velocity(b)
            if not (va.any() and vb.any()):
                continue
            d = b["start"] - a["start"]
            d0, d1 = np.linalg.norm(d), np.linalg.norm(d + (vb - va) * span)
            if va @ d > 0 and vb @ -d > 0 and d1 <= 0.75 * d0:
                out[i].add(10)
                out[j].add(10)
            elif va @ d < 0 and vb @ -d < 0 and d1 >= 1.25 * d0:
                out[i].add(11)
                out[j].add(11)
    return out


def _render(actor: dict[str, Any], garment: np.ndarray, t: int) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """The actor at frame ``t``: ``(grey levels float [h, w], its pixels bool [h, w], top-left (y, x))``."""
    side = max(4, int(round(actor["side"] * _scale(actor, t))))
    angle = actor["angle"] + (actor["spin"] * t if actor["change"] == 5 else 0.0)
    img = Image.fromarray(garment).resize((side, side), Image.BILINEAR).rotate(angle, Image.BILINEAR, expand=True)
    grey = np.asarray(img, dtype=np.float32)  # [h, w]
    shape = grey > THRESHOLD
    dim = BLINK_DIM if actor["blink"] and (t // 2) % 2 == 1 else 1.0
    cx, cy = actor["start"] + _velocity(actor) * t
    top_left = (int(round(cy - grey.shape[0] / 2)), int(round(cx - grey.shape[1] / 2)))
    return grey * actor["brightness"] * dim, shape, top_left


def _iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


Truth = list[tuple[tuple[float, float, float, float], tuple[int, ...]]]  # per actor: keyframe box, action ids


def make_clip(rng: np.random.Generator, images: np.ndarray) -> tuple[np.ndarray, Truth]:
    """One clip: ``(frames uint8 [T, S, S], [(keyframe box (x1, y1, x2, y2) in [0, 1], action ids), ...])``, one
    entry per actor. Draws that do not fit the canvas, or put two actors' keyframe boxes over each other, are drawn
    again."""
    while True:
        side = 2 * int(rng.integers(CANVAS[0] // 2, CANVAS[1] // 2 + 1))
        actors = [_actor(rng, len(images)) for _ in range(int(rng.integers(ACTORS[0], ACTORS[1] + 1)))]
        pair, kind = None, "approach"
        if len(actors) >= 2 and rng.random() < PAIR_CHANCE:
            pair = tuple(int(k) for k in rng.choice(len(actors), 2, replace=False))
            kind = "approach" if rng.random() < 0.5 else "part"
        if not _place(rng, actors, side, pair, kind):
            continue
        frames = np.zeros((FRAMES, side, side), np.float32)
        boxes = []
        for a in actors:
            for t in range(FRAMES):
                grey, shape, (y, x) = _render(a, images[a["image"]], t)
                h, w = grey.shape
                ys, xs = slice(max(y, 0), min(y + h, side)), slice(max(x, 0), min(x + w, side))
                sub = (slice(ys.start - y, ys.stop - y), slice(xs.start - x, xs.stop - x))
                frames[t][ys, xs][shape[sub]] = grey[sub][shape[sub]]  # a later actor covers an earlier one
                if t == KEYFRAME:
                    rows, cols = np.nonzero(shape[sub])
                    boxes.append(((cols.min() + xs.start) / side, (rows.min() + ys.start) / side,
                                  (cols.max() + 1 + xs.start) / side, (rows.max() + 1 + ys.start) / side))
        if any(_iou(boxes[i], boxes[j]) > MAX_OVERLAP for i in range(len(boxes)) for j in range(i + 1, len(boxes))):
            continue
        pairs = _pair_actions(actors)
        labels = []
        for a, extra in zip(actors, pairs):
            acts = {a["move"], a["change"], 8 if a["blink"] else 0, *extra} - {0}
            labels.append(tuple(sorted(acts or {9})))
        return np.clip(np.round(frames), 0, 255).astype(np.uint8), list(zip(boxes, labels))


def write_video(path: Path, frames: np.ndarray, fps: int = FPS) -> Path:
    """Grey frames ``uint8 [T, H, W]`` as an MPEG-4 video (RGB, 4:2:0), written atomically."""
    import av

    def write(tmp: str) -> None:
        with av.open(tmp, "w", format="mp4") as out:
            stream = out.add_stream("mpeg4", rate=fps)
            stream.height, stream.width = frames.shape[1:]
            stream.pix_fmt = "yuv420p"
            stream.options = {"qscale": "2"}
            for frame in frames:
                rgb = np.repeat(frame[..., None], 3, axis=-1)  # [H, W, 3]
                for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                    out.mux(packet)
            for packet in stream.encode():
                out.mux(packet)

    return files.atomic_write(path, write)


def _detector(rng: np.random.Generator, video_id: str, truth: Truth) -> list[Row]:
    """A person detector's boxes for one keyframe: the true ones jittered (some missed), maybe a false one."""
    out = []
    for box, _ in truth:
        if rng.random() < DETECTOR["miss"]:
            continue
        w, h = box[2] - box[0], box[3] - box[1]
        noise = rng.normal(0, DETECTOR["jitter"], 4) * np.array([w, h, w, h])
        x1, y1, x2, y2 = np.clip(np.array(box) + noise, 0, 1)
        if x2 - x1 > 0.01 and y2 - y1 > 0.01:
            out.append(Row(video_id, KEYFRAME_SECOND, x1, y1, x2, y2, -1, float(rng.uniform(0.6, 1.0))))
    if rng.random() < DETECTOR["false"]:
        w, h = rng.uniform(0.15, 0.35, 2)
        x1, y1 = rng.uniform(0, 1 - w), rng.uniform(0, 1 - h)
        out.append(Row(video_id, KEYFRAME_SECOND, x1, y1, x1 + w, y1 + h, -1, float(rng.uniform(0.05, 0.6))))
    return out


def write_split(out: Path, split: str, count: int, seed: int) -> dict[str, Any]:
    """``count`` clips of ``split`` ("train" from the training garments, "val" from the test garments): the videos
    into ``out/videos/``, ``out/<split>.csv``, and for "val" ``out/val_person_boxes.csv``. Each clip is drawn from
    its own seeded stream, so a clip does not change when the count does."""
    source = FashionMNIST("train" if split == "train" else "test")
    stream = 2 if split == "train" else 3  # the "scenes" stream's keys 0 and 1 are the scenes'
    rows: list[Row] = []
    boxes: list[Row] = []
    for i in tqdm(range(count), desc=f"action clips ({split})", leave=False, unit="clip"):
        rng = np.random.default_rng(seeds.seed_int(seed, "scenes", stream, i))
        frames, truth = make_clip(rng, source.images)
        video_id = f"{split}_{i:05d}"
        write_video(out / "videos" / f"{video_id}.mp4", frames)
        for person, (box, actions) in enumerate(truth):
            rows += [Row(video_id, KEYFRAME_SECOND, *box, a, person) for a in actions]
        if split == "val":
            boxes += _detector(rng, video_id, truth)
    files.write_text(out / f"{split}.csv", format_rows(rows, "annotations"))
    if split == "val":
        files.write_text(out / "val_person_boxes.csv", format_rows(boxes, "boxes"))
    return {"clips": count, "actors": len({(r.video_id, r.value) for r in rows}), "rows": len(rows)}


def spec(train: int, val: int, seed: int) -> dict[str, Any]:
    return {"version": SPEC_VERSION, "train": train, "val": val, "seed": seed, "frames": FRAMES, "fps": FPS,
            "canvas": CANVAS, "actors": ACTORS, "garment_size": GARMENT_SIZE, "speed": SPEED, "spin": SPIN,
            "scale": SCALE, "brightness": BRIGHTNESS, "blink_dim": BLINK_DIM, "threshold": THRESHOLD,
            "pair_chance": PAIR_CHANCE, "max_overlap": MAX_OVERLAP, "detector": DETECTOR,
            "actions": {str(k): v for k, v in ACTIONS.items()}}


def ensure_actions(out: str | Path, *, train: int = 400, val: int = 100, seed: int = 0) -> Path:
    """The Fashion-MNIST action clips in ``out`` (written once; reused when ``out/spec.json`` says they were made
    the same way; a non-empty folder that holds something else is refused)."""
    out = Path(out).expanduser()
    wanted = json.loads(json.dumps(spec(train, val, seed)))  # tuples as JSON has them
    spec_file = out / "spec.json"
    written = json.loads(spec_file.read_text()) if spec_file.exists() else None
    if written and written.get("spec") == wanted and written.get("complete"):
        return out
    if out.exists() and any(out.iterdir()) and written is None:
        raise FileExistsError(f"{out} is not empty and holds no Fashion-MNIST action clips; choose another folder")
    if written:
        log.info("the action clips in %s were made with other settings or not finished; writing them again", out)
        shutil.rmtree(out / "videos", ignore_errors=True)
    (out / "videos").mkdir(parents=True, exist_ok=True)
    files.write_json(spec_file, {"spec": wanted, "complete": False})  # marks the folder as ours while it fills
    files.write_text(out / "labels.pbtxt", write_label_map(ACTIONS, ACTION_TYPES))
    counts = {split: write_split(out, split, n, seed) for split, n in (("train", train), ("val", val))}
    files.write_json(spec_file, {"spec": wanted, "complete": True, "counts": counts})
    log.info("wrote Fashion-MNIST action clips to %s: %s", out, counts)
    return out


def action_sources(out: str | Path, *, train: int = 400, val: int = 100, seed: int = 0) -> dict[str, Any]:
    """The clips' files (written first when needed): ``train_ann`` / ``val_ann`` (annotation CSVs), ``videos`` (the
    folder of ``<video_id>.mp4``), ``labels`` (the ``.pbtxt`` label map), ``val_boxes`` (person boxes with scores),
    ``frame_rule`` (:data:`FRAME_RULE`) and ``classes`` (``{action id: name}``)."""
    root = ensure_actions(out, train=train, val=val, seed=seed)
    return {"train_ann": root / "train.csv", "val_ann": root / "val.csv", "videos": root / "videos",
            "labels": root / "labels.pbtxt", "val_boxes": root / "val_person_boxes.csv", "frame_rule": FRAME_RULE,
            "classes": dict(ACTIONS)}
