"""Per-sample random streams for transforms.

``SeededSamples`` opens :func:`sample_key` around each sample's transform; inside it, a transform wrapped in
:class:`Seeded` runs with the global RNGs (torch's default generator, ``random`` and NumPy's, which torchvision's v2
transforms and timm's augmentations draw from) seeded from its own named stream and the sample's key, and put back
afterwards. So the crop of sample ``i`` in epoch ``e`` is a function of ``(seed, "crop", e, i)`` alone: not of the
worker, the process, the other augmentations, or whether the run was resumed. Outside a sample (e.g. a transform
called by hand) :class:`Seeded` is a plain call.
"""

from __future__ import annotations

import contextlib
import contextvars
import random
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import numpy as np
import torch

from .. import seeds


class SampleKey(NamedTuple):
    seed: int
    epoch: int
    index: int
    repeat: int = 0  # the view of a repeated-augmentation sample


_KEY: contextvars.ContextVar[SampleKey | None] = contextvars.ContextVar("hieralab_sample_key", default=None)


@contextlib.contextmanager
def sample_key(seed: int, epoch: int, index: int, repeat: int = 0) -> Iterator[SampleKey]:
    """Draws of :class:`Seeded` transforms inside this block belong to sample ``(epoch, index[, repeat])``."""
    key = SampleKey(seed, epoch, index, repeat)
    token = _KEY.set(key)
    try:
        yield key
    finally:
        _KEY.reset(token)


@contextlib.contextmanager
def view(repeat: int) -> Iterator[None]:
    """Inside a sample: the draws of view ``repeat`` (MAE-ST's repeated augmentation cuts several per video)."""
    key = _KEY.get()
    token = _KEY.set(key._replace(repeat=repeat) if key is not None else None)
    try:
        yield
    finally:
        _KEY.reset(token)


def generator(stream: str) -> torch.Generator | None:
    """A generator for ``stream`` of the current sample, or None outside a sample (then: the global one)."""
    key = _KEY.get()
    return None if key is None else seeds.generator(key.seed, stream, key.epoch, key.index, key.repeat)


@contextlib.contextmanager
def seeded_rngs(seed: int) -> Iterator[None]:
    """Seed torch's default CPU generator, ``random`` and NumPy's global generator from ``seed``; restore all three
    afterwards. (Seeding the torch generator directly is ~250x cheaper than ``torch.manual_seed`` + ``fork_rng``,
    which touch the CUDA state.)"""
    g = torch.default_generator
    saved, saved_py, saved_np = g.get_state(), random.getstate(), np.random.get_state()
    g.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed & 0xFFFF_FFFF)
    try:
        yield
    finally:
        g.set_state(saved)
        random.setstate(saved_py)
        np.random.set_state(saved_np)


class Seeded:
    """``transform`` run with the global RNGs seeded from the current sample's ``stream`` (see the module)."""

    def __init__(self, stream: str, transform: Callable[..., Any]):
        if stream not in seeds.STREAMS:
            raise KeyError(f"unknown random stream {stream!r}")
        self.stream, self.transform = stream, transform

    def __call__(self, *inputs: Any) -> Any:
        key = _KEY.get()
        if key is None:
            return self.transform(*inputs)
        with seeded_rngs(seeds.seed_int(key.seed, self.stream, key.epoch, key.index, key.repeat)):
            return self.transform(*inputs)

    def __repr__(self) -> str:
        return f"Seeded({self.stream!r}, {self.transform!r})"
