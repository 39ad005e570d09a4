"""A folder of images: class subfolders (torchvision ``ImageFolder`` layout) or a flat folder (label -1).

Images are read at their true range: 16-bit files (``I;16``, ``I``) are scaled from 0..65535 and float images
(``F``, e.g. float TIFFs) from 0..1 (or their own min..max, with a warning, when they lie outside it), instead of
being clipped to 255 or truncated to 0 by PIL's ``convert``. Grey images stay 1-channel (``L``), everything else
becomes RGB; the transforms then give the model the channels it takes.

Unreadable or corrupt files do not stop a run: the sample comes back as :class:`Unreadable` (path and reason) and
the collate function drops it, counts it and names it (see ``data/pipeline.py``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from PIL import Image
from torchvision.datasets.folder import IMG_EXTENSIONS

log = logging.getLogger(__name__)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # the normalisation of photos
GREY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F")
_warned_range: set[str] = set()


class Unreadable(NamedTuple):
    """A sample that could not be read: skipped, counted and named by the collate function."""

    path: str
    reason: str

    @classmethod
    def of(cls, path: str | os.PathLike, error: BaseException) -> Unreadable:
        """From the exception reading ``path`` raised (its message without the path, which is named already)."""
        text = (str(error).splitlines() or [""])[0].replace(f"'{path}'", "").replace(str(path), "").strip(" :")
        return cls(str(path), f"{type(error).__name__}{': ' + text if text else ''}")


def drop_unreadable(samples: Sequence[Any]) -> tuple[list[Any], dict[str, Any]]:
    """A batch's readable samples, and what a batch says of the others: ``{"skipped": count, "unreadable":
    ["path (reason)", ...]}`` (None stands for a sample that was never read, counted but unnamed)."""
    bad = [s for s in samples if s is None or isinstance(s, Unreadable)]
    good = [s for s in samples if s is not None and not isinstance(s, Unreadable)]
    return good, {"skipped": len(bad), "unreadable": [f"{u.path} ({u.reason})" for u in bad if u is not None]}


def to_8bit(img: Image.Image, name: str = "image") -> Image.Image:
    """An ``L`` (grey) or ``RGB`` image with the content of ``img`` scaled from its true range."""
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        a = np.asarray(img, dtype=np.float64)
        if img.mode == "F":
            low, high = 0.0, 1.0
        else:
            low, high = 0.0, 255.0 if img.mode == "I" and a.max(initial=0) <= 255 else 65535.0
        if a.size and (a.min() < low or a.max() > high):
            if img.mode not in _warned_range:
                _warned_range.add(img.mode)
                log.warning("%s: %s pixel values lie outside %g..%g; scaling each such image by its own range",
                            name, img.mode, low, high)
            low, high = float(a.min()), float(a.max())
        scaled = (a - low) / max(high - low, 1e-12) * 255.0
        return Image.fromarray(np.clip(np.round(scaled), 0, 255).astype(np.uint8), mode="L")
    return img.convert("L" if img.mode in GREY_MODES else "RGB")


def load_image(path: str | os.PathLike) -> Image.Image:
    """Read an image file as :func:`to_8bit` makes it (raises what PIL raises for unreadable files)."""
    with Image.open(path) as img:
        img.load()
        return to_8bit(img, str(path))


def is_image_file(p: Path) -> bool:
    """A file with an image extension torchvision's ImageFolder reads, not hidden."""
    return p.is_file() and p.suffix.lower() in IMG_EXTENSIONS and not p.name.startswith(".")


class ImageFiles(torch.utils.data.Dataset):
    """``(PIL image (L or RGB) or Unreadable, label)``; labels index ``classes`` (sorted subfolder names), -1 in a
    flat folder."""

    def __init__(self, root: str | os.PathLike):
        root = Path(root).expanduser()
        if not root.is_dir():
            raise FileNotFoundError(f"image folder {root} does not exist; set data.source to a folder of images")
        subdirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
        self.root = root
        self.samples: list[tuple[Path, int]] = []
        self.classes: list[str] = []
        if subdirs:  # ImageFolder layout
            self.classes = [d.name for d in subdirs]
            for label, d in enumerate(subdirs):
                self.samples += [(p, label) for p in sorted(d.rglob("*")) if is_image_file(p)]
        self.samples += [(p, -1) for p in sorted(root.iterdir()) if is_image_file(p)]
        if not self.samples:
            raise ValueError(f"no images in {root} (looked for {', '.join(IMG_EXTENSIONS[:6])}, ... in the folder "
                             "and its class subfolders); point data.source at a folder of images")

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[Image.Image | Unreadable, int]:
        path, label = self.samples[i]
        try:
            return load_image(path), label
        except Exception as e:  # truncated, corrupt or not an image: skipped by the collate function
            return Unreadable.of(path, e), label

    def channels(self, probe: int = 32) -> int:
        """1 when the images are grey, else 3 (see :func:`channels_of`)."""
        return channels_of([path for path, _ in self.samples], probe)


def channels_of(paths: list[Path], probe: int = 32) -> int:
    """1 when the images are grey, else 3, from the headers of up to ``probe`` files spread over ``paths``."""
    step = max(1, len(paths) // probe)
    modes = set()
    for path in paths[::step][:probe]:
        try:
            with Image.open(path) as img:
                modes.add(img.mode)
        except Exception:
            continue
    return 1 if modes and modes <= set(GREY_MODES) else 3
