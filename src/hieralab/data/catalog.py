"""The built-in datasets, by name: what ``data.source`` (and ``--data``) may say besides a folder, a clip list or
tar shards. A built-in is an entry here, not an ``if`` in the pipeline; the tasks and the engine never name one.

* ``fashion-mnist``: Debian's ``dataset-fashion-mnist`` (60,000 training and 10,000 test images, 10 classes), no
  download. Its held-out split is ``test``: validation, the online probe's queries, ``eval`` and ``extract --knn``
  read it.

The dense and video built-ins are written on first use, deterministically, from those images: ``hieralab scenes``
(``data/scenes.py``, the detection / segmentation default) and the action clips of the action-detection task.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from . import fashion_mnist


@dataclass(frozen=True)
class Builtin:
    """A named labelled image dataset: ``build(split)`` gives ``(PIL image, label)`` items."""

    name: str
    build: Callable[[str], torch.utils.data.Dataset]
    classes: Sequence[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    splits: tuple[str, ...] = ("train", "test")
    held_out: str = "test"  # the split that validation, probes and evaluations read
    description: str = ""


DATASETS: dict[str, Builtin] = {}
DEFAULT = "fashion-mnist"  # what data.source and --data mean when not given


def register(entry: Builtin) -> Builtin:
    if entry.name in DATASETS:
        raise ValueError(f"dataset {entry.name!r} is already registered")
    DATASETS[entry.name] = entry
    return entry


def builtin(source: str | None) -> Builtin | None:
    """The built-in dataset ``source`` names, or None (a path)."""
    return DATASETS.get(source) if isinstance(source, str) else None


def held_out_split(source: str, split: str) -> str:
    """The split an evaluation of ``source`` reads: a built-in's held-out split, else ``split`` (a folder has one)."""
    entry = builtin(source)
    return entry.held_out if entry else split


def describe_sources() -> str:
    """``fashion-mnist`` ... as a help text names them."""
    return ", ".join(DATASETS)


register(Builtin("fashion-mnist", fashion_mnist.FashionMNIST, fashion_mnist.CLASSES, fashion_mnist.MEAN,
                 fashion_mnist.STD, description="Fashion-MNIST from Debian's dataset-fashion-mnist (28 x 28 grey)"))
