"""``hieralab export``: a model to ONNX (``.onnx``, checked with onnxruntime) or to ``torch.export`` (``.pt2``).

The exported program is ``model(x)``: logits for a classifier, pooled features for an encoder built with
``num_classes=0``. Both formats are traced through ``torch.export``; with ``dynamic_batch`` the batch dimension is
symbolic (1..4096), otherwise fixed. The check runs the exported file on a fresh input (another batch size when it
is dynamic) and compares it with the eager model; a difference over ``atol`` is an error, and the file is only
renamed into place once it passed.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import files, weights
from ..models.checkpoint import from_pretrained
from ..models.factory import create_model

log = logging.getLogger(__name__)


def example_input(model: nn.Module, batch: int, img_size: int | None = None, frames: int | None = None
                  ) -> torch.Tensor:
    """A random input of the model's native size (or ``img_size`` / ``frames``): ``[B, C, H, W]`` or
    ``[B, C, T, H, W]``."""
    cfg = model.config
    if "input_size" in cfg:  # Hiera: (H, W) or (T, H, W)
        size = list(cfg["input_size"])
    else:
        side = cfg.get("img_size", 224)
        size = list(side) if isinstance(side, (list, tuple)) else [side, side]
    if img_size:
        size[-2:] = [img_size, img_size]
    if frames and len(size) == 3:
        size[0] = frames
    return torch.randn(batch, model.in_chans, *size)


def load_model(source: str, checkpoint: str | None = None, **overrides: Any) -> nn.Module:
    """A ``save_pretrained`` / classifier folder, or a registered name (with ``checkpoint`` weights)."""
    path = Path(source).expanduser()
    if (path / "best" / "config.json").exists():
        path = path / "best"
    if path.exists():  # a folder: from_pretrained names the save_pretrained folders inside a run folder
        return from_pretrained(path, **overrides).eval()
    if checkpoint is not None and not Path(checkpoint).expanduser().exists():
        checkpoint = weights.resolve(checkpoint) or checkpoint  # public weights by name
    tagged = weights.split_name(source)[1] is not None  # "hiera_base_224.mae_in1k": those weights
    return create_model(source, checkpoint=checkpoint, pretrained=tagged and checkpoint is None, **overrides).eval()


PROTOBUF_LIMIT = 2 * 1024**3  # bytes: one ONNX file holds its weights up to this size


def needs_external_data(model: nn.Module) -> bool:
    """Whether the weights are too large to embed in one ONNX file (protobuf's 2 GiB, with a margin)."""
    return sum(t.numel() * t.element_size() for t in model.state_dict().values()) > 0.9 * PROTOBUF_LIMIT


def _onnx(model: nn.Module, x: torch.Tensor, path: str, dynamic: bool) -> None:
    shapes = ({0: torch.export.Dim("batch", min=1, max=4096)},) if dynamic else None
    torch.onnx.export(model, (x,), path, dynamo=True, dynamic_shapes=shapes, input_names=["pixels"],
                      output_names=["output"], verbose=False, external_data=needs_external_data(model))


def _check_onnx(path: str, model: nn.Module, x: torch.Tensor) -> float:
    try:
        import onnxruntime as ort
    except ImportError:
        raise RuntimeError("checking an ONNX export needs onnxruntime: pip install 'hieralab[export]' (or pass "
                           "--no-check)") from None
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    out = torch.from_numpy(sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0])
    with torch.no_grad():
        return (out - model(x)).abs().max().item()


def _pt2(model: nn.Module, x: torch.Tensor, path: str, dynamic: bool) -> None:
    shapes = ({0: torch.export.Dim("batch", min=1, max=4096)},) if dynamic else None
    torch.export.save(torch.export.export(model, (x,), dynamic_shapes=shapes), path)


def _check_pt2(path: str, model: nn.Module, x: torch.Tensor) -> float:
    program = torch.export.load(path)
    with torch.no_grad():
        return (program.module()(x) - model(x)).abs().max().item()


def run(source: str, out: str, *, checkpoint: str | None = None, batch: int = 1, dynamic_batch: bool = False,
        img_size: int | None = None, frames: int | None = None, check: bool = True, atol: float = 1e-4,
        overwrite: bool = False) -> dict[str, Any]:
    """Export, check, and move the file into place (an existing ``out`` only with ``overwrite``); returns what was
    written and the measured difference."""
    out_path = Path(out)
    kind = {".onnx": "onnx", ".pt2": "pt2"}.get(out_path.suffix)
    if kind is None:
        raise ValueError(f"--out {out}: use a .onnx (ONNX) or .pt2 (torch.export) file name")
    for flag, value in (("--batch", batch), ("--img-size", img_size), ("--frames", frames)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{flag} {value}: must be a whole number of at least 1")
    files.refuse_existing(out_path, overwrite)
    model = load_model(source, checkpoint)
    x = example_input(model, batch, img_size, frames)
    with torch.no_grad():
        try:
            model(x)  # a clear error for a bad size before the exporter's long ones
        except ValueError as e:  # the model's own rule (mask units, patches), said under the flags that set the size
            given = " ".join(f"{f} {v}" for f, v in (("--img-size", img_size), ("--frames", frames)) if v is not None)
            if not given:
                raise
            raise ValueError(f"{given}: {e}") from None
    out_path.parent.mkdir(parents=True, exist_ok=True)
    # Export under the final file name inside a temporary folder: an ONNX file names its external weights file
    # (only for models over 2 GiB: <name>.onnx.data), and that name must be the one it will have beside it.
    work = files.temp_dir(out_path.parent, out_path.name)
    tmp = work / out_path.name
    try:
        log.info("exporting %s to %s (torch.export%s)", source, kind, " -> ONNX" if kind == "onnx" else "")
        (_onnx if kind == "onnx" else _pt2)(model, x, str(tmp), dynamic_batch)
        result: dict[str, Any] = {"out": str(out_path), "format": kind, "input_shape": list(x.shape),
                                  "dynamic_batch": dynamic_batch}
        if check:
            probe = example_input(model, batch + 2 if dynamic_batch else batch, img_size, frames)
            log.info("checking the exported file against the eager model (batch %d)", probe.shape[0])
            diff = (_check_onnx if kind == "onnx" else _check_pt2)(str(tmp), model, probe)
            result.update(max_abs_diff=diff, checked_batch=probe.shape[0])
            if not diff <= atol:
                raise RuntimeError(f"the exported model differs from the eager one by {diff:.3g} (> {atol:g}); "
                                   "nothing was written")
        data = out_path.with_name(out_path.name + ".data")
        for f in work.iterdir():
            files.chmod_like_open(f)
        if (work / data.name).exists():  # external weights first, then the file that names them
            os.replace(work / data.name, data)
            result["external_data"] = str(data)
        elif data.exists():  # a self-contained export replaces an older one that kept its weights beside it
            data.unlink()
        os.replace(tmp, out_path)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    log.info("exported %s to %s", source, out_path)
    return result
