"""Datasets (Fashion-MNIST, image folders, clips), transforms and the reproducible batching of ``pipeline``."""

from .fashion_mnist import FashionMNIST
from .images import ImageFiles, Unreadable
from .pipeline import EpochSampler, SeededSamples, build_dataset, collate

__all__ = ["EpochSampler", "FashionMNIST", "ImageFiles", "SeededSamples", "Unreadable", "build_dataset", "collate"]
