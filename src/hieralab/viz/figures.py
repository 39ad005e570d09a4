"""Plots of what runs measure: the training curve of ``log.csv``, confusion matrices, linear-probe sweeps."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from .. import files  # noqa: E402


def save_figure(fig, path: Path) -> Path:
    """Lay the figure out (``tight_layout`` unless it was made with a layout engine), write a PNG atomically,
    close the figure."""
    if fig.get_layout_engine() is None:
        fig.tight_layout()
    files.atomic_write(path, lambda p: fig.savefig(p, format="png"))
    plt.close(fig)
    return path


def smooth(values: Sequence[float], momentum: float | None = None) -> list[float]:
    """A bias-corrected running mean (TensorBoard's smoothing: the first value is not dragged towards 0). The
    default momentum averages over about a twentieth of the points, so the mean follows the curve's shape."""
    if momentum is None:
        momentum = min(0.98, max(0.0, 1 - 20 / max(len(values), 1)))
    out, avg, weight = [], 0.0, 0.0
    for v in values:
        avg, weight = momentum * avg + (1 - momentum) * v, momentum * weight + (1 - momentum)
        out.append(avg / weight)
    return out


SERIES_LABELS = {"val_top1": "validation top-1", "val_top5": "validation top-5", "ema_val_top1": "EMA validation top-1",
                 "knn_top1": "k-NN top-1 (online probe)"}


def plot_curve(csv_path: Path, png_path: Path, *, y: str = "loss", title: str = "training",
               extra: Sequence[str] = (), extra_title: str = "validation") -> Path:
    """``y`` against ``step`` from a run's ``log.csv`` (raw values faint, their running mean solid, the learning
    rate on a second axis); columns in ``extra`` that have values (e.g. validation accuracy, the online k-NN probe)
    in a panel under it, on the same steps."""
    _, rows = files.read_csv(csv_path)
    points = [(int(r["step"]), float(r[y])) for r in rows if r.get(y) not in (None, "")]
    series = {k: [(int(r["step"]), float(r[k])) for r in rows if r.get(k) not in (None, "")] for k in extra}
    series = {k: v for k, v in series.items() if v}
    fig, axes = plt.subplots(2 if series else 1, 1, figsize=(7, 6.4 if series else 3.8), dpi=120, squeeze=False,
                             sharex=True, gridspec_kw={"height_ratios": [3, 2]} if series else None)
    ax = axes[0, 0]
    if points:
        steps, values = zip(*points)
        ax.plot(steps, values, color="tab:blue", alpha=0.3, linewidth=0.8, label=f"{y} (each logged step)")
        ax.plot(steps, smooth(values), color="tab:blue", linewidth=1.8, label=f"{y} (running mean)")
    if not series:
        ax.set_xlabel("optimizer step")
    ax.set_ylabel(y)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    lrs = [(int(r["step"]), float(r["lr"])) for r in rows if r.get("lr") not in (None, "")]
    if lrs:
        ax2 = ax.twinx()
        (line,) = ax2.plot(*zip(*lrs), color="tab:orange", alpha=0.7, label="learning rate")
        ax2.set_ylabel("learning rate", color="tab:orange")
        handles, labels = handles + [line], labels + ["learning rate"]
    if handles:
        ax.legend(handles, labels, fontsize=8, loc="upper right")
    if series:
        ax = axes[1, 0]
        for k, pts in series.items():
            ax.plot(*zip(*pts), marker="o", markersize=3, label=SERIES_LABELS.get(k, k))
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("accuracy (%)" if all("top" in k for k in series) else "value")
        ax.set_title(extra_title, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return save_figure(fig, png_path)


def plot_confusion(matrix: torch.Tensor, classes: Sequence[str], path: Path, title: str) -> Path:
    """The confusion matrix, row-normalised (recall per class on the diagonal), as a PNG."""
    norm = (matrix.float() / matrix.sum(1, keepdim=True).clamp(min=1)).numpy()
    K = len(classes)
    fig, ax = plt.subplots(figsize=(2.6 + 0.5 * K, 1.6 + 0.5 * K), dpi=120)
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(K), classes, rotation=45, ha="right")
    ax.set_yticks(range(K), classes)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    if K <= 20:
        for i in range(K):
            for j in range(K):
                ax.text(j, i, f"{norm[i, j]:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if norm[i, j] > 0.5 else "black")
    return save_figure(fig, path)


def plot_probe(lrs: Sequence[float], accs: Sequence[float], path: Path, title: str) -> Path:
    """Validation top-1 of each linear-probe learning rate."""
    fig, ax = plt.subplots(figsize=(5.5, 3.6), dpi=120)
    ax.semilogx(lrs, accs, marker="o", label="one head per learning rate")
    best = max(range(len(accs)), key=accs.__getitem__)
    ax.scatter([lrs[best]], [accs[best]], color="tab:red", zorder=3, label=f"best: {accs[best]:.2f} %")
    ax.set_xlabel("learning rate (at batch 256)")
    ax.set_ylabel("validation top-1 (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, path)
