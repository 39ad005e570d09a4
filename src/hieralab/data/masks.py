"""Semantic segmentation data: a folder of images and a folder of mask PNGs of the same names, as ADE20K ships
(``images/training`` + ``annotations/training``) or the Fashion-MNIST scenes (``images`` + ``semantic``).

A mask pixel holds its class index; 255 is ignored (not trained on, not scored). ``reduce_zero_label`` reads
ADE20K's convention, where 0 is "other": it becomes 255 and every class index moves down by one. An image without
its mask is skipped and named; a mask of another size than its image is an error naming both.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..errors import DataError
from .images import Unreadable, is_image_file, load_image

log = logging.getLogger(__name__)
IGNORE = 255


class MaskFolder(torch.utils.data.Dataset):
    """``(PIL image | Unreadable, {"mask": uint8 [H, W]})`` for the images of ``image_dir`` that have a mask of the
    same stem in ``mask_dir``; ``classes`` names the class indices."""

    def __init__(self, image_dir: str | os.PathLike, mask_dir: str | os.PathLike, *, classes: list[str],
                 reduce_zero_label: bool = False, limit: int | None = None):
        self.image_dir, self.mask_dir = Path(image_dir).expanduser(), Path(mask_dir).expanduser()
        for folder, what in ((self.image_dir, "image"), (self.mask_dir, "mask")):
            if not folder.is_dir():
                raise FileNotFoundError(f"{folder}: no such {what} folder")
        masks = {p.stem: p for p in self.mask_dir.iterdir() if p.suffix.lower() == ".png"}
        images = sorted(p for p in self.image_dir.iterdir() if is_image_file(p))
        missing = [p.name for p in images if p.stem not in masks]
        if missing:
            log.warning("%d images of %s have no mask in %s and are skipped (e.g. %s)", len(missing),
                        self.image_dir, self.mask_dir, ", ".join(missing[:3]))
        self.samples = [(p, masks[p.stem]) for p in images if p.stem in masks][:limit]
        if not self.samples:
            raise DataError(f"no image of {self.image_dir} has a mask of the same name in {self.mask_dir}")
        self.classes, self.reduce_zero_label = list(classes), reduce_zero_label
        self.warned = False  # about mask indices beyond the classes

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[Any, dict[str, Any]]:
        image_path, mask_path = self.samples[i]
        try:
            image = load_image(image_path)
            with Image.open(mask_path) as m:
                mask = np.array(m.convert("L") if m.mode not in ("L", "P", "I", "I;16") else m)
        except Exception as e:
            return Unreadable.of(image_path, e), {}
        if mask.shape != (image.size[1], image.size[0]):
            raise DataError(f"{mask_path} is {mask.shape[1]}x{mask.shape[0]} px but {image_path} is "
                            f"{image.size[0]}x{image.size[1]}; a mask must match its image")
        mask = mask.astype(np.int64)
        if self.reduce_zero_label:  # ADE20K: 0 is "other", ignored; class k is stored as k + 1
            mask = np.where((mask == 0) | (mask == IGNORE), IGNORE, mask - 1)
        beyond = (mask >= len(self.classes)) & (mask != IGNORE)
        if beyond.any():  # indices outside the classes: ignored, and said once
            if not self.warned:
                self.warned = True
                log.warning("%s holds class index %d but data.classes names %d classes (0..%d): those pixels are "
                            "ignored; name every class in data.classes", mask_path, mask[beyond].max(),
                            len(self.classes), len(self.classes) - 1)
            mask[beyond] = IGNORE
        return image, {"mask": torch.from_numpy(mask.astype(np.uint8))}
