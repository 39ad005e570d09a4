"""What a run writes as it goes: a CSV of metrics and TensorBoard events.

``log.csv`` is appended a line at a time and rewritten only through a temporary file (a new column, a resume), so
a kill at any instant loses at most the rows written since the last checkpoint; a line the kill cut short is
dropped when the log is read back.
"""

from __future__ import annotations

import csv
import io
import logging
from pathlib import Path
from typing import Any

from .. import files

log = logging.getLogger(__name__)


def _csv_text(fields: list[str], rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fields, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


class RunLog:
    """Appends rows to ``<run>/log.csv`` and scalars to ``<run>/tb``. ``resume_step``: rows after it are dropped
    first (atomically), so the CSV reads as one uninterrupted run; None starts both logs afresh."""

    def __init__(self, run_dir: Path, *, resume_step: int | None = None, tensorboard: bool = True):
        self.path = run_dir / "log.csv"
        self.fields: list[str] | None = None
        if resume_step is not None and self.path.exists():
            header, rows = files.read_csv(self.path)
            keep = [r for r in rows if r.get("step", "").isdigit() and int(r["step"]) <= resume_step]
            self.fields = header or None
            files.write_text(self.path, _csv_text(header, keep), durable=True)
        elif self.path.exists():
            self.path.unlink()
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
            _, rows = files.read_csv(self.path) if self.fields else ([], [])
            self.fields = (self.fields or []) + new
            files.write_text(self.path, _csv_text(self.fields, [*rows, row]))
        else:
            with self.path.open("a", newline="") as f:
                csv.DictWriter(f, self.fields, extrasaction="ignore", lineterminator="\n").writerow(row)
        if self.tb is not None:
            for k, v in row.items():
                if k != "step" and isinstance(v, (int, float)):
                    self.tb.add_scalar(f"train/{k}", v, row["step"])

    def flush(self) -> None:
        if self.tb is not None:
            self.tb.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
