"""``hieralab study``: does MAE pretraining help, at a size this machine can run?

On Fashion-MNIST, with one encoder and one budget, six rows: linear probes on (a) raw pixels, (b) a random-init
encoder and (c) the MAE-pretrained encoder (each over several seeds: the probe's init and order, and for (b) the
encoder's init), then (d) supervised training from scratch, (e) fine-tuning the MAE encoder and (f) fine-tuning
only its last k blocks (each over the same seeds: the head's init and the data order). Writes ``study.json``,
``study.md`` (the table, with the command and the time each row took) and ``study.png``; every stage is a normal run
folder under ``out_dir`` and is reused when it is complete.
"""

from __future__ import annotations

import json
import logging
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from ..config import DataConfig, FinetuneConfig, PretrainConfig, load_config
from ..data.pipeline import labelled_splits
from ..data.transforms import eval_transform
from ..engine.run_log import save_figure
from ..models.checkpoint import atomic_write
from . import finetune, pretrain
from .evaluate import predict_logits
from .features import dataset_features, load_encoder
from .linprobe import train_probes

log = logging.getLogger(__name__)
LRS = [0.01, 0.03, 0.1, 0.3, 1.0, 3.0]


def _probe_rows(name: str, feats: dict[int, tuple], labels: tuple, seeds: Sequence[int], epochs: int,
                num_classes: int) -> dict[str, Any]:
    """Best-lr validation top-1 of a probe per seed; ``feats[seed] = (train_x, val_x)``."""
    accs, seconds = [], 0.0
    for seed in seeds:
        t0 = time.perf_counter()
        train_x, val_x = feats[seed]
        _, per_lr = train_probes(train_x, labels[0], val_x, labels[1], num_classes=num_classes, lrs=LRS,
                                 epochs=epochs, batch_size=256, seed=seed)
        accs.append(max(per_lr))
        seconds += time.perf_counter() - t0
        log.info("study: %s seed %d: %.2f %%", name, seed, accs[-1])
    return {"row": name, "top1": accs, "seconds": round(seconds, 1)}


def _finetune_row(name: str, run_dir: Path, overrides: list[str], seeds: Sequence[int]) -> dict[str, Any]:
    """One fine-tuning run per seed (the head's init and the data order; seed 0 in ``run_dir``, seed k in
    ``run_dir_seed<k>``); complete runs are reused. ``per_eval``: the seeds' mean validation top-1 per epoch."""
    top1, seconds, curves = [], 0.0, []
    for seed in seeds:
        out = run_dir if seed == 0 else run_dir.with_name(f"{run_dir.name}_seed{seed}")
        if not (out / "summary.json").exists():
            finetune.run(load_config(FinetuneConfig, None, [*overrides, f"seed={seed}", f"out_dir={out}"]),
                         resume=True)
        s = json.loads((out / "summary.json").read_text())
        top1.append(s["last_top1"])
        seconds += s["seconds"]
        curves.append(validation_curve(out / "log.csv"))
        log.info("study: %s seed %d: %.2f %%", name, seed, top1[-1])
    per_eval = [round(statistics.mean(v), 2) for v in zip(*curves)]
    return {"row": name, "top1": top1, "seconds": round(seconds, 1), "per_eval": per_eval}


def validation_curve(log_csv: Path) -> list[float]:
    """The validation top-1 of each evaluation in a run's ``log.csv`` (once per epoch by default)."""
    import csv

    with open(log_csv, newline="") as f:
        return [round(float(r["val_top1"]), 2) for r in csv.DictReader(f) if r.get("val_top1")]


def plot(rows: list[dict[str, Any]], path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 3.6), dpi=120)
    means = [statistics.mean(r["top1"]) for r in rows]
    errs = [statistics.stdev(r["top1"]) if len(r["top1"]) > 1 else 0 for r in rows]
    colors = ["tab:gray", "tab:red", "tab:blue", "tab:red", "tab:blue", "tab:blue"]
    ax.barh(range(len(rows)), means, xerr=errs, color=colors[:len(rows)], capsize=3)
    ax.set_yticks(range(len(rows)), [r["row"] for r in rows])
    ax.invert_yaxis()
    lo = min(m - e for m, e in zip(means, errs))
    ax.set_xlim(max(0, lo - 5), 100)
    for i, (m, e) in enumerate(zip(means, errs)):
        ax.text(m + e + 0.3, i, f"{m:.2f}" + (f" ± {e:.2f}" if e else ""), va="center", fontsize=8)
    ax.set_xlabel("Fashion-MNIST test top-1 (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(axis="x", alpha=0.3)
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
    pre_cfg = yaml.safe_load((mae_dir / "config.yaml").read_text())
    model_args = finetune.saved_config(mae_dir / "encoder", encoder)  # the pretrained architecture, for every row
    if not model_args:
        raise ValueError(f"{mae_dir}/encoder does not hold {encoder}; use the preset of mae_{encoder}")
    args = [f"model={encoder}", *(f"model_args.{k}={json.dumps(v)}" for k, v in model_args.items()), *data]

    train_set, val_set, classes, mean, std = labelled_splits(DataConfig(limit=limit))
    tf = eval_transform(32, mean, std, channels=model_args.get("in_chans", 3))
    probes_path = out / "probes.json"  # the probe rows, reused when the study is run again
    if probes_path.exists():
        rows = json.loads(probes_path.read_text())
    else:
        rows = _probe_study(encoder, model_args, train_set, val_set, tf, mae_dir, seeds, probe_epochs, len(classes))
        atomic_write(probes_path, lambda p: Path(p).write_text(json.dumps(rows, indent=2) + "\n"))
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
    summary = {"encoder": encoder, "preset": preset, "pretrain_epochs": pretrain_epochs,
               "pretrain_seconds": pre["seconds"], "pretrain_final_loss": pre["final_loss"],
               "finetune_epochs": finetune_epochs, "seeds": list(seeds), "probe_epochs": probe_epochs,
               "train_images": len(train_set), "test_images": len(val_set), "rows": rows,
               "total_seconds": round(time.perf_counter() - t0, 1), "threads": torch.get_num_threads()}
    atomic_write(out / "study.json", lambda p: Path(p).write_text(json.dumps(summary, indent=2) + "\n"))
    (out / "study.md").write_text(report(summary))
    plot(rows, out / "study.png", f"{encoder}, Fashion-MNIST, MAE {pretrain_epochs:g} epochs")
    return summary


def _probe_study(encoder, model_args, train_set, val_set, tf, mae_dir, seeds, probe_epochs, K) -> list[dict]:
    """Rows (a)-(c): linear probes on pixels, random-init encoders (one per seed) and the MAE encoder."""
    t_feat = time.perf_counter()
    pixels_train, train_y = predict_logits(nn.Flatten(), train_set, tf, desc="pixels (train)")
    pixels_val, val_y = predict_logits(nn.Flatten(), val_set, tf, desc="pixels (val)")
    pixel_s = time.perf_counter() - t_feat

    def features(init: str | None, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        torch.manual_seed(seed)
        enc = load_encoder(encoder, init, **model_args)
        return (dataset_features(enc, train_set, tf, desc=f"features (train, seed {seed})")[0],
                dataset_features(enc, val_set, tf, desc=f"features (val, seed {seed})")[0])

    t_feat = time.perf_counter()
    mae_feats = features(str(mae_dir), 0)
    mae_s = time.perf_counter() - t_feat
    t_feat = time.perf_counter()
    random_feats = {seed: features(None, seed) for seed in seeds}
    random_s = time.perf_counter() - t_feat
    labels = (train_y, val_y)
    rows = [
        _probe_rows("(a) linear probe, raw pixels", {s: (pixels_train, pixels_val) for s in seeds}, labels, seeds,
                    probe_epochs, K),
        _probe_rows("(b) linear probe, random-init encoder", random_feats, labels, seeds, probe_epochs, K),
        _probe_rows("(c) linear probe, MAE encoder", {s: mae_feats for s in seeds}, labels, seeds, probe_epochs, K),
    ]
    rows[0]["seconds"] += round(pixel_s, 1)
    rows[1]["seconds"] += round(random_s, 1)
    rows[2]["seconds"] += round(mae_s, 1)
    return rows


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

