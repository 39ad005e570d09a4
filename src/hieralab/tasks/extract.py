"""``hieralab extract``: an encoder's features of a dataset to a file, and a k-NN evaluation on them.

Pooled features (``[N, C]``) go to ``.safetensors`` (``features``, ``labels``) or ``.npy`` (the features; the labels
beside them in ``<name>.labels.npy``); ``--stages`` writes the per-stage maps (``stage0 ... stageK``, each
``[N, C_i, H_i, W_i]``; safetensors only). ``--knn`` also extracts the reference images (Fashion-MNIST's train split,
or ``--knn-train FOLDER``) and reports the weighted k-NN top-1 of the extracted images against them.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file

from .. import files
from ..data import catalog
from ..data.geometry import Geometry
from ..data.pipeline import build_dataset
from ..engine.encoder import frozen_encoder
from ..engine.evaluate import dataset_features, knn_top1, predict_logits, stage_features

log = logging.getLogger(__name__)


def write_features(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """``.safetensors`` with every tensor, or ``.npy`` with the features (labels in ``<stem>.labels.npy``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        files.atomic_write(path, lambda p: save_file({k: v.contiguous() for k, v in tensors.items()}, p))
    elif path.suffix == ".npy":
        if "features" not in tensors:
            raise ValueError("per-stage maps go to a .safetensors file (several arrays); use --out NAME.safetensors")

        def save_npy(array: np.ndarray):
            def write(p: str) -> None:
                with open(p, "wb") as f:  # a file object: np.save would append .npy to a temporary name
                    np.save(f, array)
            return write

        files.atomic_write(path, save_npy(tensors["features"].numpy()))
        files.atomic_write(path.with_name(path.stem + ".labels.npy"), save_npy(tensors["labels"].numpy()))
    else:
        raise ValueError(f"--out {path}: use a .safetensors or .npy file name")


def run(*, model: str, init: str | None, source: str = catalog.DEFAULT, split: str | None = None, out: str,
        img_size: int = 32, stages: bool = False,
        knn: bool = False, knn_train: str | None = None, k: int = 20, limit: int | None = None, batch_size: int = 256,
        device: str = "cpu", model_args: dict[str, Any] | None = None, num_frames: int | None = None,
        frame_stride: int = 4, views: tuple[int, int] = (1, 1), overwrite: bool = False) -> dict[str, Any]:
    out_path = Path(out)
    if out_path.suffix not in (".safetensors", ".npy"):
        raise ValueError(f"--out {out}: use a .safetensors or .npy file name")
    files.refuse_existing(out_path, overwrite)  # an existing --out only with overwrite
    for flag, value in (("--img-size", img_size), ("--limit", limit), ("--k", k), ("--frames", num_frames),
                        ("--frame-stride", frame_stride)):
        if value is not None and value < 1:
            raise ValueError(f"{flag} {value}: must be at least 1")
    encoder = frozen_encoder(model, init, **(model_args or {})).to(device)
    geometry = Geometry.of(encoder, img_size, num_frames=num_frames, frame_stride=frame_stride)
    split = split or catalog.held_out_split(source, "test")
    dataset, mean, std, classes = build_dataset(source, split, limit, video=geometry.video)
    tf = geometry.eval_transform(mean, std, views=views)  # video: the middle clip, centre crop; views averaged
    if stages:
        fn = stage_features(encoder)
        maps, labels = [], None

        def collect(x: torch.Tensor) -> torch.Tensor:
            maps.append([m.cpu() for m in fn(x)])
            return torch.zeros(len(x), 1)

        _, labels = predict_logits(encoder, dataset, tf, device=device, batch_size=batch_size, desc="extract",
                                   fn=collect)
        tensors = {f"stage{i}": torch.cat([b[i] for b in maps]) for i in range(len(maps[0]))}
        tensors["labels"] = labels
    else:
        feats, labels = dataset_features(encoder, dataset, tf, device=device, batch_size=batch_size, desc="extract")
        tensors = {"features": feats, "labels": labels}
    write_features(out_path, tensors)
    summary: dict[str, Any] = {"out": str(out_path), "count": len(labels), "classes": classes,
                               "shapes": {k_: list(v.shape) for k_, v in tensors.items()}}
    if knn:
        if knn_train is None and catalog.builtin(source) is None:
            raise ValueError("--knn on a folder needs --knn-train FOLDER: the labelled images the neighbours come from")
        if knn_train is None and split == "train":
            raise ValueError("--knn compares the extracted split with the train split; extract --split test")
        train_set, _, _, train_classes = build_dataset(knn_train or source, "train", limit, video=geometry.video)
        if train_classes != classes:
            raise ValueError("--knn needs the same classes in the reference images as in the extracted ones")
        train_x, train_y = dataset_features(encoder, train_set, tf, device=device, desc="features (train)")
        query = tensors["features"] if "features" in tensors else dataset_features(encoder, dataset, tf)[0]
        summary["knn_top1"] = knn_top1(train_x, train_y, query, labels, num_classes=len(classes), k=k)
        summary["knn_k"] = k
        log.info("k-NN (k=%d) top-1: %.2f %%", k, summary["knn_top1"])
    files.write_json(out_path.with_name(out_path.stem + ".json"), summary)
    return summary
