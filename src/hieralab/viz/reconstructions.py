"""MAE reconstructions as pictures: what the MAE sees and what it fills in.

Each picture is one image: original | masked input | reconstruction | reconstruction with the visible patches pasted
back. The reconstruction is un-normalised with each patch's own mean and variance (the model predicts normalised
pixels when trained with ``norm_pix_loss``), then with the dataset's mean and std. A clip gives a frame strip (the
four rows, one column per label frame) and an animated GIF of the four panels side by side.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image
from torch import nn
from torchvision.utils import make_grid, save_image

from .. import files
from ..data.images import Unreadable
from ..data.pipeline import build_dataset
from ..data.transforms import eval_transform
from ..data.video import video_eval_transform
from ..mae import targets


def _save_png(grid: torch.Tensor, path: Path) -> Path:
    return files.atomic_write(path, lambda p: save_image(grid, p, format="png"))


@torch.no_grad()
def reconstruction_panels(model: nn.Module, x: torch.Tensor, visible: torch.Tensor) -> dict[str, torch.Tensor]:
    """Normalised images ``[B, C, H, W]`` + mask ``[B, #MU]`` to four panels in the same (normalised) space."""
    model.eval()
    out = model(x, visible)
    raw = model.target(x)  # [B, N, P] the input's own patches
    pred = out.pred
    if model.norm_pix_loss:  # back to the input's scale with each patch's statistics
        _, mean, std = targets.normalize_patches(raw)
        pred = pred * std + mean
    shown = out.visible_patches[..., None].to(x.dtype)  # [B, N, 1]
    fill = torch.zeros_like(raw)  # hidden patches shown as the dataset mean (0 after normalisation)
    return {
        "original": model.target_to_pixels(raw, x),
        "masked": model.target_to_pixels(raw * shown + fill * (1 - shown), x),
        "reconstruction": model.target_to_pixels(pred, x),
        "pasted": model.target_to_pixels(raw * shown + pred * (1 - shown), x),
    }


def save_panels(panels: dict[str, torch.Tensor], mean: Sequence[float], std: Sequence[float], out_dir: Path,
                names: Sequence[str]) -> list[Path]:
    """One PNG per image (the four panels side by side, 4x upscaled for small images) plus ``overview.png``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    C = panels["original"].shape[1]
    m = torch.tensor(mean[:C]).view(1, C, 1, 1)
    s = torch.tensor(std[:C]).view(1, C, 1, 1)
    pix = {k: (v * s + m).clamp(0, 1) for k, v in panels.items()}  # [B, C, H, W] in [0, 1]
    scale = max(1, math.ceil(128 / pix["original"].shape[-1]))
    if scale > 1:
        pix = {k: v.repeat_interleave(scale, -1).repeat_interleave(scale, -2) for k, v in pix.items()}
    paths = []
    for i, name in enumerate(names):
        row = torch.stack([pix[k][i] for k in ("original", "masked", "reconstruction", "pasted")])
        path = out_dir / f"{name}.png"
        _save_png(make_grid(row, nrow=4, padding=2, pad_value=1.0), path)
        paths.append(path)
    grid = torch.stack([pix[k][i] for i in range(len(names)) for k in ("original", "masked", "reconstruction",
                                                                         "pasted")])
    _save_png(make_grid(grid, nrow=4, padding=2, pad_value=1.0), out_dir / "overview.png")
    return paths


def save_video_panels(panels: dict[str, torch.Tensor], mean: Sequence[float], std: Sequence[float], out_dir: Path,
                      names: Sequence[str], *, fps: float = 4.0) -> list[Path]:
    """Per clip (panels ``[B, C, T, H, W]``): ``<name>.png``, a strip with the four panels as rows and the frames as
    columns, and ``<name>.gif``, the four panels side by side over time."""
    out_dir.mkdir(parents=True, exist_ok=True)
    C = panels["original"].shape[1]
    m = torch.tensor(mean[:C]).view(1, C, 1, 1, 1)
    s = torch.tensor(std[:C]).view(1, C, 1, 1, 1)
    pix = {k: (v * s + m).clamp(0, 1) for k, v in panels.items()}  # [B, C, T, H, W] in [0, 1]
    scale = max(1, math.ceil(96 / pix["original"].shape[-1]))
    if scale > 1:
        pix = {k: v.repeat_interleave(scale, -1).repeat_interleave(scale, -2) for k, v in pix.items()}
    keys = ("original", "masked", "reconstruction", "pasted")
    paths = []
    for i, name in enumerate(names):
        T = pix["original"].shape[2]
        strip = torch.stack([pix[k][i, :, t] for k in keys for t in range(T)])  # [4T, C, H, W], row = panel
        _save_png(make_grid(strip, nrow=T, padding=2, pad_value=1.0), out_dir / f"{name}.png")
        frames = []
        for t in range(T):
            row = make_grid(torch.stack([pix[k][i, :, t] for k in keys]), nrow=4, padding=2, pad_value=1.0)
            frames.append(Image.fromarray((row.permute(1, 2, 0) * 255).round().byte().numpy()))
        files.atomic_write(out_dir / f"{name}.gif", lambda p: frames[0].save(
            p, format="GIF", save_all=True, append_images=frames[1:], duration=int(1000 / fps), loop=0))
        paths.append(out_dir / f"{name}.png")
    return paths


def reconstruct_videos(model: nn.Module, source: str, out_dir: Path, img_size: int, num_frames: int, stride: int,
                       *, num: int = 4, generator: torch.Generator | None = None,
                       mask_ratio: float | None = None) -> list[Path]:
    """Reconstruct the middle clip (centre crop) of the first ``num`` videos of a folder or list."""
    dataset, mean, std, _ = build_dataset(source, "train", num, video=True)
    transform = video_eval_transform(num_frames, stride, img_size, mean, std)  # the middle clip, centre crop
    xs, names = [], []
    for i in range(len(dataset)):
        views = transform(dataset[i][0])  # [1, 3, T, S, S], or Unreadable
        if not isinstance(views, Unreadable):
            xs.append(views[0])
            names.append(f"recon_{i:03d}")
    if not xs:
        raise ValueError(f"no readable clips in {source}")
    x = torch.stack(xs).to(next(model.parameters()).device)
    visible = model.random_visible(x, mask_ratio, generator=generator)
    panels = {k: v.cpu() for k, v in reconstruction_panels(model, x, visible).items()}
    return save_video_panels(panels, mean, std, out_dir, names)


def reconstruct_dataset(model: nn.Module, source: str, split: str, out_dir: Path, img_size: int, *, num: int = 8,
                        generator: torch.Generator | None = None, mask_ratio: float | None = None) -> list[Path]:
    """Reconstruct the first ``num`` images of a dataset; returns the PNG paths (``out_dir/overview.png`` too)."""
    dataset, mean, std, _ = build_dataset(source, split, num)
    C = model.encoder.in_chans
    transform = eval_transform(img_size, mean, std, channels=C)
    xs, names = [], []
    for i in range(len(dataset)):
        image, _ = dataset[i]
        if not isinstance(image, Unreadable):
            xs.append(transform(image))
            names.append(f"recon_{i:03d}")
    if not xs:
        raise ValueError(f"no readable images in {source}")
    device = next(model.parameters()).device
    x = torch.stack(xs).to(device)
    visible = model.random_visible(x, mask_ratio, generator=generator)
    panels = {k: v.cpu() for k, v in reconstruction_panels(model, x, visible).items()}
    return save_panels(panels, mean, std, out_dir, names)


def reconstruct_source(model: nn.Module, source: str, split: str, out_dir: Path, img_size: int, *, num: int,
                       generator: torch.Generator | None = None, mask_ratio: float | None = None,
                       num_frames: int | None = None, frame_stride: int = 4) -> list[Path]:
    """Pictures for images (:func:`reconstruct_dataset`) or, for a video MAE, clips (:func:`reconstruct_videos`,
    ``num_frames`` defaulting to the model's)."""
    if model.encoder.ndim == 3:
        frames = num_frames or model.encoder.config["input_size"][0]
        return reconstruct_videos(model, source, out_dir, img_size, frames, frame_stride, num=num, generator=generator,
                                  mask_ratio=mask_ratio)
    return reconstruct_dataset(model, source, split, out_dir, img_size, num=num, generator=generator,
                               mask_ratio=mask_ratio)
