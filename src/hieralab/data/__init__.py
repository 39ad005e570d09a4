"""Datasets (Fashion-MNIST, image folders), transforms and the reproducible batching of ``pipeline``."""

from .fashion_mnist import FashionMNIST
from .images import ImageFiles
from .pipeline import EpochSampler, SeededSamples, build_dataset, collate

__all__ = ["EpochSampler", "FashionMNIST", "ImageFiles", "SeededSamples", "build_dataset", "collate"]
