"""From a data config to batches, reproducibly.

Every random choice for a sample (its augmentation, its MAE mask) is drawn from a generator seeded by
``(run seed, epoch, sample index)``, and the sampler's order by ``(run seed, epoch)``. So a batch depends only on the
step it belongs to: not on the number of workers, not on the number of processes, and not on whether the run was
resumed. That is what makes a resumed run reproduce the uninterrupted one exactly.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch

from ..mae.masking import random_visible, seeded_generator
from . import fashion_mnist
from .images import ImageFiles
from .video import VideoClips

log = logging.getLogger(__name__)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def build_dataset(source: str, split: str = "train", limit: int | None = None, *, video: bool = False):
    """``(dataset, mean, std, classes)`` for ``"fashion-mnist"`` or an image folder (items ``(PIL image, label)``),
    or with ``video`` a folder / list of clips (items ``(path, label)``); ``limit`` keeps the first N."""
    if video:
        if source == "fashion-mnist":
            raise ValueError("a video model needs video data: set data.source to a folder of clips (class subfolders) "
                             "or a .csv / .json list of (path, label)")
        ds, mean, std = VideoClips(source), IMAGENET_MEAN, IMAGENET_STD
    elif source == "fashion-mnist":
        ds, mean, std = fashion_mnist.FashionMNIST(split), fashion_mnist.MEAN, fashion_mnist.STD
    else:
        ds, mean, std = ImageFiles(source), IMAGENET_MEAN, IMAGENET_STD
    classes = list(ds.classes)
    if limit is not None:
        ds = torch.utils.data.Subset(ds, range(min(limit, len(ds))))
    return ds, mean, std, classes


def labelled_splits(data, val_source: str | None = None, val_fraction: float = 0.1, *, video: bool = False):
    """``(train, val, classes, mean, std)`` for supervised work on a :class:`~hieralab.config.DataConfig`'s source:
    Fashion-MNIST's train / test splits, a folder (or clip list) with a separate ``val_source``, or with a fixed
    ``val_fraction`` held out (the same items in every run)."""
    train, mean, std, classes = build_dataset(data.source, data.split, data.limit, video=video)
    if val_source:
        val, _, _, val_classes = build_dataset(val_source, data.split, None, video=video)
        if val_classes != classes:
            raise ValueError(f"val_source {val_source} has classes {val_classes[:4]}..., the training data "
                             f"{classes[:4]}...; use the same class folders")
    elif data.source == "fashion-mnist":
        val, _, _, _ = build_dataset("fashion-mnist", "test", data.limit)
    else:
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(1234)).tolist()
        n_val = max(1, int(len(train) * val_fraction))
        train, val = torch.utils.data.Subset(train, order[n_val:]), torch.utils.data.Subset(train, order[:n_val])
    if len(classes) < 2:
        raise ValueError(f"{data.source} has {len(classes)} class(es); supervised training needs labelled class "
                         "subfolders (ImageFolder layout)")
    return train, val, classes, data.mean or mean, data.std or std


class SeededSamples(torch.utils.data.Dataset):
    """Wraps a ``(PIL image | None, label)`` (or ``(clip path, label)``) dataset: indexed by ``(epoch, i)`` (see
    :class:`EpochSampler`), returns ``{"x", "label"[, "visible"]}`` with the transform and the mask drawn from a
    ``(seed, epoch, i)`` generator, or ``None`` for an unreadable image or clip."""

    def __init__(self, dataset, transform: Callable, *, seed: int, num_units: int | None = None,
                 mask_ratio: float = 0.0, repeats: int = 1):
        self.dataset, self.transform, self.seed = dataset, transform, seed
        self.num_units, self.mask_ratio, self.repeats = num_units, mask_ratio, repeats

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, Any] | None:
        epoch, i = key
        image, label = self.dataset[i]
        if image is None:
            return None
        # transforms v2 draw from the global CPU generator, timm's (RandAugment, random erasing) also from Python's
        # `random` and numpy's: seed all three for this sample and put them back afterwards (seeding the torch
        # generator itself is ~250x cheaper than torch.manual_seed + fork_rng, which touch CUDA state)
        g = torch.default_generator
        saved, saved_py, saved_np = g.get_state(), random.getstate(), np.random.get_state()
        g.manual_seed(hash((self.seed, epoch, i, 0)) & 0x7FFF_FFFF_FFFF_FFFF)
        random.seed(hash((self.seed, epoch, i, 2)))
        np.random.seed(hash((self.seed, epoch, i, 3)) & 0xFFFF_FFFF)
        try:
            x = self.transform(image)
        finally:
            g.set_state(saved)
            random.setstate(saved_py)
            np.random.set_state(saved_np)
        if x is None:  # a clip that could not be decoded
            return None
        if self.repeats > 1:  # repeated augmentation: the transform made [R, ...] views, each its own sample
            return [self._sample(view, label, epoch, i, r) for r, view in enumerate(x)]
        return self._sample(x, label, epoch, i)

    def _sample(self, x: torch.Tensor, label: int, epoch: int, i: int, repeat: int = 0) -> dict[str, Any]:
        sample = {"x": x, "label": label}
        if self.num_units:
            g = seeded_generator(self.seed, epoch, i, 1, *((repeat,) if repeat else ()))
            sample["visible"] = random_visible(1, self.num_units, self.mask_ratio, generator=g)[0]  # [#MU]
        return sample


class EpochSampler(torch.utils.data.Sampler):
    """Yields ``(epoch, index)``: a permutation seeded by ``(seed, epoch)``, split across ``world`` processes
    (dropping the remainder so every process gets the same count), starting at position ``start`` of this rank."""

    def __init__(self, n: int, *, epoch: int, seed: int, shuffle: bool = True, rank: int = 0, world: int = 1,
                 start: int = 0):
        self.n, self.epoch, self.seed, self.shuffle = n, epoch, seed, shuffle
        self.rank, self.world, self.start = rank, world, start
        self.per_rank = n // world

    def indices(self) -> list[int]:
        order = (torch.randperm(self.n, generator=seeded_generator(self.seed, self.epoch)) if self.shuffle
                 else torch.arange(self.n))
        return order[: self.per_rank * self.world][self.rank:: self.world].tolist()[self.start:]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return iter((self.epoch, i) for i in self.indices())

    def __len__(self) -> int:
        return max(0, self.per_rank - self.start)


def collate(samples: Sequence[dict[str, Any] | list[dict[str, Any]] | None]) -> dict[str, Any]:
    """Stack samples, dropping unreadable ones; ``batch["skipped"]`` counts them (the batch may then be smaller).
    A list (one file's repeated-augmentation views) contributes each of its samples."""
    good = [s for item in samples if item is not None for s in (item if isinstance(item, list) else [item])]
    batch: dict[str, Any] = {"skipped": sum(item is None for item in samples), "size": len(good)}
    if good:
        for key in good[0]:
            batch[key] = torch.stack([torch.as_tensor(s[key]) for s in good])
    return batch


def check_repeat_aug(data, video: bool) -> int:
    """``data.repeat_aug``, checked: a video option (several clips from one decoding pass)."""
    if data.repeat_aug < 1:
        raise ValueError(f"data.repeat_aug={data.repeat_aug}: it counts clips per decoded video, use 1 or more")
    if data.repeat_aug > 1 and not video:
        raise ValueError("data.repeat_aug is a video option (clips cut from one decoded video); set it to 1 for images")
    return data.repeat_aug


def steps_per_epoch(n: int, batch_size: int, accum_steps: int, world: int) -> int:
    """Optimizer steps in one epoch (full micro-batches only)."""
    micro = (n // world) // batch_size
    if micro < accum_steps:
        raise ValueError(f"{n} images make {micro} batches of {batch_size} per process, fewer than accum_steps="
                         f"{accum_steps}; lower optim.batch_size or add data")
    return micro // accum_steps


def total_steps(epochs: float, per_epoch: int) -> int:
    return max(1, math.ceil(epochs * per_epoch))
