"""``hieralab reconstruct``: what an MAE sees and what it fills in, as PNG pictures (``viz/reconstructions.py``),
for a pretraining run or a ``save_pretrained`` MAE folder, on the run's data or a folder of images or clips."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .. import files
from ..data import catalog
from ..data.geometry import Geometry
from ..engine.artifacts import load_mae
from ..errors import CheckpointError
from ..viz.reconstructions import reconstruct_source


def run(path: str, *, images: str | None = None, split: str | None = None, num: int = 8, out: str | None = None,
        seed: int = 0, mask_ratio: float | None = None, img_size: int | None = None,
        overwrite: bool = False) -> list[Path]:
    """Reconstructions of ``num`` images (or clips) into ``out`` (default ``<path>/reconstructions``): a folder
    hieralab did not write is refused unless ``overwrite``, and the pictures come into place all at once."""
    if num < 1:
        raise ValueError(f"--num {num}: must be at least 1")
    model, run_cfg = load_mae(path)
    if not getattr(model, "is_mae", False):
        raise CheckpointError(f"{path} holds {type(model).__name__}, not an MAE model; reconstruct needs MAE weights")
    data = run_cfg.get("data", {})
    source = images or data.get("source", catalog.DEFAULT)
    split = split or catalog.held_out_split(source, "train")
    size = img_size or data.get("img_size") or model.encoder.stored_grid[-1] * model.encoder.patch_stride[-1]
    geometry = Geometry.of(model.encoder, size, num_frames=data.get("num_frames"),
                           frame_stride=data.get("frame_stride", 4))
    out_dir = Path(out) if out else Path(path) / "reconstructions"
    g = torch.Generator().manual_seed(seed)
    with files.output_folder(out_dir, overwrite=overwrite, command="reconstruct") as work:
        paths = reconstruct_source(model, source, split, work, geometry, num=num, generator=g, mask_ratio=mask_ratio)
        index = json.loads((work / "reconstructions.json").read_text())
        files.write_json(work / "reconstructions.json", {"source": source, "split": split, "seed": seed, **index})
    return [out_dir / p.name for p in paths]
