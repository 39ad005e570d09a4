"""Named random streams: every random draw of a run comes from ``(run seed, stream, key...)``.

A stream is a purpose (the sample order, a crop, a flip, an MAE mask, drop path, ...); its key says which one
(epoch, sample index, repeat, step, micro-batch, rank). Seeds are derived with ``numpy.random.SeedSequence``, whose
output is fixed by its documented algorithm, so draws reproduce across Python and NumPy versions and platforms (not
Python's ``hash()``, which changed between versions), and streams are independent: adding an augmentation or a
second crop does not shift any other draw.
"""

from __future__ import annotations

import numpy as np
import torch

# Stream ids are part of the reproducibility contract: never renumber one, only add.
STREAMS: dict[str, int] = {
    "init": 1,  # initial weights (and a fresh head)
    "order": 2,  # the sample order of an epoch
    "crop": 3,  # random resized crops
    "flip": 4,  # horizontal flips
    "augment": 5,  # an opaque augmentation pipeline (timm's RandAugment / erasing draw from torch, numpy and random)
    "clip": 6,  # video: where a clip starts
    "mask": 7,  # MAE masks
    "drop_path": 8,  # the torch generator during a training forward (stochastic depth)
    "mixup": 9,  # the numpy generator during a training forward (timm's Mixup / CutMix)
    "python": 10,  # Python's `random` during a training forward
    "split": 11,  # a held-out validation split
    "recon": 12,  # the masks of reconstruction pictures
    "probe": 13,  # linear-probe heads
    "scenes": 14,  # the layout of generated Fashion-MNIST scenes
    "shards": 15,  # the order of tar shards in an epoch
    "shuffle_buffer": 16,  # a shard reader's shuffle buffer
    "erase": 17,  # video: random erasing of a clip (its box and noise)
}


def seed_int(seed: int, stream: str, *key: int, bits: int = 63) -> int:
    """A ``bits``-bit seed for ``stream`` under run ``seed``, e.g. ``seed_int(0, "mask", epoch, index)``."""
    if stream not in STREAMS:
        raise KeyError(f"unknown random stream {stream!r}; known: {', '.join(STREAMS)}")
    if seed < 0 or any(k < 0 for k in key):
        raise ValueError(f"seeds and keys must be non-negative, got seed={seed}, key={key}")
    words = np.random.SeedSequence(int(seed), spawn_key=(STREAMS[stream], *map(int, key))).generate_state(2, np.uint32)
    return (int(words[0]) << 32 | int(words[1])) & ((1 << bits) - 1)


def generator(seed: int, stream: str, *key: int) -> torch.Generator:
    """A CPU ``torch.Generator`` for ``stream`` (see :func:`seed_int`)."""
    g = torch.Generator()
    g.manual_seed(seed_int(seed, stream, *key))
    return g
