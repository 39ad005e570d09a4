"""What a run writes as it goes: a CSV of metrics, TensorBoard events, and a loss-curve PNG at the end."""

from __future__ import annotations

import csv
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class RunLog:
    """Appends rows to ``<run>/log.csv`` and scalars to ``<run>/tb``. On resume, rows after the resumed step are
    dropped first, so the CSV reads as one uninterrupted run."""

    def __init__(self, run_dir: Path, *, resume_step: int | None = None, tensorboard: bool = True):
        self.path = run_dir / "log.csv"
        self.fields: list[str] | None = None
        if self.path.exists():
            rows = list(csv.DictReader(self.path.open()))
            keep = [r for r in rows if resume_step is not None and int(r["step"]) <= resume_step]
            if rows:
                self.fields = list(rows[0].keys())
                with self.path.open("w", newline="") as f:
                    w = csv.DictWriter(f, self.fields)
                    w.writeheader()
                    w.writerows(keep)
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(run_dir / "tb"), purge_step=resume_step)
            except ImportError:  # tensorboard is a dependency, but a run should not die for want of it
                log.warning("tensorboard is not installed; writing log.csv only")

    def write(self, row: dict[str, Any]) -> None:
        new = [k for k in row if k not in (self.fields or [])]
        if new:  # the first row, or a metric that appears later (e.g. validation): rewrite with the wider header
            rows = list(csv.DictReader(self.path.open())) if self.fields else []
            self.fields = (self.fields or []) + new
            with self.path.open("w", newline="") as f:
                w = csv.DictWriter(f, self.fields)
                w.writeheader()
                w.writerows(rows)
        with self.path.open("a", newline="") as f:
            csv.DictWriter(f, self.fields).writerow({k: row.get(k) for k in self.fields})
        if self.tb is not None:
            for k, v in row.items():
                if k != "step" and isinstance(v, (int, float)):
                    self.tb.add_scalar(f"train/{k}", v, row["step"])

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def plot_curve(csv_path: Path, png_path: Path, *, y: str = "loss", title: str = "MAE pretraining",
               extra: Sequence[str] = ()) -> Path:
    """Plot ``y`` against ``step`` from a run's ``log.csv`` (with the learning rate on a second axis); columns in
    ``extra`` that have values (e.g. validation accuracy) go in a second panel."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(csv.DictReader(csv_path.open()))
    steps = [int(r["step"]) for r in rows]
    series = {k: [(int(r["step"]), float(r[k])) for r in rows if r.get(k) not in (None, "")] for k in extra}
    series = {k: v for k, v in series.items() if v}
    fig, axes = plt.subplots(1, 2 if series else 1, figsize=(11 if series else 6, 3.6), dpi=120, squeeze=False)
    ax = axes[0, 0]
    ax.plot(steps, [float(r[y]) for r in rows], color="tab:blue", label=y)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(y)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if rows and "lr" in rows[0]:
        ax2 = ax.twinx()
        ax2.plot(steps, [float(r["lr"]) for r in rows], color="tab:orange", alpha=0.6, label="lr")
        ax2.set_ylabel("learning rate", color="tab:orange")
    if series:
        ax = axes[0, 1]
        for k, points in series.items():
            ax.plot(*zip(*points), marker="o", label=k)
        ax.set_xlabel("optimizer step")
        ax.set_title("validation")
        ax.grid(alpha=0.3)
        ax.legend()
    return save_figure(fig, png_path)


def save_figure(fig, path: Path) -> Path:
    """``tight_layout``, write a PNG through a temporary file and rename it into place, close the figure."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)
    return path
