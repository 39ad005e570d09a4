"""``hieralab study``: does MAE pretraining help, at a size this machine can run?

On Fashion-MNIST, with one encoder and one budget, six rows: linear probes on (a) raw pixels, (b) a random-init
encoder and (c) the MAE-pretrained encoder (each over several seeds: the probe's init and order, and for (b) the
encoder's init), then (d) supervised training from scratch, (e) fine-tuning the MAE encoder and (f) fine-tuning
only its last k blocks (each over the same seeds: the head's init and the data order). Writes ``study.json``,
``study.md`` (the table, with the command and the time each row took) and ``study.png``; every stage is a normal run
folder (``pretrain``, ``linprobe``, ``finetune``) under ``out_dir`` and is reused when it is complete.
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
import torch

from .. import files
from ..config import FinetuneConfig, LinprobeConfig, PretrainConfig, load_config
from ..engine.artifacts import run_config
from ..engine.encoder import saved_arguments
from ..tasks import finetune, linprobe, pretrain
from ..viz.figures import save_figure

log = logging.getLogger(__name__)
LRS = [0.01, 0.03, 0.1, 0.3, 1.0, 3.0]


def _row(name: str, run_dir: Path, task, cfg_cls: type, overrides: list[str], seeds: Sequence[int],
         metric: str) -> dict[str, Any]:
    """One run of ``task`` per seed (seed 0 in ``run_dir``, seed k in ``run_dir_seed<k>``), complete runs reused;
    ``top1``: each run's ``metric`` from its summary."""
    top1, seconds, curves = [], 0.0, []
    for seed in seeds:
        out = run_dir if seed == 0 else run_dir.with_name(f"{run_dir.name}_seed{seed}")
        if not (out / "summary.json").exists():
            task.run(load_config(cfg_cls, None, [*overrides, f"seed={seed}", f"out_dir={out}"]), resume=True)
        s = json.loads((out / "summary.json").read_text())
        top1.append(s[metric])
        seconds += s["seconds"]
        curves.append(validation_curve(out / "log.csv"))
        log.info("study: %s seed %d: %.2f %%", name, seed, top1[-1])
    row = {"row": name, "top1": top1, "seconds": round(seconds, 1)}
    if all(curves):  # fine-tuning: the seeds' mean validation top-1 after each epoch
        row["per_eval"] = [round(statistics.mean(v), 2) for v in zip(*curves)]
    return row


def _probe_row(name: str, run_dir: Path, overrides: list[str], seeds: Sequence[int]) -> dict[str, Any]:
    """Linear probes: the seed sets the probe's init and order (and a random encoder's init)."""
    return _row(name, run_dir, linprobe, LinprobeConfig, overrides, seeds, "best_top1")


def _finetune_row(name: str, run_dir: Path, overrides: list[str], seeds: Sequence[int]) -> dict[str, Any]:
    """Fine-tuning: the seed sets the head's init and the data order."""
    return _row(name, run_dir, finetune, FinetuneConfig, overrides, seeds, "last_top1")


def validation_curve(log_csv: Path) -> list[float]:
    """The validation top-1 of each evaluation in a run's ``log.csv`` (once per epoch by default)."""
    return [round(float(r["val_top1"]), 2) for r in files.read_csv(log_csv)[1] if r.get("val_top1")]


def plot(rows: list[dict[str, Any]], path: Path, title: str) -> Path:
    """Each row's mean top-1 with its seed-to-seed standard deviation, from 0 %, coloured by what it starts from."""
    fig, ax = plt.subplots(figsize=(8, 3.8), dpi=120)
    means = [statistics.mean(r["top1"]) for r in rows]
    errs = [statistics.stdev(r["top1"]) if len(r["top1"]) > 1 else 0 for r in rows]
    kinds = {"gray": "no encoder (pixels)", "tab:red": "random-init / scratch encoder", "tab:blue": "MAE encoder"}
    colors = ["gray", "tab:red", "tab:blue", "tab:red", "tab:blue", "tab:blue"][:len(rows)]
    ax.barh(range(len(rows)), means, xerr=errs, color=colors, capsize=3)
    ax.set_yticks(range(len(rows)), [r["row"] for r in rows])
    ax.invert_yaxis()
    ax.set_xlim(0, 100)
    for i, (m, e) in enumerate(zip(means, errs)):
        ax.text(m + e + 0.5, i, f"{m:.2f}" + (f" ± {e:.2f}" if e else ""), va="center", fontsize=8)
    ax.set_xlabel("Fashion-MNIST test top-1 (%), mean ± std over seeds")
    ax.set_title(title, fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    ax.legend(handles=[plt.Rectangle((0, 0), 1, 1, color=c) for c in kinds if c in colors],
              labels=[v for c, v in kinds.items() if c in colors], fontsize=8, loc="lower right")
    return save_figure(fig, path)


def run(*, encoder: str = "vit_micro_patch4_32", preset: str = "mae_vit_micro_fmnist", pretrain_epochs: float = 10,
        finetune_epochs: float = 2, trainable_blocks: int = 2, seeds: Sequence[int] = (0, 1, 2),
        probe_epochs: int = 30, out_dir: str = "runs/study", limit: int | None = None,
        extra: Sequence[str] = ()) -> dict[str, Any]:
    """Run (or reuse) every stage and write the table and plot. ``extra``: ``key=value`` overrides for the model,
    shared by pretraining (``model_args.*`` of the MAE) and the encoder rows."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    mae_dir = out / "mae"
    data = [f"data.limit={limit}"] if limit else []
    t0 = time.perf_counter()
    if not (mae_dir / "summary.json").exists():
        pretrain.run(load_config(PretrainConfig, preset, [f"out_dir={mae_dir}", f"epochs={pretrain_epochs}",
                                                          *data, *extra]), resume=True)
    pre = json.loads((mae_dir / "summary.json").read_text())
    pre_cfg = run_config(mae_dir)
    model_args = saved_arguments(mae_dir / "encoder", encoder)  # the pretrained architecture, for every row
    if not model_args:
        raise ValueError(f"{mae_dir}/encoder does not hold {encoder}; use the preset of mae_{encoder}")
    args = [f"model={encoder}", *(f"model_args.{k}={json.dumps(v)}" for k, v in model_args.items()), *data]
    probe = [f"epochs={probe_epochs}", "batch_size=256", f"lrs={json.dumps(LRS)}", *data]
    rows = [
        _probe_row("(a) linear probe, raw pixels", out / "probe_pixels", ["model=pixels", *probe], seeds),
        _probe_row("(b) linear probe, random-init encoder", out / "probe_random", [*args, *probe], seeds),
        _probe_row("(c) linear probe, MAE encoder", out / "probe_mae", [*args, *probe, f"init={mae_dir}"], seeds),
    ]
    # A short budget: the light end of the recipe (no mixup / cutmix / RandAugment / erasing) and the crops of the
    # pretraining (MAE's RandomResizedCrop from 8 % of the area leaves too little of a 28-px garment), for all rows.
    crop = json.dumps(pre_cfg["data"]["crop_scale"])
    ft = [*args, f"epochs={finetune_epochs}", "optim.batch_size=128", "data.num_workers=2", "aug.mixup=0",
          "aug.cutmix=0", "aug.randaug=null", "aug.reprob=0", "optim.warmup_epochs=0.2", f"aug.crop_scale={crop}"]
    rows += [
        _finetune_row("(d) supervised from scratch", out / "scratch", [*ft, "layer_decay=1.0"], seeds),
        _finetune_row("(e) fine-tune the MAE encoder", out / "finetune", [*ft, f"init={mae_dir}"], seeds),
        _finetune_row(f"(f) fine-tune its last {trainable_blocks} blocks", out / "partial",
                      [*ft, f"init={mae_dir}", f"trainable_blocks={trainable_blocks}"], seeds),
    ]
    probe0 = json.loads((out / "probe_pixels" / "summary.json").read_text())
    summary = {"encoder": encoder, "preset": preset, "pretrain_epochs": pretrain_epochs,
               "pretrain_seconds": pre["seconds"], "pretrain_final_loss": pre["final_loss"],
               "finetune_epochs": finetune_epochs, "seeds": list(seeds), "probe_epochs": probe_epochs,
               "train_images": probe0["train"], "test_images": probe0["val"], "rows": rows,
               "total_seconds": round(time.perf_counter() - t0, 1), "threads": torch.get_num_threads()}
    files.write_json(out / "study.json", summary)
    files.write_text(out / "study.md", report(summary))
    plot(rows, out / "study.png", f"{encoder}, Fashion-MNIST, MAE {pretrain_epochs:g} epochs")
    return summary


def table(s: dict[str, Any]) -> str:
    lines = ["| row | test top-1 (%) | seeds | after each epoch | time (s) |", "|---|---|---|---|---|"]
    for r in s["rows"]:
        acc = r["top1"]
        cell = f"{statistics.mean(acc):.2f} ± {statistics.stdev(acc):.2f}" if len(acc) > 1 else f"{acc[0]:.2f}"
        spread = f" (min {min(acc):.2f}, max {max(acc):.2f})" if len(acc) > 1 else ""
        curve = " → ".join(f"{v:.2f}" for v in r.get("per_eval", [])) or "—"  # mean over seeds
        seconds = "—" if r.get("seconds") is None else f"{r['seconds']:.0f}"
        lines.append(f"| {r['row']} | {cell}{spread} | {len(acc)} | {curve} | {seconds} |")
    return "\n".join(lines) + "\n"


def report(s: dict[str, Any]) -> str:
    """The table with what produced it: the command, the encoder, the budget."""
    return (f"# Does MAE help? {s['encoder']} on Fashion-MNIST\n\n"
            f"Made by `hieralab study` (see `hieralab study --help`): MAE preset `{s['preset']}`, "
            f"{s['pretrain_epochs']:g} epochs on {s['train_images']:,} training images in {s['pretrain_seconds']:.0f} s "
            f"(final loss {s['pretrain_final_loss']:.3f}); probes: best of {len(LRS)} learning rates, "
            f"{s['probe_epochs']} epochs; fine-tuning: {s['finetune_epochs']:g} epochs (\"after each epoch\": validation "
            f"top-1, mean over seeds); seeds {s['seeds']} for every row. "
            f"Test top-1 on {s['test_images']:,} images; {s['threads']} threads. A time of \"—\" marks rows reused "
            f"from an earlier run of the same command.\n\n" + table(s))

