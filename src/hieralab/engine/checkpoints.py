"""Training checkpoints: written atomically, the last ``k`` kept, the newest complete one found for ``--resume``.

A checkpoint is a folder ``checkpoints/step-0000100/`` holding ``model.safetensors`` (weights), ``optimizer.pt``
(AdamW moments; read back with ``weights_only=True``) and ``state.json`` (the step). It is written under a hidden
temporary name and renamed into place in one step, so a crash or ``kill -9`` at any moment leaves either the old set
of checkpoints or the old set plus a complete new one, never a half-written one that resume would pick.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

log = logging.getLogger(__name__)
_NAME = re.compile(r"^step-(\d+)$")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save(folder: Path, step: int, model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any],
         keep_last: int) -> Path:
    """Write ``folder/step-<step>`` atomically and delete all but the newest ``keep_last``."""
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"step-{step:07d}"
    tmp = Path(tempfile.mkdtemp(dir=folder, prefix=f".step-{step:07d}-"))
    try:
        tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        save_file(tensors, str(tmp / "model.safetensors"))
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        (tmp / "state.json").write_text(json.dumps({"step": step, **state}, indent=2) + "\n")
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        if final.exists():  # a re-run of the same step: replace it
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in list_steps(folder)[:-keep_last] if keep_last > 0 else []:
        shutil.rmtree(folder / f"step-{old:07d}", ignore_errors=True)
    return final


def list_steps(folder: Path) -> list[int]:
    """Steps of the complete checkpoints in ``folder``, oldest first (temporary folders are ignored)."""
    if not folder.is_dir():
        return []
    return sorted(int(m[1]) for p in folder.iterdir() if (m := _NAME.match(p.name)) and (p / "state.json").exists())


def latest(folder: Path) -> Path | None:
    steps = list_steps(folder)
    return folder / f"step-{steps[-1]:07d}" if steps else None


def load(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> dict[str, Any]:
    """Restore weights (and the optimizer) from a checkpoint folder; returns its ``state.json``."""
    model.load_state_dict(load_file(str(path / "model.safetensors")))
    if optimizer is not None:
        optimizer.load_state_dict(torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True))
    return json.loads((path / "state.json").read_text())
