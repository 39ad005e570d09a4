"""Fashion-MNIST (Xiao et al. 2017; MIT) from Debian's ``dataset-fashion-mnist``: 70,000 labelled 28x28 images that
install with no run-time download (``apt-get install dataset-fashion-mnist``)."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(os.environ.get("HIERALAB_FASHION_MNIST", "/usr/share/datasets/fashion-mnist"))
CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
MEAN, STD = (0.2860,) * 3, (0.3530,) * 3  # over the training images, repeated for RGB models


def _read_idx(path: Path, header: int) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        return np.frombuffer(f.read(), dtype=np.uint8, offset=header)


class FashionMNIST(torch.utils.data.Dataset):
    """``(PIL image (mode L), label)`` pairs; ``split`` is ``"train"`` (60,000) or ``"test"`` (10,000)."""

    classes = CLASSES
    channels = 1  # grey images

    def __init__(self, split: str = "train", root: str | os.PathLike = ROOT):
        if split not in ("train", "test"):
            raise ValueError(f"Fashion-MNIST split must be 'train' or 'test', got {split!r}")
        root = Path(root)
        prefix = "train" if split == "train" else "t10k"
        images, labels = root / f"{prefix}-images-idx3-ubyte.gz", root / f"{prefix}-labels-idx1-ubyte.gz"
        if not images.exists():
            raise FileNotFoundError(f"Fashion-MNIST not found at {root}: install it with `apt-get install "
                                    "dataset-fashion-mnist` (or set data.source to a folder of images)")
        self.images = _read_idx(images, 16).reshape(-1, 28, 28)  # [N, 28, 28] uint8
        self.targets = _read_idx(labels, 8).astype(np.int64)  # [N]

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple[Image.Image, int]:
        return Image.fromarray(self.images[i], mode="L"), int(self.targets[i])
