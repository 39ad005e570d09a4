"""``hieralab study-dense``: does MAE pretraining help detection and instance segmentation here?

On the Fashion-MNIST scenes, Mask R-CNN on the demo's mini Hiera, two rows with the same architecture and budget:
the encoder from random init, and the encoder of an MAE run (by default the demo's, ``runs/mae_hiera_fmnist``,
pretrained first when it is missing), each over several seeds (the heads' init and the data order). Reports COCO
box and mask AP (pycocotools) with their spread; writes ``dense_study.md`` (the table and the command),
``dense_study.png`` and ``dense_study.json``; every run is a normal ``detect`` run folder under ``out_dir``,
reused when complete.
"""

from __future__ import annotations

import json
import logging
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt

from .. import files
from ..config import DetectConfig, PretrainConfig, load_config
from ..engine.artifacts import resolve_weights
from ..engine.encoder import saved_arguments
from ..tasks import detect, pretrain
from ..viz.figures import save_figure

log = logging.getLogger(__name__)
METRICS = ("bbox_AP", "bbox_AP50", "segm_AP", "segm_AP50")


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def run(*, mae: str = "runs/mae_hiera_fmnist", encoder: str = "hiera_mini_32", seeds: Sequence[int] = (0, 1),
        steps: int = 300, out_dir: str = "runs/dense_study", extra: Sequence[str] = ()) -> dict[str, Any]:
    """Run (or reuse) both rows and write the table and plot; ``extra``: ``key=value`` overrides of every detect
    run (e.g. ``data.scenes_train=500``)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if not (Path(mae) / "encoder" / "config.json").exists():
        log.info("no MAE run at %s: pretraining the demo's first", mae)
        pretrain.run(load_config(PretrainConfig, "mae_hiera_fmnist", [f"out_dir={mae}"]), resume=True)
    arch = saved_arguments(resolve_weights(mae), encoder)
    if not arch:
        raise ValueError(f"{mae} does not hold an MAE of {encoder}; pass the pretrain run of mae_{encoder}")
    base = load_config(DetectConfig, None, list(extra))  # the schedule spans exactly the budget: cosine to its end
    epochs = steps * base.optim.batch_size * base.optim.accum_steps / base.data.scenes_train
    args = [f"model={encoder}", *(f"model_args.{k}={json.dumps(v)}" for k, v in arch.items()),
            f"epochs={epochs}", f"max_steps={steps}", *extra]
    rows = []
    for name, init in (("random init", []), ("MAE encoder", [f"init={mae}"])):
        per_seed, run_dirs = [], [out / f"{'mae' if init else 'random'}_seed{seed}" for seed in seeds]
        for seed, run_dir in zip(seeds, run_dirs):
            if not (run_dir / "summary.json").exists():
                detect.run(load_config(DetectConfig, None, [*args, *init, f"seed={seed}", f"out_dir={run_dir}"]),
                           resume=True)
            per_seed.append(json.loads((run_dir / "summary.json").read_text()))
            log.info("dense study: %s seed %d: box AP %.2f, mask AP %.2f", name, seed, per_seed[-1]["bbox_AP"],
                     per_seed[-1]["segm_AP"])
        rows.append({"row": name, "seeds": list(seeds), "runs": [str(d) for d in run_dirs],
                     **{m: [s[m] for s in per_seed] for m in METRICS},
                     "seconds": round(sum(s["seconds"] for s in per_seed), 1)})
    cfg = load_config(DetectConfig, None, [*args, f"out_dir={out}"])
    summary = {"encoder": encoder, "mae": mae, "steps": steps, "seeds": list(seeds), "rows": rows,
               "batch_size": cfg.optim.batch_size, "img_size": cfg.data.img_size, "head": cfg.head,
               "train_scenes": cfg.data.scenes_train, "val_scenes": cfg.data.scenes_val, "extra": list(extra),
               "total_seconds": round(time.perf_counter() - t0, 1)}
    files.write_json(out / "dense_study.json", summary)
    files.write_text(out / "dense_study.md", report(summary))
    plot(rows, out / "dense_study.png", f"Mask R-CNN on {encoder}, Fashion-MNIST scenes, {steps} steps"
         + "".join(f", {e}" for e in extra))  # the overrides every run had (e.g. precision=bf16)
    return summary


def table(s: dict[str, Any]) -> str:
    lines = ["| encoder | box AP | box AP50 | mask AP | mask AP50 | per seed (box / mask AP) |",
             "|---|---|---|---|---|---|"]
    for r in s["rows"]:
        cells = [f"{m:.2f} ± {sd:.2f}" for m, sd in (_mean_std(r[k]) for k in METRICS)]
        seeds = ", ".join(f"{b:.1f} / {m:.1f}" for b, m in zip(r["bbox_AP"], r["segm_AP"]))
        lines.append(f"| {r['row']} | " + " | ".join(cells) + f" | {seeds} |")
    return "\n".join(lines) + "\n"


def report(s: dict[str, Any]) -> str:
    extra = " ".join(s["extra"])
    return (f"# Does MAE help detection? Mask R-CNN on {s['encoder']}, Fashion-MNIST scenes\n\n"
            f"Made by `hieralab study-dense --steps {s['steps']} --seeds {' '.join(map(str, s['seeds']))}"
            f"{' ' + extra if extra else ''}` (MAE run: `{s['mae']}`). Both rows: the same architecture, "
            f"{s['head']} head, {s['steps']} steps of {s['batch_size']} crops of {s['img_size']} px from "
            f"{s['train_scenes']} training scenes, scored with pycocotools on {s['val_scenes']} validation scenes "
            f"(test-split garments); mean ± std over seeds {s['seeds']} (the heads' init and the data order). "
            f"{s['total_seconds']:.0f} s in all.\n\n" + table(s))


def plot(rows: list[dict[str, Any]], path: Path, title: str) -> Path:
    """Box and mask AP of each row, mean ± std over seeds, the seeds as dots; axes from 0."""
    fig, ax = plt.subplots(figsize=(6.5, 3.8), dpi=120)
    width = 0.38
    for k, (metric, label) in enumerate((("bbox_AP", "box AP"), ("segm_AP", "mask AP"))):
        for i, r in enumerate(rows):
            m, sd = _mean_std(r[metric])
            x = i + (k - 0.5) * width
            ax.bar(x, m, width, yerr=sd, capsize=3, color=("tab:red", "tab:blue")[i], alpha=(0.9, 0.55)[k],
                   label=f"{label}, {r['row']}")
            ax.scatter([x] * len(r[metric]), r[metric], color="black", s=10, zorder=3)
            ax.text(x, m + sd + 0.5, f"{m:.1f}", ha="center", fontsize=7)
    ax.set_xticks(range(len(rows)), [r["row"] for r in rows])
    ax.set_ylim(0, max(max(r["bbox_AP"] + r["segm_AP"]) for r in rows) * 1.25 + 1)
    ax.set_ylabel("COCO AP on the validation scenes (%)")
    ax.set_title(title, fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    return save_figure(fig, path)
