"""Pictures of action detection: each keyframe with every actor's box and its top actions (scores) beside the ground
truth, and a strip of a clip's frames that shows the motion the actions are about."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import matplotlib.pyplot as plt
import torch
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle

from .detections import PALETTE, _show
from .figures import save_figure


class Actor(NamedTuple):
    """One box on a keyframe (pixels x1, y1, x2, y2) and its actions: names, with scores for predictions."""

    box: Sequence[float]
    actions: Sequence[str]
    scores: Sequence[float] | None = None


def _actors(ax, image: torch.Tensor, actors: Sequence[Actor]) -> None:
    """``image [C, H, W]`` in 0..1 with each actor's box (one colour per actor) and its actions beside it."""
    _show(ax, image)
    for k, a in enumerate(actors):
        color = PALETTE[(2 * k) % len(PALETTE)]
        x0, y0, x1, y1 = (float(v) for v in a.box)
        ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor=color, linewidth=1.2))
        lines = [n + (f" {s:.2f}" if a.scores is not None else "")
                 for n, s in zip(a.actions, a.scores if a.scores is not None else [None] * len(a.actions))]
        ax.text(x0, y0, "\n".join(lines) or "(none)", fontsize=5, color="white", va="bottom",
                bbox={"facecolor": color, "alpha": 0.8, "pad": 0.5, "linewidth": 0})


def draw_actions(items: Sequence[tuple[torch.Tensor, Sequence[Actor] | None, Sequence[Actor], str]], path: Path, *,
                 title: str) -> Path:
    """Each item ``(keyframe [C, H, W] in 0..1, ground-truth actors or None, predicted actors, name)`` as a row:
    the ground truth (boxes, every action) and the predictions (boxes, their top actions with scores); without
    ground truth (new videos), the predictions alone."""
    with_truth = any(truth is not None for _, truth, _, _ in items)
    cols = 2 if with_truth else 1
    rows = max(1, len(items))
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.5 * rows + 0.5), dpi=120, squeeze=False)
    for r, (image, truth, predicted, name) in enumerate(items):
        if with_truth:
            _actors(axes[r][0], image, truth or [])
            axes[r][0].set_title(f"{name}: ground truth", fontsize=7)
        _actors(axes[r][cols - 1], image, predicted)
        axes[r][cols - 1].set_title(f"{name}: predicted (top actions, sigmoid scores)", fontsize=7)
    for ax in axes.flat[len(items) * cols:]:
        ax.axis("off")
    handles = [Line2D([], [], color=PALETTE[0], lw=1.2, label="an actor's box (one colour per actor)")]
    fig.legend(handles=handles, loc="lower center", fontsize=6, frameon=False)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    return save_figure(fig, path)


def draw_motion(clip: torch.Tensor, actors: Sequence[Actor], path: Path, *, title: str, keyframe: int,
                frame_numbers: Sequence[int] | None = None) -> Path:
    """A strip of the frames of ``clip [C, T, H, W]`` (0..1) the model saw, the keyframe's boxes drawn on every
    frame so the motion shows against them; the keyframe is marked, and the actors' actions are the legend."""
    T = clip.shape[1]
    fig, axes = plt.subplots(1, T, figsize=(1.4 * T, 2.2), dpi=120, squeeze=False)
    for t in range(T):
        ax = axes[0][t]
        _show(ax, clip[:, t])
        for k, a in enumerate(actors):
            x0, y0, x1, y1 = (float(v) for v in a.box)
            ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, linewidth=0.8,
                                   edgecolor=PALETTE[(2 * k) % len(PALETTE)], linestyle="-" if t == keyframe else ":"))
        number = frame_numbers[t] if frame_numbers is not None else t
        ax.set_title(f"frame {number}" + (" (key)" if t == keyframe else ""), fontsize=6,
                     fontweight="bold" if t == keyframe else "normal")
    handles = [Line2D([], [], color=PALETTE[(2 * k) % len(PALETTE)], lw=1.2,
                      label=f"actor {k + 1}: " + (", ".join(a.actions) or "(none)")) for k, a in enumerate(actors)]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 4) or 1, fontsize=6, frameon=False)
    fig.suptitle(title + " (boxes: the keyframe's, dotted on the other frames)", fontsize=8)
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    return save_figure(fig, path)
