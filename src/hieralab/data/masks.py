"""Semantic segmentation data: a folder of images and a folder of mask PNGs of the same names, as ADE20K ships
(``images/training`` + ``annotations/training``) or the Fashion-MNIST scenes (``images`` + ``semantic``).

A mask pixel holds its class index; 255 is ignored (not trained on, not scored). ``reduce_zero_label`` reads
ADE20K's convention, where 0 is "other": it becomes 255 and every class index moves down by one. An image without
its mask is skipped and named; a mask of another size than its image is an error naming both.

A mask is one value a pixel: 8-bit grayscale ("L"), palette ("P": its indices are the classes, whatever colours the
palette shows), 1-bit, or 16/32-bit integers whose values are all class indices (or 255). Checked before training:
a colour mask without a palette (RGB, RGBA...) is refused, naming the file; so is a 16-bit mask with a value
outside the classes (say an instance id or a colour code), and a set of masks with no labelled pixel at all (every
value outside the classes or 255), which would train on nothing and score a meaningless mIoU. An 8-bit index beyond
the classes is ignored (not trained on, not scored) and said once.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..metrics.segmentation import IGNORE
from ..errors import DataError
from .images import Unreadable, is_image_file, load_image

log = logging.getLogger(__name__)
INDEX_MODES = ("L", "LA", "P", "1", "I", "I;16", "I;16B", "I;16L", "F")  # one value a pixel (LA: its alpha aside)
CHECKED = 32  # masks read before training to find a labelled pixel


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
        self._check()

    def _check(self) -> None:
        """Refuse, before anything trains on them, masks that cannot hold class indices: colour ones (every file's
        header is read), 16-bit ones with values beyond the classes, and masks without one labelled pixel (a spread
        of up to :data:`CHECKED` masks is read; more only while none of them has a labelled pixel)."""
        for _, mask_path in self.samples:
            try:
                with Image.open(mask_path) as m:
                    mode = m.mode
            except Exception:
                continue  # unreadable: skipped and counted when read, as an unreadable image is
            if mode not in INDEX_MODES:
                raise DataError(_colour_problem(mask_path, mode, len(self.classes)))
        n = len(self.samples)
        spread = sorted({round(k * (n - 1) / max(CHECKED - 1, 1)) for k in range(min(CHECKED, n))})
        rest = sorted(set(range(n)) - set(spread))
        for k, i in enumerate(spread + rest):
            if k == len(spread):
                log.info("%d masks of %s read and none has a labelled pixel; reading the other %d", k,
                         self.mask_dir, len(rest))
            mask_path = self.samples[i][1]
            try:
                raw = read_mask(mask_path, len(self.classes))
            except DataError:
                raise
            except Exception:
                continue  # unreadable: skipped and counted when read
            if (self._indices(raw, mask_path, warn=False) != IGNORE).any():
                return
        raise DataError(f"no labelled pixel in the {n} masks of {self.mask_dir}: every value is 255 (ignored) or "
                        f"beyond data.classes (0..{len(self.classes) - 1}"
                        f"{', after reduce_zero_label' if self.reduce_zero_label else ''}); a mask pixel must hold "
                        f"its class index: check data.classes, data.reduce_zero_label and the mask files")

    def _indices(self, raw: np.ndarray, mask_path: Path, warn: bool = True) -> np.ndarray:
        """Class indices (int64 [H, W], :data:`IGNORE` where not labelled) of a mask's raw values."""
        mask = raw.astype(np.int64)
        if self.reduce_zero_label:  # ADE20K: 0 is "other", ignored; class k is stored as k + 1
            mask = np.where((mask == 0) | (mask == IGNORE), IGNORE, mask - 1)
        beyond = ((mask >= len(self.classes)) & (mask != IGNORE)) | (mask < 0)
        if beyond.any() and raw.dtype.itemsize > 1:  # 16/32-bit: instance ids or colour codes, not indices
            raise DataError(f"{mask_path} is a {8 * raw.dtype.itemsize}-bit mask holding value "
                            f"{int(raw[beyond].max())}, beyond data.classes (0..{len(self.classes) - 1}, 255 "
                            f"ignored): save it with one class index a pixel (8-bit 'L' or palette 'P' PNG), or "
                            f"name every class in data.classes")
        if beyond.any():  # 8-bit indices outside the classes: ignored, and said once
            if warn and not self.warned:
                self.warned = True
                log.warning("%s holds class index %d but data.classes names %d classes (0..%d): those pixels are "
                            "ignored; name every class in data.classes", mask_path, mask[beyond].max(),
                            len(self.classes), len(self.classes) - 1)
            mask[beyond] = IGNORE
        return mask

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[Any, dict[str, Any]]:
        image_path, mask_path = self.samples[i]
        try:
            image = load_image(image_path)
            raw = read_mask(mask_path, len(self.classes))
        except DataError:
            raise  # a colour mask: the user's to fix, not a file to skip
        except Exception as e:
            return Unreadable.of(image_path, e), {}
        if raw.shape != (image.size[1], image.size[0]):
            raise DataError(f"{mask_path} is {raw.shape[1]}x{raw.shape[0]} px but {image_path} is "
                            f"{image.size[0]}x{image.size[1]}; a mask must match its image")
        mask = self._indices(raw, mask_path)
        return image, {"mask": torch.from_numpy(mask.astype(np.uint8))}


def _colour_problem(path: Path, mode: str, classes: int | None) -> str:
    indices = f"0..{classes - 1}" if classes else "0..K-1"
    return (f"{path} is a colour ({mode}) image without a palette, not a mask of class indices: save each mask as an "
            f"8-bit grayscale ('L') or palette ('P') PNG whose pixel values are the class indices ({indices}, "
            f"255 ignored), e.g. by mapping each colour to its index")


def read_mask(path: str | os.PathLike, classes: int | None = None) -> np.ndarray:
    """A mask file's values ([H, W]; uint8, bool as 0/1, or the 16/32-bit integers as stored); a colour mode is a
    :class:`DataError` naming the file (and the ``classes`` indices it should hold)."""
    with Image.open(path) as m:
        if m.mode not in INDEX_MODES:
            raise DataError(_colour_problem(Path(path), m.mode, classes))
        values = np.array(m.getchannel("L") if m.mode == "LA" else m)
    if values.dtype == bool:
        return values.astype(np.uint8)
    if values.dtype.kind == "f":  # mode "F": whole numbers only
        if not np.all(np.isfinite(values) & (values == np.round(values))):
            raise DataError(f"{path} holds fractional values, not class indices: save it as an 8-bit grayscale "
                            f"('L') or palette ('P') PNG of whole class indices")
        values = values.astype(np.int32)  # as mode "I" holds them
    return values
