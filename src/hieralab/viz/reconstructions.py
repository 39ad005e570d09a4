"""MAE reconstructions as pictures: what the MAE sees and what it fills in.

Each row is one image, under four column titles: original | masked input | reconstruction | reconstruction with the
visible patches pasted back; rows are labelled with the image's class and spread over the classes. A model trained
with ``norm_pix_loss`` predicts each patch normalised by its own mean and variance: its reconstruction is drawn as
the MAE paper draws it, un-normalised with the true patch's statistics (the picture says so). A clip gives a frame
strip (the four panels as rows, labelled frames as columns), an animated GIF, and the run's ``overview.png`` shows
every clip at its middle frame.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn
from torchvision.utils import make_grid

from .. import files
from ..data.geometry import Geometry
from ..data.images import Unreadable
from ..data.pipeline import build_dataset, item_labels, spread_over_classes
from ..data.transforms import eval_transform
from ..data.video import video_eval_transform
from ..mae import targets


PANELS = ("original", "masked", "reconstruction", "pasted")
TITLES = {"original": "original", "masked": "masked input\n(what the encoder sees)",
          "reconstruction": "reconstruction\n(of the hidden units)", "pasted": "reconstruction +\nvisible patches"}


@torch.no_grad()
def reconstruction_panels(model: nn.Module, x: torch.Tensor, visible: torch.Tensor) -> dict[str, torch.Tensor]:
    """Normalised images ``[B, C, H, W]`` + mask ``[B, #MU]`` to four panels in the same (normalised) space. The
    reconstruction panel shows the prediction where the units were hidden (the loss is only there; what the decoder
    outputs for the visible units is untrained) and the masked input's grey elsewhere."""
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
        "reconstruction": model.target_to_pixels(fill * shown + pred * (1 - shown), x),
        "pasted": model.target_to_pixels(raw * shown + pred * (1 - shown), x),
    }


def describe(model: nn.Module, visible: torch.Tensor) -> str:
    """What the pictures show, for their title: how much was hidden and how the reconstruction is drawn."""
    hidden = 1 - visible[0].float().mean().item()
    how = ("predicted patches un-normalised with each true patch's mean and std (norm-pix loss), as the MAE paper "
           "draws them" if model.norm_pix_loss else "predicted pixels as they are")
    return f"{hidden:.0%} of the mask units hidden; {how}"


def _to_pixels(panels: dict[str, torch.Tensor], mean: Sequence[float], std: Sequence[float]) -> dict[str, np.ndarray]:
    """Normalised panels ``[B, C, *S]`` -> ``[B, *S, C]`` arrays in 0..1."""
    C = panels["original"].shape[1]
    shape = (1, C) + (1,) * (panels["original"].dim() - 2)
    m, s = torch.tensor(mean[:C]).view(shape), torch.tensor(std[:C]).view(shape)
    return {k: (v * s + m).clamp(0, 1).movedim(1, -1).numpy() for k, v in panels.items()}


def _grid(cells: list[list[np.ndarray]], path: Path, *, columns: Sequence[str], rows: Sequence[str], title: str,
          cell: float = 1.7) -> Path:
    """A titled grid of images (``[H, W, C]`` in 0..1) with column titles and row labels, as a PNG."""
    import matplotlib.pyplot as plt

    from .figures import save_figure

    n_rows, n_cols = len(cells), len(cells[0])
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(cell * n_cols + 0.8, cell * n_rows + 0.9), dpi=110,
                             squeeze=False, layout="constrained")
    for r, row in enumerate(cells):
        for c, img in enumerate(row):
            ax = axes[r, c]
            grey = img.shape[-1] == 1
            ax.imshow(img[..., 0] if grey else img, cmap="gray" if grey else None, vmin=0, vmax=1,
                      interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(columns[c], fontsize=8)
            if c == 0:
                ax.set_ylabel(rows[r], fontsize=8)
    width = cell * n_cols + 0.8
    fig.suptitle("\n".join(textwrap.wrap(title, width=int(width * 15))), fontsize=8)  # ~15 characters an inch
    return save_figure(fig, path)


def save_panels(panels: dict[str, torch.Tensor], mean: Sequence[float], std: Sequence[float], out_dir: Path,
                names: Sequence[str], *, labels: Sequence[str] | None = None, title: str = "") -> list[Path]:
    """One titled PNG per image (the four panels side by side) plus ``overview.png`` (every image a row)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    pix = _to_pixels(panels, mean, std)  # [B, H, W, C]
    labels = list(labels) if labels is not None else list(names)
    columns = [TITLES[k] for k in PANELS]
    paths = []
    for i, name in enumerate(names):
        paths.append(_grid([[pix[k][i] for k in PANELS]], out_dir / f"{name}.png", columns=columns,
                           rows=[labels[i]], title=title))
    _grid([[pix[k][i] for k in PANELS] for i in range(len(names))], out_dir / "overview.png", columns=columns,
          rows=labels, title=title)
    _index(out_dir, paths, labels, title)
    return paths


def _index(out_dir: Path, paths: list[Path], labels: list[str], title: str) -> None:
    """``reconstructions.json``: which picture shows what (and the overview of them all)."""
    files.write_json(out_dir / "reconstructions.json", {
        "title": title, "overview": "overview.png", "columns": [TITLES[k].replace("\n", " ") for k in PANELS],
        "images": [{"file": p.name, "label": label} for p, label in zip(paths, labels)]})


def save_video_panels(panels: dict[str, torch.Tensor], mean: Sequence[float], std: Sequence[float], out_dir: Path,
                      names: Sequence[str], *, labels: Sequence[str] | None = None, frames: Sequence[int] = (),
                      title: str = "", fps: float = 4.0) -> list[Path]:
    """Per clip (panels ``[B, C, T, H, W]``): ``<name>.png``, the four panels as rows and the label frames as
    columns (titled with their frame in the clip), and ``<name>.gif``, the four panels side by side over time; plus
    ``overview.png``, every clip a row at its middle label frame."""
    out_dir.mkdir(parents=True, exist_ok=True)
    pix = _to_pixels(panels, mean, std)  # [B, T, H, W, C]
    labels = list(labels) if labels is not None else list(names)
    T = pix["original"].shape[1]
    frames = list(frames) or list(range(T))
    paths = []
    for i, name in enumerate(names):
        cells = [[pix[k][i, t] for t in range(T)] for k in PANELS]
        paths.append(_grid(cells, out_dir / f"{name}.png", columns=[f"frame {f}" for f in frames],
                           rows=[TITLES[k] for k in PANELS],
                           title=f"{labels[i]}: {title}", cell=1.3))
        scale = max(1, math.ceil(96 / pix["original"].shape[-2]))
        gif = []
        for t in range(T):
            row = torch.stack([torch.from_numpy(pix[k][i, t]).movedim(-1, 0) for k in PANELS])  # [4, C, H, W]
            row = row.repeat_interleave(scale, -1).repeat_interleave(scale, -2)
            grid = make_grid(row, nrow=4, padding=2, pad_value=1.0)
            gif.append(Image.fromarray((grid.permute(1, 2, 0) * 255).round().byte().numpy()))
        files.atomic_write(out_dir / f"{name}.gif", lambda p: gif[0].save(
            p, format="GIF", save_all=True, append_images=gif[1:], duration=int(1000 / fps), loop=0))
    middle = T // 2
    _grid([[pix[k][i, middle] for k in PANELS] for i in range(len(names))], out_dir / "overview.png",
          columns=[TITLES[k] for k in PANELS], rows=labels, title=f"frame {frames[middle]} of each clip; {title}")
    _index(out_dir, paths, labels, title)
    return paths


def reconstruct_videos(model: nn.Module, source: str, out_dir: Path, img_size: int, num_frames: int, stride: int,
                       *, num: int = 4, generator: torch.Generator | None = None,
                       mask_ratio: float | None = None) -> list[Path]:
    """Reconstruct the middle clip (centre crop) of ``num`` videos of a folder or list, spread over its classes."""
    dataset, mean, std, classes = build_dataset(source, "train", None, video=True)
    transform = video_eval_transform(num_frames, stride, img_size, mean, std)  # the middle clip, centre crop
    xs, names, labels = [], [], []
    for i in spread_over_classes(item_labels(dataset), len(dataset)):
        if len(xs) == num:
            break
        path, label = dataset[i]
        views = transform(path)  # [1, 3, T, S, S], or Unreadable
        if not isinstance(views, Unreadable):
            xs.append(views[0])
            names.append(f"recon_{i:03d}")
            name = Path(str(path)).name  # a file, or a shard member ("shard-000000.tar:000000007")
            labels.append(f"{classes[label]}: {name}" if 0 <= label < len(classes) else name)
    if not xs:
        raise ValueError(f"no readable clips in {source}")
    x = torch.stack(xs).to(next(model.parameters()).device)
    visible = model.random_visible(x, mask_ratio, generator=generator)
    panels = {k: v.cpu() for k, v in reconstruction_panels(model, x, visible).items()}
    time_stride = model.encoder.patch_stride[0]  # a token's label is the first of its frames
    return save_video_panels(panels, mean, std, out_dir, names, labels=labels, title=describe(model, visible),
                             frames=[t * time_stride for t in range(panels["original"].shape[2])])


def reconstruct_dataset(model: nn.Module, source: str, split: str, out_dir: Path, img_size: int, *, num: int = 8,
                        generator: torch.Generator | None = None, mask_ratio: float | None = None) -> list[Path]:
    """Reconstruct ``num`` images of a dataset, spread over its classes; returns the PNG paths (``overview.png``
    too)."""
    dataset, mean, std, classes = build_dataset(source, split, None)
    C = model.encoder.in_chans
    transform = eval_transform(img_size, mean, std, channels=C)
    xs, names, labels = [], [], []
    for i in spread_over_classes(item_labels(dataset), len(dataset)):
        if len(xs) == num:
            break
        image, label = dataset[i]
        if not isinstance(image, Unreadable):
            xs.append(transform(image))
            names.append(f"recon_{i:03d}")
            labels.append(classes[label] if 0 <= label < len(classes) else f"image {i}")
    if not xs:
        raise ValueError(f"no readable images in {source}")
    device = next(model.parameters()).device
    x = torch.stack(xs).to(device)
    visible = model.random_visible(x, mask_ratio, generator=generator)
    panels = {k: v.cpu() for k, v in reconstruction_panels(model, x, visible).items()}
    return save_panels(panels, mean, std, out_dir, names, labels=labels, title=describe(model, visible))


def reconstruct_source(model: nn.Module, source: str, split: str, out_dir: Path, geometry: Geometry, *, num: int,
                       generator: torch.Generator | None = None, mask_ratio: float | None = None) -> list[Path]:
    """Pictures for images (:func:`reconstruct_dataset`) or, for a video MAE, clips (:func:`reconstruct_videos`), at
    the run's ``geometry``."""
    if geometry.video:
        return reconstruct_videos(model, source, out_dir, geometry.img_size, geometry.num_frames,
                                  geometry.frame_stride, num=num, generator=generator, mask_ratio=mask_ratio)
    return reconstruct_dataset(model, source, split, out_dir, geometry.img_size, num=num, generator=generator,
                               mask_ratio=mask_ratio)
