"""From a data config to batches, reproducibly.

Every random choice for a sample (its crop, its flip, its clip start, its MAE mask) is drawn from its own named
stream seeded by ``(run seed, epoch, sample index)`` (``data/streams.py``, ``seeds.py``), and the sampler's order
by ``(run seed, epoch)``. So a batch depends only on the step it belongs to: not on the number of workers, not on
the number of processes, and not on whether the run was resumed. That is what makes a resumed run reproduce the
uninterrupted one exactly.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch

from .. import seeds
from ..errors import DataError
from ..mae.masking import random_visible
from . import catalog
from .images import IMAGENET_MEAN, IMAGENET_STD, ImageFiles, Unreadable, drop_unreadable
from .shards import ShardSet, ShardStream, is_shard_source
from .streams import sample_key
from .video import VideoClips

log = logging.getLogger(__name__)


def build_dataset(source: str, split: str = "train", limit: int | None = None, *, video: bool = False):
    """``(dataset, mean, std, classes)`` for a built-in dataset (``data/catalog.py``) or an image folder (items
    ``(PIL image, label)``), or with ``video`` a folder / list of clips (items ``(path, label)``), or tar shards of
    either; ``limit`` keeps the first N."""
    if is_shard_source(source):
        ds = ShardSet(source)
        if (ds.kind == "clips") != video:
            raise DataError(f"{source} holds {ds.kind} but the model takes {'video' if video else 'images'}")
        if limit is not None:
            raise DataError("data.limit does not apply to tar shards (they stream); give fewer shards in the pattern")
        return ds, IMAGENET_MEAN, IMAGENET_STD, list(ds.classes)
    entry = catalog.builtin(source)
    if video:
        if entry is not None:
            raise DataError(f"a video model needs video data, and {source} holds images: set data.source to a folder "
                            "of clips (class subfolders) or a .csv / .json list of (path, label)")
        ds, mean, std = VideoClips(source), IMAGENET_MEAN, IMAGENET_STD
    elif entry is not None:
        if split not in entry.splits:
            raise DataError(f"{source} has the splits {', '.join(entry.splits)}, not {split!r}")
        ds, mean, std = entry.build(split), entry.mean, entry.std
    else:
        ds = ImageFiles(source)
        mean, std = grey_statistics(ds) if ds.channels() == 1 else (IMAGENET_MEAN, IMAGENET_STD)
    classes = list(ds.classes)
    if limit is not None:
        ds = torch.utils.data.Subset(ds, range(min(limit, len(ds))))
    return ds, mean, std, classes


def grey_statistics(dataset: ImageFiles, count: int = 256) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The pixel mean and std (0..1) of a folder of grey images, from up to ``count`` of them spread over the folder
    (ImageNet's colour statistics say nothing about grey data), repeated over 3 channels as the built-ins'."""
    step = max(1, len(dataset) // count)
    total, squares, n = 0.0, 0.0, 0
    for i in range(0, len(dataset), step):
        image, _ = dataset[i]
        if isinstance(image, Unreadable):
            continue
        a = torch.from_numpy(np.asarray(image.convert("L"), dtype=np.float64) / 255.0)
        total, squares, n = total + a.sum().item(), squares + (a * a).sum().item(), n + a.numel()
    if n == 0:
        return IMAGENET_MEAN, IMAGENET_STD
    mean = total / n
    std = max(math.sqrt(max(squares / n - mean * mean, 0.0)), 1e-3)
    return (round(mean, 4),) * 3, (round(std, 4),) * 3


def item_labels(dataset) -> list[int]:
    """The label of every item, read without loading the images or clips (-1 where a folder is flat)."""
    if isinstance(dataset, torch.utils.data.Subset):
        inner = item_labels(dataset.dataset)
        return [inner[i] for i in dataset.indices]
    if hasattr(dataset, "targets"):  # a built-in that holds its labels as one tensor
        return dataset.targets.tolist()
    if isinstance(dataset, ImageFiles):
        return [label for _, label in dataset.samples]
    if isinstance(dataset, VideoClips):
        return [label for _, label in dataset.items]
    if isinstance(dataset, ShardSet):
        return dataset.labels()
    return [dataset[i][1] for i in range(len(dataset))]


def spread_over_classes(labels: Sequence[int], count: int) -> list[int]:
    """``count`` item indices taking the classes in turn (the first item of each class, then the second, ...), so
    a handful of pictures shows every class rather than the first folder's."""
    by_class: dict[int, list[int]] = {}
    for i, label in enumerate(labels):
        by_class.setdefault(label, []).append(i)
    queues = [by_class[c] for c in sorted(by_class)]
    order = [q[k] for k in range(max(map(len, queues), default=0)) for q in queues if k < len(q)]
    return order[:count]


def data_channels(dataset) -> int:
    """The channels the data has: 1 for Fashion-MNIST and folders of grey images, 3 for colour images and video."""
    while isinstance(dataset, torch.utils.data.Subset):
        dataset = dataset.dataset
    if getattr(dataset, "channels", None) == 1:  # a built-in of grey images
        return 1
    if isinstance(dataset, ImageFiles):
        return dataset.channels()
    if isinstance(dataset, ShardSet) and dataset.kind == "images":  # from the first few samples
        return 1 if all(not isinstance(im, Unreadable) and im.mode == "L"
                        for im, _ in (dataset[i] for i in range(min(8, len(dataset))))) else 3
    return 3


def labelled_splits(data, val_source: str | None = None, val_fraction: float = 0.1, *, video: bool = False):
    """``(train, val, classes, mean, std)`` for supervised work on a :class:`~hieralab.config.DataConfig`'s source:
    Fashion-MNIST's train / test splits, a folder (or clip list) with a separate ``val_source``, or with a fixed
    ``val_fraction`` held out (the same items in every run)."""
    train, mean, std, classes = build_dataset(data.source, data.split, data.limit, video=video)
    if val_source:
        val, _, _, val_classes = build_dataset(val_source, data.split, None, video=video)
        if val_classes != classes:
            raise DataError(f"val_source {val_source} has classes {val_classes[:4]}..., the training data "
                            f"{classes[:4]}...; use the same class folders")
    elif (entry := catalog.builtin(data.source)) is not None:  # its held-out split
        val, _, _, _ = build_dataset(data.source, entry.held_out, data.limit)
    else:
        order = torch.randperm(len(train), generator=seeds.generator(0, "split")).tolist()
        n_val = max(1, int(len(train) * val_fraction))
        if n_val >= len(train):
            raise DataError(f"{data.source} has {len(train)} items: too few to hold out val_fraction={val_fraction}; "
                            "add data or give val_source")
        train, val = torch.utils.data.Subset(train, order[n_val:]), torch.utils.data.Subset(train, order[:n_val])
    if len(classes) < 2:
        raise DataError(f"{data.source} has {len(classes)} class(es); supervised training needs labelled class "
                        "subfolders (ImageFolder layout)")
    return train, val, classes, data.mean or mean, data.std or std


class SeededSamples(torch.utils.data.Dataset):
    """Wraps a ``(PIL image | Unreadable, label)`` (or ``(clip path, label)``) dataset: indexed by ``(epoch, i)``
    (see :class:`EpochSampler`), returns ``{"x", "label"[, "visible"]}`` with the transform's draws and the mask
    from the sample's own streams, or :class:`Unreadable` for a file that cannot be read."""

    def __init__(self, dataset, transform: Callable, *, seed: int, num_units: int | None = None,
                 mask_ratio: float = 0.0, repeats: int = 1, shuffle_buffer: int = 1000):
        self.dataset, self.transform, self.seed = dataset, transform, seed
        self.num_units, self.mask_ratio, self.repeats = num_units, mask_ratio, repeats
        self.shuffle_buffer = shuffle_buffer  # tar shards stream through a shuffle buffer (see epoch_batches)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, Any] | list[dict[str, Any]] | Unreadable:
        epoch, i = key
        return self.sample(self.dataset[i], epoch, i)

    def sample(self, item: tuple[Any, int], epoch: int, i: int) -> dict[str, Any] | list[dict[str, Any]] | Unreadable:
        """The training sample of item ``i`` (``(image | clip, label)``, already read) in ``epoch``."""
        image, label = item
        if isinstance(image, Unreadable):
            return image
        with sample_key(self.seed, epoch, i):
            x = self.transform(image)
        if isinstance(x, Unreadable):  # a clip that could not be decoded
            return x
        if self.repeats > 1:  # repeated augmentation: the transform made [R, ...] views, each its own sample
            return [self._sample(v, label, epoch, i, r) for r, v in enumerate(x)]
        return self._sample(x, label, epoch, i)

    def _sample(self, x: torch.Tensor, label: int, epoch: int, i: int, repeat: int = 0) -> dict[str, Any]:
        sample = {"x": x, "label": label}
        if self.num_units:
            g = seeds.generator(self.seed, "mask", epoch, i, repeat)
            sample["visible"] = random_visible(1, self.num_units, self.mask_ratio, generator=g)[0]  # [#MU]
        return sample


def first_readable(samples: torch.utils.data.Dataset, epoch: int = 0) -> int:
    """The index of the first sample of ``samples`` (a :class:`SeededSamples`) that can be read; a
    :class:`DataError` naming the first unreadable files when none can: nothing trains on no data."""
    problems: list[Unreadable] = []
    for i in range(len(samples)):
        item = samples[(epoch, i)]
        if not isinstance(item, Unreadable):
            return i
        problems.append(item)
    shown = "; ".join(f"{u.path} ({u.reason})" for u in problems[:3])
    raise DataError(f"none of the {len(problems)} files of the data can be read (e.g. {shown}); nothing to train on")


class EpochSampler(torch.utils.data.Sampler):
    """Yields ``(epoch, index)``: a permutation seeded by ``(seed, epoch)``, split across ``world`` processes
    (dropping the remainder so every process gets the same count), starting at position ``start`` of this rank."""

    def __init__(self, n: int, *, epoch: int, seed: int, shuffle: bool = True, rank: int = 0, world: int = 1,
                 start: int = 0):
        self.n, self.epoch, self.seed, self.shuffle = n, epoch, seed, shuffle
        self.rank, self.world, self.start = rank, world, start
        self.per_rank = n // world

    def indices(self) -> list[int]:
        order = (torch.randperm(self.n, generator=seeds.generator(self.seed, "order", self.epoch)) if self.shuffle
                 else torch.arange(self.n))
        return order[: self.per_rank * self.world][self.rank:: self.world].tolist()[self.start:]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return iter((self.epoch, i) for i in self.indices())

    def __len__(self) -> int:
        return max(0, self.per_rank - self.start)


def epoch_batches(samples: torch.utils.data.Dataset, *, epoch: int, seed: int, rank: int, world: int, batch_size: int,
                  start: int, stop: int, num_workers: int, collate: Callable) -> torch.utils.data.DataLoader:
    """Batches ``start..stop`` of this process's ``epoch``: from an :class:`EpochSampler` over an indexed dataset,
    or streamed from tar shards (:class:`~hieralab.data.shards.ShardStream`); either way the same batches whatever
    the number of loader workers, and the same after a resume at ``start``."""
    if isinstance(getattr(samples, "dataset", None), ShardSet):
        stream = ShardStream(samples.dataset, samples.sample, collate, seed=seed, epoch=epoch, rank=rank, world=world,
                             workers=max(1, num_workers), batch_size=batch_size, start=start, stop=stop,
                             buffer=samples.shuffle_buffer)
        return torch.utils.data.DataLoader(stream, batch_size=None, num_workers=num_workers)
    sampler = EpochSampler(len(samples), epoch=epoch, seed=seed, rank=rank, world=world, start=start * batch_size)
    return torch.utils.data.DataLoader(samples, batch_size, sampler=sampler, collate_fn=collate,
                                       num_workers=num_workers, drop_last=True)


def collate(samples: Sequence[dict[str, Any] | list[dict[str, Any]] | Unreadable | None]) -> dict[str, Any]:
    """Stack samples, dropping unreadable ones: ``batch["skipped"]`` counts them and ``batch["unreadable"]`` names
    them (``"path (reason)"``); the batch may then be smaller. A list (one file's repeated-augmentation views)
    contributes each of its samples."""
    readable, skipped = drop_unreadable(samples)
    good = [s for item in readable for s in (item if isinstance(item, list) else [item])]
    batch: dict[str, Any] = {**skipped, "size": len(good)}
    if good:
        for key in good[0]:
            batch[key] = torch.stack([torch.as_tensor(s[key]) for s in good])
    return batch


def check_repeat_aug(data, video: bool) -> int:
    """``data.repeat_aug``, checked: a video option (several clips from one decoding pass)."""
    if data.repeat_aug > 1 and not video:
        raise DataError("data.repeat_aug is a video option (clips cut from one decoded video); set it to 1 for images")
    return data.repeat_aug

