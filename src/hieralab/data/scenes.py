"""Fashion-MNIST scenes: a detection, instance and semantic segmentation dataset of real objects, made
deterministically from Debian's Fashion-MNIST files (no download).

Each scene is a black canvas (128 to 192 px a side, not square in general) holding 1 to 6 garments at random sizes
(24 to 72 px) and positions; overlaps are allowed, a later garment covers an earlier one. An instance's mask is its
garment's pixels (brighter than :data:`THRESHOLD`) that stay visible; instances covered to fewer than
:data:`MIN_AREA` pixels are dropped. Training scenes use training images, validation scenes test images, so no
garment is in both. Written in the formats users bring: COCO JSON (boxes, RLE masks, the 10 classes as categories
1..10) with a PNG per scene, and semantic masks as PNGs (0 = background, 1..10 = the garment classes).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils
from ..progress import bar as tqdm

from .. import files, seeds
from .fashion_mnist import CLASSES, FashionMNIST
from .fashion_mnist import MEAN as FASHION_MEAN
from .fashion_mnist import STD as FASHION_STD
from .images import IMAGENET_MEAN, IMAGENET_STD

log = logging.getLogger(__name__)
CANVAS = (128, 192)  # px, each side drawn in this range
GARMENTS = (1, 6)
GARMENT_SIZE = (24, 72)  # px, the side a 28x28 garment is resized to
THRESHOLD = 20  # a garment's pixel is part of it above this grey level (of 255)
MIN_AREA = 16  # px: an instance covered to less is dropped
SPEC_VERSION = 1


def make_scene(rng: np.random.Generator, images: np.ndarray, labels: np.ndarray
               ) -> tuple[np.ndarray, list[tuple[int, np.ndarray]]]:
    """One scene: ``(canvas uint8 [H, W], [(class index 0..9, visible mask bool [H, W]), ...])``."""
    H, W = (int(rng.integers(CANVAS[0], CANVAS[1] + 1)) for _ in range(2))
    canvas = np.zeros((H, W), np.uint8)
    owner = np.zeros((H, W), np.int32)  # which garment (1-based) each pixel shows; 0 = background
    placed = []
    for k in range(int(rng.integers(GARMENTS[0], GARMENTS[1] + 1))):
        i = int(rng.integers(len(images)))
        side = int(rng.integers(GARMENT_SIZE[0], GARMENT_SIZE[1] + 1))
        garment = np.asarray(Image.fromarray(images[i]).resize((side, side), Image.BILINEAR))
        y, x = int(rng.integers(0, H - side + 1)), int(rng.integers(0, W - side + 1))
        shape = garment > THRESHOLD
        region = (slice(y, y + side), slice(x, x + side))
        canvas[region][shape] = garment[shape]
        owner[region][shape] = k + 1
        placed.append(int(labels[i]))
    instances = [(label, owner == k + 1) for k, label in enumerate(placed)]
    return canvas, [(label, m) for label, m in instances if m.sum() >= MIN_AREA]


def _annotation(ann_id: int, image_id: int, label: int, visible: np.ndarray) -> dict[str, Any]:
    ys, xs = np.nonzero(visible)
    x0, y0, x1, y1 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
    rle = mask_utils.encode(np.asfortranarray(visible.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return {"id": ann_id, "image_id": image_id, "category_id": label + 1, "bbox": [x0, y0, x1 - x0, y1 - y0],
            "area": int(visible.sum()), "segmentation": rle, "iscrowd": 0}


def write_split(out: Path, split: str, count: int, seed: int) -> dict[str, Any]:
    """``count`` scenes of ``split`` ("train" from the training images, "val" from the test images) into
    ``out/<split>/``: ``images/*.png``, ``semantic/*.png``, ``annotations.json``."""
    source = FashionMNIST("train" if split == "train" else "test")
    images, labels = source.images, source.targets
    folder = out / split
    for sub in ("images", "semantic"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seeds.seed_int(seed, "scenes", 0 if split == "train" else 1))
    coco: dict[str, Any] = {"images": [], "annotations": [],
                            "categories": [{"id": i + 1, "name": n} for i, n in enumerate(CLASSES)]}
    for image_id in tqdm(range(1, count + 1), desc=f"scenes ({split})", leave=False, unit="scene"):
        canvas, instances = make_scene(rng, images, labels)
        name = f"{image_id:06d}.png"
        semantic = np.zeros(canvas.shape, np.uint8)
        for label, visible in instances:
            semantic[visible] = label + 1
            coco["annotations"].append(_annotation(len(coco["annotations"]) + 1, image_id, label, visible))
        for sub, array in (("images", canvas), ("semantic", semantic)):
            files.atomic_write(folder / sub / name, lambda p, a=array: Image.fromarray(a).save(p, format="PNG"))
        coco["images"].append({"id": image_id, "file_name": name, "height": canvas.shape[0],
                               "width": canvas.shape[1]})
    files.write_json(folder / "annotations.json", coco)
    return {"scenes": count, "instances": len(coco["annotations"])}


def spec(train: int, val: int, seed: int) -> dict[str, Any]:
    return {"version": SPEC_VERSION, "train": train, "val": val, "seed": seed, "canvas": CANVAS,
            "garments": GARMENTS, "garment_size": GARMENT_SIZE, "threshold": THRESHOLD, "min_area": MIN_AREA}


def ensure_scenes(out: str | Path, *, train: int = 2000, val: int = 300, seed: int = 0,
                  take_existing: bool = False) -> Path:
    """The scenes in ``out``, written once: reused when ``out/spec.json`` says they were made the same way. Scenes
    made with other settings are never rewritten: with ``take_existing`` (a training run pointed at them) they are
    used as they are, otherwise (``hieralab scenes`` asked for other counts) refused in one line."""
    out = Path(out).expanduser()
    wanted = json.loads(json.dumps(spec(train, val, seed)))  # tuples as JSON has them
    spec_file = out / "spec.json"
    if spec_file.exists():
        saved = json.loads(spec_file.read_text())
        if saved.get("spec") == wanted:
            return out
        made = saved.get("spec", {})
        if take_existing:
            log.info("using the scenes in %s as they are (%s train / %s val, seed %s)", out, made.get("train"),
                     made.get("val"), made.get("seed"))
            return out
        raise FileExistsError(f"{out} holds Fashion-MNIST scenes made with other settings (--train {made.get('train')} "
                              f"--val {made.get('val')} --seed {made.get('seed')}); nothing was rewritten: choose "
                              "another folder for these")
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty and holds no Fashion-MNIST scenes; choose another folder")
    counts = {split: write_split(out, split, n, seed) for split, n in (("train", train), ("val", val))}
    files.write_json(spec_file, {"spec": wanted, "counts": counts})
    log.info("wrote Fashion-MNIST scenes to %s: %s", out, counts)
    return out


def is_scenes_folder(path: str | Path | None) -> bool:
    """Whether ``path`` lies in a folder of Fashion-MNIST scenes (``spec.json`` two levels up: ``<scenes>/<split>/
    images``)."""
    if not path:
        return False
    path = Path(path).expanduser().resolve()
    return any((p / "spec.json").exists() and (p / "train").is_dir() for p in (path, *list(path.parents)[:2]))


def dense_sources(d: Any) -> dict[str, Any]:
    """The files a :class:`~hieralab.config.DenseDataConfig` means: ``train_ann`` / ``val_ann`` (COCO JSON),
    ``train_images`` / ``val_images``, ``train_masks`` / ``val_masks`` (semantic PNGs), ``classes`` (semantic,
    by index), and the normalisation (``mean``, ``std``); ``"scenes"`` writes the Fashion-MNIST scenes first."""
    out: dict[str, Any] = {}
    scenes = None
    if "scenes" in (d.train_ann, d.val_ann) or None in (d.train_images, d.val_images):
        scenes = ensure_scenes(d.scenes_root, train=d.scenes_train, val=d.scenes_val, take_existing=True)
    for split in ("train", "val"):
        ann, images, masks = (getattr(d, f"{split}_{k}") for k in ("ann", "images", "masks"))
        from_scenes = ann == "scenes"
        out[f"{split}_ann"] = str(scenes / split / "annotations.json") if from_scenes else ann
        out[f"{split}_images"] = images or (str(scenes / split / "images") if scenes else None)
        out[f"{split}_masks"] = masks or (str(scenes / split / "semantic") if scenes else None)
    if out["train_images"] is None or out["val_images"] is None:
        raise ValueError("set data.train_images and data.val_images to the folders of your images")
    on_scenes = (d.train_ann == "scenes" and d.train_images is None) or is_scenes_folder(out["train_images"])
    out["classes"] = list(d.classes) if d.classes else ["background", *CLASSES] if on_scenes else None
    out["mean"], out["std"] = ((FASHION_MEAN, FASHION_STD) if on_scenes else (IMAGENET_MEAN, IMAGENET_STD))
    return out
