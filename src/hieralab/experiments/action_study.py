"""The action-detection study's report (``docs/action_study.md``): frame mAP of each arm over its seeds, the
chance level, the MAE runs' loss curves, as a table and a picture.

The arms are ordinary ``hieralab action`` runs in one folder (``<arm>-s<seed>/metrics.json``, commands in
``docs/action_study.md``); this module only reads them::

    python -m hieralab.experiments.action_study runs/action_study --docs docs

An arm with no finished seed is left out (and said so); nothing is retrained.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np

from .. import files
from ..files import read_csv
from ..metrics.ava import Row, evaluate, read_label_map
from ..metrics.ava import read_csv as read_ava
from ..viz.figures import save_figure

log = logging.getLogger(__name__)

# label, folder prefix of its runs (``<prefix>-s<seed>``)
ARMS = [
    ("random init, stage3", "random-stage3"),
    ("random init, fuse", "random-fuse"),
    ("random init, stage2", "random-stage2"),
    ("video MAE 144 steps, stage3", "mae-stage3"),
    ("video MAE 360 steps norm-pix, stage3", "maelong-stage3"),
    ("single frame, random init, stage3", "single-stage3"),
]
MAES = [("video MAE, 144 steps, pixel loss", "mae"), ("video MAE, 360 steps, norm-pix loss", "mae-long")]


def arms(root: Path) -> list[dict[str, Any]]:
    """Every arm with at least one finished seed: ``{"arm", "seeds", "mAP": [per seed], "AP": {class: mean}}``."""
    rows = []
    for label, prefix in ARMS:
        runs = sorted(p for p in root.glob(f"{prefix}-s*") if (p / "metrics.json").is_file())
        if not runs:
            log.info("%s: no finished run (%s-s*/metrics.json) in %s; left out", label, prefix, root)
            continue
        metrics = [json.loads((p / "metrics.json").read_text()) for p in runs]
        classes = list(metrics[0]["AP"])
        rows.append({"arm": label, "seeds": [p.name.rsplit("-s", 1)[1] for p in runs],
                     "mAP": [m["frame_mAP"] for m in metrics],
                     "AP": {c: _mean([m["AP"][c] for m in metrics if m["AP"][c] is not None]) for c in classes}})
    return rows


def _mean(values: list[float]) -> float | None:
    return statistics.fmean(values) if values else None  # a class without ground truth has no AP


def chance(gt_csv: Path, labels: Path, draws: int = 20, seed: int = 0) -> tuple[float, float]:
    """Frame mAP of random scores for every true box and every action (mean, std over ``draws``)."""
    gt = read_ava(gt_csv).rows
    names, _ = read_label_map(labels)
    boxes = sorted({(r.video_id, r.timestamp, *r.box) for r in gt})
    rng = np.random.default_rng(seed)
    maps = []
    for _ in range(draws):
        scores = rng.random((len(boxes), len(names)))
        dets = [Row(*b, action_id=c, value=float(s)) for b, row in zip(boxes, scores) for c, s in zip(names, row)]
        maps.append(evaluate(gt, dets, names)["mAP"])
    return statistics.fmean(maps), statistics.stdev(maps)


def _mean_spread(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.2f} (1 seed)"
    return f"{statistics.fmean(values):.2f} ± {(max(values) - min(values)) / 2:.2f}"


def table(rows: list[dict[str, Any]], chance_level: tuple[float, float]) -> str:
    seeds = sorted({s for r in rows for s in r["seeds"]}, key=int)
    lines = ["| arm | " + " | ".join(f"seed {s}" for s in seeds) + " | mean ± half-range |",
             "| --- |" + " ---: |" * (len(seeds) + 1),
             (f"| chance (random scores on the true boxes, 20 draws) |{' |' * len(seeds)} "
              f"{chance_level[0]:.2f} ± {chance_level[1]:.2f} (std) |")]
    for r in rows:
        by_seed = dict(zip(r["seeds"], r["mAP"]))
        cells = " | ".join(f"{by_seed[s]:.2f}" if s in by_seed else "—" for s in seeds)
        lines.append(f"| {r['arm']} | {cells} | {_mean_spread(r['mAP'])} |")
    return "\n".join(lines)


def class_table(rows: list[dict[str, Any]]) -> str:
    classes = list(rows[0]["AP"])
    lines = ["| class | " + " | ".join(r["arm"] for r in rows) + " |", "| --- |" + " ---: |" * len(rows)]
    lines += [f"| {c} | " + " | ".join("—" if r["AP"][c] is None else f"{r['AP'][c]:.1f}" for r in rows) + " |" for c in classes]
    return "\n".join(lines)


def mae_curves(root: Path) -> list[tuple[str, list[int], list[float]]]:
    """``(label, steps, losses)`` of each MAE run's ``log.csv`` that exists."""
    out = []
    for label, name in MAES:
        log_csv = root / name / "log.csv"
        if log_csv.is_file():
            rows = read_csv(log_csv)[1]
            out.append((label, [int(r["step"]) for r in rows], [float(r["loss"]) for r in rows]))
    return out


def plot(rows: list[dict[str, Any]], chance_level: tuple[float, float], curves, path: Path) -> Path:
    """Left: frame mAP per arm (bar: mean over seeds, dots: the seeds, dashed: chance). Right: the MAE losses."""
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4.2), dpi=120, gridspec_kw={"width_ratios": [1.6, 1]})
    colours = plt.get_cmap("tab10")
    for i, r in enumerate(rows):
        m = statistics.fmean(r["mAP"])
        ax.barh(i, m, color=colours(i), alpha=0.6)
        ax.scatter(r["mAP"], [i] * len(r["mAP"]), color="black", s=14, zorder=3, label="one seed" if i == 0 else None)
        ax.text(max(r["mAP"]) + 0.5, i, f"mean {m:.1f}", va="center", fontsize=8)
    ax.axvline(chance_level[0], color="grey", ls="--", label=f"chance: random scores ({chance_level[0]:.1f})")
    ax.set_yticks(range(len(rows)), [f"{r['arm']}\n({len(r['mAP'])} seed{'s' * (len(r['mAP']) > 1)})" for r in rows],
                  fontsize=7.5)
    ax.invert_yaxis()
    ax.set_xlim(0, max(max(r["mAP"]) for r in rows) * 1.45)
    ax.set_xlabel("frame mAP@0.5 on 100 validation keyframes (%, ground-truth boxes)")
    ax.set_title("Action detection on the bundled clips: hiera_mini_8x32, 125 steps (bar: mean)", fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(axis="x", alpha=0.3)
    for label, steps, losses in curves:
        bx.plot(steps, losses, marker=".", label=label)
    bx.set_xlabel("MAE optimizer step (32 clips)")
    bx.set_ylabel("MAE loss (each run's own target)")
    bx.set_title("The video MAEs the pretrained arms start from", fontsize=9)
    bx.grid(alpha=0.3)
    if curves:
        bx.legend(fontsize=7)
    return save_figure(fig, path)


def report(root: Path, docs: Path, clips: Path) -> dict[str, Any]:
    """Read the runs of ``root``; write ``action_study.png`` / ``.json`` and the two tables (``action_study_tables.md``)
    into ``docs``; return the numbers."""
    rows = arms(root)
    if not rows:
        raise FileNotFoundError(f"{root}: no finished action run (<arm>-s<seed>/metrics.json); run the study first")
    level = chance(clips / "val.csv", clips / "labels.pbtxt")
    docs.mkdir(parents=True, exist_ok=True)
    plot(rows, level, mae_curves(root), docs / "action_study.png")
    files.write_json(docs / "action_study.json", {"chance": level, "arms": rows})
    files.write_text(docs / "action_study_tables.md", table(rows, level) + "\n\n" + class_table(rows) + "\n")
    return {"chance": level, "arms": rows}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m hieralab.experiments.action_study", description=__doc__.split("\n")[0])
    p.add_argument("root", help="the folder of the study's runs (runs/action_study)")
    p.add_argument("--docs", default="docs", help="where action_study.png / .json / _tables.md go")
    p.add_argument("--clips", default="runs/fashion-mnist-actions", help="the bundled clips (for the chance level)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        out = report(Path(args.root), Path(args.docs), Path(args.clips))
    except (FileNotFoundError, ValueError) as e:
        print(f"action_study: error: {e}", file=sys.stderr)
        return 1
    print(table(out["arms"], out["chance"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
