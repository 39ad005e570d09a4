"""A folder of images: class subfolders (torchvision ``ImageFolder`` layout) or a flat folder (label -1).

Unreadable or corrupt files do not stop a run: the sample comes back as ``None`` and the collate function drops and
counts it (see ``data/pipeline.py``), so the training log reports how many were skipped.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from PIL import Image
from torchvision.datasets.folder import IMG_EXTENSIONS

log = logging.getLogger(__name__)


def _is_image(p: Path) -> bool:
    return p.is_file() and p.suffix.lower() in IMG_EXTENSIONS and not p.name.startswith(".")


class ImageFiles(torch.utils.data.Dataset):
    """``(RGB PIL image or None, label)``; labels index ``classes`` (sorted subfolder names), -1 in a flat folder."""

    def __init__(self, root: str | os.PathLike):
        root = Path(root).expanduser()
        if not root.is_dir():
            raise FileNotFoundError(f"image folder {root} does not exist; set data.source to a folder of images")
        subdirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
        self.samples: list[tuple[Path, int]] = []
        self.classes: list[str] = []
        if subdirs:  # ImageFolder layout
            self.classes = [d.name for d in subdirs]
            for label, d in enumerate(subdirs):
                self.samples += [(p, label) for p in sorted(d.rglob("*")) if _is_image(p)]
        self.samples += [(p, -1) for p in sorted(root.iterdir()) if _is_image(p)]
        if not self.samples:
            raise ValueError(f"no images in {root} (looked for {', '.join(IMG_EXTENSIONS[:6])}, ... in the folder "
                             "and its class subfolders); point data.source at a folder of images")

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[Image.Image | None, int]:
        path, label = self.samples[i]
        try:
            with Image.open(path) as img:
                return img.convert("RGB"), label
        except Exception as e:  # truncated, corrupt or not an image: skipped by the collate function
            log.debug("skipping unreadable image %s (%s)", path, e)
            return None, label
