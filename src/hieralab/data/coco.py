"""COCO-format instance annotations (read with pycocotools) as torchvision detection targets, their augmentation,
and batching.

What users' annotation files hold, handled without a traceback:

* boxes of zero or negative width / height are skipped; boxes reaching outside the image are clipped to it, and
  skipped when nothing is left; each reason is counted (:attr:`CocoInstances.dropped`) and logged once;
* an annotation whose mask is empty (or missing, when masks are needed) is skipped and counted;
* crowd regions (``iscrowd``) are not trained on (COCO's own evaluation handles them);
* images without annotations stay, as negatives;
* category ids need not be contiguous nor start at 1: they are mapped to labels 1..K in id order (0 is
  torchvision's background) and back for the results;
* a missing or unreadable image file is skipped and named, as everywhere else (:class:`~hieralab.data.images.
  Unreadable`);
* fields of the wrong type -- an image id that is not a whole number, a bbox that is not four numbers, an
  annotation of no listed image or category, an empty or malformed ``segmentation`` when masks are trained -- are
  skipped before anything is built (and left out of the ground truth that evaluation scores), counted by reason
  with the first few named; a file whose structure is wrong (``annotations`` not a list, a category without a
  whole-number id) is refused in one line;
* a file with no annotation left to train on or score is refused in one line naming it (training on it would
  learn nothing and report AP -1 without a word).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from torchvision import tv_tensors
from torchvision.transforms import v2

from ..errors import DataError
from .images import Unreadable, drop_unreadable, load_image
from .streams import Seeded, sample_key

log = logging.getLogger(__name__)


def read_coco(ann_file: str | os.PathLike, *, masks: bool = False) -> COCO:
    """pycocotools' ``COCO`` of a file, with its progress prints kept quiet and a one-line error for a bad file;
    malformed images and annotations (see the module's notes; with ``masks`` also those without a usable
    ``segmentation``) are left out, counted and named in a warning."""
    coco, skipped, named = _read_coco(ann_file, masks=masks)
    if skipped:
        log.warning("%s: %s", Path(ann_file).expanduser(), _said(skipped, named))
    return coco


EXAMPLES = 3  # named per reason of a skip


def _said(counts: Counter, named: dict[str, list[str]]) -> str:
    """``"2 annotations with a malformed bbox skipped (annotation 3: bbox '1,2'; annotation 9: ...), ..."``"""
    return ", ".join(f"{n} {why}" + (f" ({'; '.join(named[why])})" if named.get(why) else "")
                     for why, n in sorted(counts.items()))


def _whole(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v)


def _segmentation_problem(seg: Any) -> str | None:
    """Why pycocotools could not decode ``seg`` (``"empty"`` for a missing or empty one), or ``None``."""
    if seg is None or (isinstance(seg, (list, dict)) and not seg):
        return "empty"
    if isinstance(seg, list):  # polygons: lists of x, y pairs, three points at least
        ok = all(isinstance(poly, list) and len(poly) >= 6 and len(poly) % 2 == 0 and all(map(_finite, poly))
                 for poly in seg)
        return None if ok else "malformed"
    if isinstance(seg, dict):  # RLE
        size, counts = seg.get("size"), seg.get("counts")
        ok = (isinstance(size, list) and len(size) == 2 and all(map(_whole, size))
              and (isinstance(counts, (str, bytes)) or (isinstance(counts, list) and all(map(_whole, counts)))))
        return None if ok else "malformed"
    return "malformed"


def _read_coco(ann_file: str | os.PathLike, *, masks: bool) -> tuple[COCO, Counter, dict[str, list[str]]]:
    """:func:`read_coco` with what it left out: ``(coco, count by reason, the first few named by reason)``."""
    path = Path(ann_file).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such annotation file (a COCO instances .json)")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path} is not a COCO annotation file (not valid JSON: {e})") from None
    if not isinstance(data, dict) or "images" not in data or "categories" not in data:
        raise DataError(f"{path} has no 'images' or 'categories': not a COCO instances file")
    data.setdefault("annotations", [])
    for key in ("images", "categories", "annotations"):
        items = data[key]
        if not isinstance(items, list) or not all(isinstance(x, dict) for x in items):
            found = type(items).__name__ if not isinstance(items, list) else \
                f"a {type(next(x for x in items if not isinstance(x, dict))).__name__} among them"
            raise DataError(f"{path}: '{key}' must be a list of objects ({{...}}), found {found}; not a COCO "
                            f"instances file")
    for c in data["categories"]:
        if not _whole(c.get("id")):
            raise DataError(f"{path}: the category {json.dumps(c)[:80]} has no whole-number 'id'; give every "
                            f"category one")

    skipped: Counter[str] = Counter()
    named: dict[str, list[str]] = {}

    def skip(why: str, what: str) -> None:
        skipped[why] += 1
        if len(named.setdefault(why, [])) < EXAMPLES:
            named[why].append(what)

    images, seen = [], set()
    for img in data["images"]:
        i, name, W, H = img.get("id"), img.get("file_name"), img.get("width"), img.get("height")
        if not _whole(i) or i in seen:
            skip("images whose id is not a whole number (or is given twice) skipped", f"id {i!r}")
        elif not isinstance(name, str) or not name:
            skip("images without a file_name skipped", f"image {i}")
        elif any(v is not None and not (_finite(v) and v > 0) for v in (W, H)):
            skip("images whose width / height is not a positive number skipped", f"image {i}: {W!r} x {H!r}")
        else:
            images.append(img)
            seen.add(i)
    cat_ids = {c["id"] for c in data["categories"]}
    anns = []
    for k, ann in enumerate(data["annotations"]):  # what COCOeval needs and files may leave out, and wrong types
        ann.setdefault("id", k + 1)
        ann.setdefault("iscrowd", 0)
        who, box = f"annotation {ann['id']}", ann.get("bbox")
        if not _whole(ann.get("image_id")) or ann["image_id"] not in seen:
            skip("annotations of no listed image skipped", f"{who}: image_id {ann.get('image_id')!r}")
        elif not _whole(ann.get("category_id")) or ann["category_id"] not in cat_ids:
            skip("annotations of unknown categories skipped", f"{who}: category_id {ann.get('category_id')!r}")
        elif not (isinstance(box, list) and len(box) == 4 and all(map(_finite, box))):
            skip("annotations with a malformed bbox skipped", f"{who}: bbox {box!r}"[:80])
        elif masks and _segmentation_problem(ann.get("segmentation")) == "empty":
            skip("annotations without a mask skipped", who)
        elif masks and _segmentation_problem(ann.get("segmentation")):
            skip("annotations with a malformed segmentation skipped", f"{who}: {str(ann['segmentation'])[:40]}")
        else:
            if not _finite(ann.get("area")):
                ann["area"] = float(box[2]) * float(box[3])
            anns.append(ann)
    data["images"], data["annotations"] = images, anns
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            coco = COCO()
            coco.dataset = data
            coco.createIndex()
    except (ValueError, KeyError, TypeError) as e:
        raise DataError(f"{path} is not a COCO annotation file ({type(e).__name__}: {e})") from None
    return coco, skipped, named


class CocoInstances(torch.utils.data.Dataset):
    """``(PIL image | Unreadable, target)`` for every image of a COCO file; ``target`` is torchvision's:
    ``boxes`` ``[N, 4]`` (x0, y0, x1, y1, pixels), ``labels`` ``[N]`` (1..K), ``masks`` ``[N, H, W]`` uint8 (with
    ``masks=True``), ``image_id``. ``classes[k - 1]`` names label ``k``. A file without one annotation left to
    learn from is a :class:`DataError` (with ``require_annotations=False``, a warning: an evaluation that wants the
    AP of -1 COCO gives)."""

    def __init__(self, ann_file: str | os.PathLike, image_dir: str | os.PathLike, *, masks: bool = True,
                 limit: int | None = None, require_annotations: bool = True):
        self.coco, self.dropped, named = _read_coco(ann_file, masks=masks)
        self.image_dir = Path(image_dir).expanduser()
        if not self.image_dir.is_dir():
            raise FileNotFoundError(f"{self.image_dir}: no such image folder (the images of {ann_file})")
        cats = sorted(self.coco.dataset["categories"], key=lambda c: c["id"])
        if not cats:
            raise DataError(f"{ann_file} lists no categories")
        self.cat_ids = [c["id"] for c in cats]  # label k (1..K) <-> category id cat_ids[k - 1]
        self.classes = [str(c.get("name", c["id"])) for c in cats]
        self.label_of = {cid: k + 1 for k, cid in enumerate(self.cat_ids)}
        self.ids = sorted(self.coco.imgs)[:limit]
        self.masks = masks
        given = len(self.coco.dataset["annotations"]) + sum(n for why, n in self.dropped.items()
                                                            if why.startswith("annotations"))
        self._anns = {i: self._clean(i) for i in self.ids}
        if self.dropped:
            log.warning("%s: %s", ann_file, _said(self.dropped, named))
        if not any(self._anns.values()):
            purpose = "train on or score" if require_annotations else "score"
            message = (f"{Path(ann_file).expanduser()} has no annotation to {purpose} ({len(self.ids)} images"
                       f"{f' (data.limit={limit})' if limit is not None else ''}, {given} annotations in the file"
                       f"{': ' + _said(self.dropped, {}) if self.dropped else ''}): nothing would be learnt and COCO "
                       f"AP would be -1; give a file with the objects' annotations")
            if require_annotations:
                raise DataError(message)
            log.warning("%s", message)

    def _clean(self, image_id: int) -> list[dict[str, Any]]:
        """The image's usable annotations, boxes clipped; what is skipped is counted by reason."""
        info = self.coco.imgs[image_id]
        W, H = info.get("width"), info.get("height")
        kept = []
        for ann in self.coco.imgToAnns.get(image_id, []):
            if ann.get("iscrowd", 0):
                self.dropped["crowd regions not trained on"] += 1
                continue
            if ann.get("category_id") not in self.label_of:
                self.dropped["annotations of unknown categories skipped"] += 1
                continue
            x, y, w, h = (float(v) for v in ann["bbox"])  # four finite numbers (checked when read)
            if w <= 0 or h <= 0:
                self.dropped["zero-area boxes skipped"] += 1
                continue
            box = [x, y, x + w, y + h]
            clipped = box if not (W and H) else [min(max(box[0], 0), W), min(max(box[1], 0), H),
                                                 min(max(box[2], 0), W), min(max(box[3], 0), H)]
            if clipped[2] - clipped[0] < 1 or clipped[3] - clipped[1] < 1:
                self.dropped["boxes outside their image skipped"] += 1
                continue
            if clipped != box:
                self.dropped["boxes clipped to their image"] += 1
            if self.masks and not ann.get("segmentation"):
                self.dropped["annotations without a mask skipped"] += 1
                continue
            kept.append({**ann, "box": clipped})
        return kept

    def __len__(self) -> int:
        return len(self.ids)

    def mask(self, ann: dict[str, Any], height: int, width: int) -> np.ndarray:
        """An annotation's mask ``[H, W]`` uint8 (polygons or RLE), via pycocotools."""
        seg = ann["segmentation"]
        if isinstance(seg, list):  # polygons
            rle = mask_utils.merge(mask_utils.frPyObjects(seg, height, width))
        elif isinstance(seg.get("counts"), list):  # uncompressed RLE
            rle = mask_utils.frPyObjects(seg, height, width)
        else:
            rle = seg
        return mask_utils.decode(rle)

    def __getitem__(self, i: int) -> tuple[Any, dict[str, Any]]:
        image_id = self.ids[i]
        info = self.coco.imgs[image_id]
        path = self.image_dir / info["file_name"]
        target: dict[str, Any] = {"image_id": image_id}
        try:
            image = load_image(path)
        except Exception as e:
            return Unreadable.of(path, e), target
        W, H = image.size
        anns = self._anns[image_id]
        masks = [self.mask(a, H, W) for a in anns] if self.masks else []
        keep = [k for k in range(len(anns)) if not self.masks or masks[k].any()]  # an empty mask: nothing to learn
        target["boxes"] = torch.tensor([anns[k]["box"] for k in keep], dtype=torch.float32).reshape(-1, 4)
        target["labels"] = torch.tensor([self.label_of[anns[k]["category_id"]] for k in keep], dtype=torch.int64)
        if self.masks:
            target["masks"] = torch.from_numpy(np.stack([masks[k] for k in keep])) if keep else \
                torch.zeros(0, H, W, dtype=torch.uint8)
        return image, target

    def category_id(self, label: int) -> int:
        """The file's category id of label ``label`` (1..K)."""
        return self.cat_ids[label - 1]


def to_channels(image, channels: int | None):
    """A PIL image as the encoder takes it: ``"L"`` for 1 channel (colour converted to grey, as ``predict``
    does), ``"RGB"`` for 3 (grey repeated); unchanged for None."""
    if channels is None:
        return image
    mode = "L" if channels == 1 else "RGB"
    return image if image.mode == mode else image.convert(mode)


def train_transform(size: int, *, scale_range: Sequence[float] = (0.5, 1.5), hflip: bool = True,
                    boxes: bool = True, mask_fill: int = 0, channels: int | None = None) -> Callable:
    """The detection / segmentation training augmentation (torchvision v2, boxes and masks moved with the image):
    horizontal flip, large-scale-jitter style resize (the image scaled to fit ``size`` x a random factor in
    ``scale_range``), a random ``size`` x ``size`` crop (padded when smaller: images with 0, masks with
    ``mask_fill``, 255 = ignored for semantic masks), and with ``boxes`` the boxes clipped and the emptied ones
    removed with their masks. Drawn from the sample's "augment" stream."""
    steps = v2.Compose([
        *([v2.RandomHorizontalFlip()] if hflip else []),
        v2.ScaleJitter(target_size=(size, size), scale_range=tuple(scale_range), antialias=True),
        v2.RandomCrop(size, pad_if_needed=True, fill={tv_tensors.Mask: mask_fill, "others": 0}),
        *([v2.ClampBoundingBoxes(), v2.SanitizeBoundingBoxes(min_size=1)] if boxes else []),
        v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True),
    ])
    seeded = Seeded("augment", steps)

    def transform(image, target: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
        return seeded(*to_tv(to_channels(image, channels), target))

    return transform


def eval_transform(channels: int | None = None) -> Callable:
    """The image (in the encoder's ``channels``, see :func:`to_channels`) as a float tensor in 0..1, targets
    unchanged (torchvision's detectors resize by themselves)."""
    def transform(image, target: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
        image = to_channels(image, channels)
        return v2.functional.to_dtype(v2.functional.to_image(image), torch.float32, scale=True), target
    return transform


def to_tv(image, target: dict[str, Any]) -> tuple[tv_tensors.Image, dict[str, Any]]:
    """A PIL image and its target as torchvision tensors that transforms v2 move together."""
    img = v2.functional.to_image(image)
    H, W = img.shape[-2:]
    target = dict(target)
    if "boxes" in target:
        target["boxes"] = tv_tensors.BoundingBoxes(target["boxes"], format="XYXY", canvas_size=(H, W))
    for key in ("masks", "mask"):  # instance masks [N, H, W], a semantic mask [H, W]
        if key in target:
            target[key] = tv_tensors.Mask(target[key])
    return img, target


class DenseSamples(torch.utils.data.Dataset):
    """``(image, target)`` items under ``transform(image, target)``, indexed by ``(epoch, i)`` as the Trainer's
    sampler asks, each sample's draws from its own streams; unreadable files pass through as
    :class:`~hieralab.data.images.Unreadable`."""

    def __init__(self, dataset, transform: Callable, *, seed: int):
        self.dataset, self.transform, self.seed = dataset, transform, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]):
        epoch, i = key
        image, target = self.dataset[i]
        if isinstance(image, Unreadable):
            return image
        with sample_key(self.seed, epoch, i):
            x, target = self.transform(image, target)
        plain = {k: v.as_subclass(torch.Tensor) if isinstance(v, torch.Tensor) else v for k, v in target.items()}
        return {"x": x.as_subclass(torch.Tensor), "target": plain}


def collate_dense(samples: Sequence[Any]) -> dict[str, Any]:
    """A batch of images of any sizes: ``{"x": [images], "target": [targets], "size", "skipped", "unreadable"}``
    (torchvision's detectors take lists; unreadable files are dropped, counted and named)."""
    good, skipped = drop_unreadable(samples)
    return {"x": [s["x"] for s in good], "target": [s["target"] for s in good], "size": len(good), **skipped}
