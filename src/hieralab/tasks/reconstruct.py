"""``hieralab reconstruct``: what an MAE sees and what it fills in, as PNG pictures (``viz/reconstructions.py``),
for a pretraining run or a ``save_pretrained`` MAE folder, on the run's data or a folder of images or clips."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .. import files
from ..engine.artifacts import load_mae
from ..errors import CheckpointError
from ..viz.reconstructions import reconstruct_source


def run(path: str, *, images: str | None = None, split: str | None = None, num: int = 8, out: str | None = None,
        seed: int = 0, mask_ratio: float | None = None, img_size: int | None = None) -> list[Path]:
    model, run_cfg = load_mae(path)
    if not getattr(model, "is_mae", False):
        raise CheckpointError(f"{path} holds {type(model).__name__}, not an MAE model; reconstruct needs MAE weights")
    data = run_cfg.get("data", {})
    source = images or data.get("source", "fashion-mnist")
    if split is None:
        split = "test" if source == "fashion-mnist" else "train"
    size = img_size or data.get("img_size") or model.encoder.stored_grid[-1] * model.encoder.patch_stride[-1]
    out_dir = Path(out) if out else Path(path) / "reconstructions"
    g = torch.Generator().manual_seed(seed)
    paths = reconstruct_source(model, source, split, out_dir, size, num=num, generator=g, mask_ratio=mask_ratio,
                               num_frames=data.get("num_frames"), frame_stride=data.get("frame_stride", 4))
    index = json.loads((out_dir / "reconstructions.json").read_text())
    files.write_json(out_dir / "reconstructions.json", {"source": source, "split": split, "seed": seed, **index})
    return paths
