"""Training checkpoints: written atomically, judged by the loss they lead to, the last ``k`` kept, and the newest
intact and healthy one found for ``--resume``.

A checkpoint is a folder ``checkpoints/step-0000100/`` holding ``model.safetensors`` (weights), ``optimizer.pt``
(AdamW moments; read back with ``weights_only=True``) and ``state.json`` (the step and the task's state). It is
written under a hidden temporary name and renamed into place in one step, so a crash, a full disk or ``kill -9``
at any moment leaves either the old set of checkpoints or the old set plus a complete new one.

Whether a checkpoint's weights are good is only known from the next step's loss, which is computed from them: the
trainer then writes ``verdict.json`` (``healthy`` and that loss) into it. Resume takes the newest checkpoint that
reads back completely and is not known to be bad; corrupt and diverged ones are moved to
``checkpoints/discarded/`` with a log line, never used and never silently deleted.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from .. import files
from ..errors import CheckpointError
from ..models.convert import load_torch_file, read_safetensors

log = logging.getLogger(__name__)
_NAME = re.compile(r"^step-(\d+)$")
_LEGACY_TMP = re.compile(r"^\.step-\d+-")  # temporary folders of interrupted saves (older versions: no .tmp suffix)
VERDICT = "verdict.json"
DISCARDED = "discarded"


def step_dir(folder: Path, step: int) -> Path:
    return folder / f"step-{step:07d}"


class StateIO:
    """How a checkpoint's tensors come out of a model and its optimizer and go back in: their own state dicts here;
    the full (gathered) state of a model sharded across processes in ``engine/fsdp.py``."""

    def model_state(self, model: nn.Module) -> dict[str, torch.Tensor]:
        return model.state_dict()

    def optimizer_state(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        return optimizer.state_dict()

    def load_model(self, model: nn.Module, tensors: dict[str, torch.Tensor]):
        """Returns the missing and unexpected keys (``load_state_dict(strict=False)``'s result)."""
        return model.load_state_dict(tensors, strict=False)

    def load_optimizer(self, model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
        optimizer.load_state_dict(state)


PLAIN = StateIO()


def save(folder: Path, step: int, model_state: dict[str, torch.Tensor], optimizer_state: dict[str, Any],
         state: dict[str, Any], keep_last: int) -> Path:
    """Write ``folder/step-<step>`` (the weights, the optimizer's state and ``state``) atomically and delete all
    but the newest ``keep_last`` (0: keep all)."""
    folder.mkdir(parents=True, exist_ok=True)
    final = step_dir(folder, step)
    tmp = files.temp_dir(folder, final.name)
    try:
        tensors = {k: v.detach().contiguous().cpu() for k, v in model_state.items()}
        save_file(tensors, str(tmp / "model.safetensors"))
        torch.save(optimizer_state, tmp / "optimizer.pt")
        (tmp / "state.json").write_text(json.dumps({"step": step, **state}, indent=2) + "\n")
        for f in tmp.iterdir():
            files.chmod_like_open(f)  # safetensors writes 0600 whatever the umask
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        if final.exists():  # a re-run of the same step: replace it
            shutil.rmtree(final)
        os.replace(tmp, final)
        files.fsync_dir(folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in list_steps(folder)[:-keep_last] if keep_last > 0 else []:
        shutil.rmtree(step_dir(folder, old), ignore_errors=True)
    return final


def list_steps(folder: Path) -> list[int]:
    """Steps of the complete checkpoints in ``folder``, oldest first (temporary folders are ignored)."""
    if not folder.is_dir():
        return []
    return sorted(int(m[1]) for p in folder.iterdir() if (m := _NAME.match(p.name)) and (p / "state.json").exists())


def latest(folder: Path) -> Path | None:
    steps = list_steps(folder)
    return step_dir(folder, steps[-1]) if steps else None


def mark(path: Path, *, healthy: bool, next_loss: float) -> None:
    """Record what the step after checkpoint ``path`` showed of its weights."""
    files.write_json(path / VERDICT, {"healthy": healthy, "next_loss": next_loss if math.isfinite(next_loss)
                                      else str(next_loss)})


def verdict(path: Path) -> dict[str, Any] | None:
    """``verdict.json`` of a checkpoint, or None when the step after it never ran (or an older version wrote it)."""
    try:
        return json.loads((path / VERDICT).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def last_good(folder: Path) -> Path | None:
    """The newest checkpoint whose next step's loss was healthy (the one a divergence message names)."""
    for step in reversed(list_steps(folder)):
        v = verdict(step_dir(folder, step))
        if v is not None and v.get("healthy"):
            return step_dir(folder, step)
    return None


def load(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer | None = None,
         io: StateIO = PLAIN) -> dict[str, Any]:
    """Restore weights (and the optimizer) from a checkpoint folder; returns its ``state.json``. A file that is
    missing, truncated or holds pickled objects is a :class:`CheckpointError` naming it."""
    try:
        state = json.loads((path / "state.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path / 'state.json'} is unreadable ({e})") from None
    weights = path / "model.safetensors"
    if not weights.exists():
        raise CheckpointError(f"{weights} is missing")
    result = io.load_model(model, read_safetensors(weights)) if _shapes_fit(model, weights) else None
    if result is None or result.missing_keys or result.unexpected_keys:
        detail = ("tensor shapes differ" if result is None else
                  f"{len(result.missing_keys)} tensors missing, {len(result.unexpected_keys)} unexpected, e.g. "
                  f"{(result.missing_keys or result.unexpected_keys)[0]}")
        raise CheckpointError(f"{weights} does not fit this model ({detail}); was it written by another config?")
    if optimizer is not None:
        moments = path / "optimizer.pt"
        if not moments.exists():
            raise CheckpointError(f"{moments} is missing")
        try:
            io.load_optimizer(model, optimizer, load_torch_file(moments))
        except (ValueError, KeyError, RuntimeError) as e:
            if isinstance(e, CheckpointError):
                raise
            raise CheckpointError(f"{moments} does not fit this optimizer ({e})") from None
    return state


def _shapes_fit(model: nn.Module, weights: Path) -> bool:
    own = model.state_dict()  # a sharded tensor's shape is its full shape
    return all(k not in own or own[k].shape == v.shape for k, v in read_safetensors(weights).items())


def set_aside(path: Path, reason: str) -> Path:
    """Move a checkpoint to ``checkpoints/discarded/<name>-<reason>`` (out of resume's sight, kept on disk)."""
    target = path.parent / DISCARDED / f"{path.name}-{reason}"
    target.parent.mkdir(exist_ok=True)
    if target.exists():
        shutil.rmtree(target)
    os.replace(path, target)
    return target


def resume_from(folder: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                io: StateIO = PLAIN) -> tuple[Path, dict] | None:
    """Load the newest checkpoint that is intact and not known to be bad; the ones skipped on the way (newer than
    it) are set aside with a log line. None when there is none."""
    for step in reversed(list_steps(folder)):
        path = step_dir(folder, step)
        v = verdict(path)
        if v is not None and not v.get("healthy", True):
            moved = set_aside(path, "diverged")
            log.warning("skipping %s: the loss of the step after it was %s (diverged); moved to %s", path.name,
                        v.get("next_loss"), moved)
            continue
        try:
            return path, load(path, model, optimizer, io)
        except CheckpointError as e:
            moved = set_aside(path, "corrupt")
            log.warning("skipping corrupt checkpoint %s (%s); moved to %s, trying the one before", path.name, e, moved)
    return None


def remove_orphans(folder: Path) -> list[Path]:
    """Temporary folders and files that interrupted saves left in ``folder``."""
    removed = files.remove_orphans(folder, depth=0)
    if folder.is_dir():
        for p in folder.iterdir():
            if p.is_dir() and _LEGACY_TMP.match(p.name):
                shutil.rmtree(p, ignore_errors=True)
                removed.append(p)
    return removed
