"""``hieralab linprobe``: a linear classifier on a frozen encoder, as MAE evaluates it.

The features are computed once (no augmentation) and every learning rate in ``lrs`` trains its own head in the same
pass over them, as DINOv2's linear evaluation does; the best on the validation split is reported. Each head is
MAE's: BatchNorm without affine (shared, it has no parameters) then a Linear initialised with std 0.01, trained by
SGD (momentum 0.9) with a cosine schedule. Writes ``linprobe.json`` (accuracy per lr), ``linprobe.png`` and
``head.safetensors`` (the BatchNorm statistics and the best head).
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from ..config import LinprobeConfig, to_dict
from ..data.pipeline import labelled_splits
from ..data.transforms import eval_transform
from ..engine.loop import pick_device
from ..mae.masking import seeded_generator
from ..engine.run_log import save_figure
from ..models.checkpoint import atomic_write
from .features import dataset_features, load_encoder

log = logging.getLogger(__name__)


class ProbeHeads(nn.Module):
    """``BatchNorm1d(affine=False)`` then one Linear per learning rate: ``[B, C] -> [heads, B, classes]``."""

    def __init__(self, dim: int, num_classes: int, heads: int):
        super().__init__()
        self.bn = nn.BatchNorm1d(dim, affine=False, eps=1e-6)
        self.heads = nn.ModuleList(nn.Linear(dim, num_classes) for _ in range(heads))
        for head in self.heads:  # MAE's probe head init
            nn.init.trunc_normal_(head.weight, std=0.01)
            nn.init.zeros_(head.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn(x)  # [B, C]
        return torch.stack([head(x) for head in self.heads])  # [heads, B, classes]


def train_probes(train_x: torch.Tensor, train_y: torch.Tensor, val_x: torch.Tensor, val_y: torch.Tensor, *,
                 num_classes: int, lrs: list[float], epochs: int, batch_size: int, weight_decay: float = 0.0,
                 seed: int = 0) -> tuple[ProbeHeads, list[float]]:
    """Train one head per lr (scaled by batch / 256, cosine to 0) on cached features, in one pass; returns the heads
    and each head's validation top-1 (%)."""
    torch.manual_seed(seed)
    probes = ProbeHeads(train_x.shape[1], num_classes, len(lrs))
    peak = [lr * batch_size / 256 for lr in lrs]
    opt = torch.optim.SGD([{"params": h.parameters(), "lr": lr} for h, lr in zip(probes.heads, peak)],
                          momentum=0.9, weight_decay=weight_decay)
    steps_per_epoch = max(1, len(train_x) // batch_size)
    total = epochs * steps_per_epoch
    g = seeded_generator(seed, 0)
    step = 0
    probes.train()
    for _ in range(epochs):
        order = torch.randperm(len(train_x), generator=g)
        for i in range(steps_per_epoch):
            idx = order[i * batch_size:(i + 1) * batch_size]
            logits = probes(train_x[idx])  # [H, B, K]
            # the sum over heads: each head's gradient is its own loss's
            loss = F.cross_entropy(logits.flatten(0, 1), train_y[idx].repeat(len(lrs)), reduction="sum") / len(idx)
            for group, lr in zip(opt.param_groups, peak):
                group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / total))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
    probes.eval()
    with torch.no_grad():
        pred = probes(val_x).argmax(-1)  # [H, N]
    return probes, (100 * (pred == val_y).float().mean(1)).tolist()


def plot_probe(lrs: list[float], accs: list[float], path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.4), dpi=120)
    ax.semilogx(lrs, accs, marker="o")
    ax.set_xlabel("learning rate (at batch 256)")
    ax.set_ylabel("validation top-1 (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    return save_figure(fig, path)


def run(cfg: LinprobeConfig) -> dict[str, Any]:
    """Features, heads, and the summary (accuracy per lr, the best)."""
    device = pick_device(cfg.device)
    train_set, val_set, classes, mean, std = labelled_splits(cfg.data, cfg.val_source, cfg.val_fraction)
    torch.manual_seed(cfg.seed)  # a random-init encoder is drawn from the seed
    encoder = load_encoder(cfg.model, cfg.init, **cfg.model_args).to(device)
    tf = eval_transform(cfg.data.img_size, mean, std, channels=encoder.in_chans)
    train_x, train_y = dataset_features(encoder, train_set, tf, device=device, desc="features (train)")
    val_x, val_y = dataset_features(encoder, val_set, tf, device=device, desc="features (val)")
    lrs = list(cfg.lrs)
    heads, accs = train_probes(train_x.cpu(), train_y, val_x.cpu(), val_y, num_classes=len(classes), lrs=lrs,
                               epochs=cfg.epochs, batch_size=cfg.batch_size, weight_decay=cfg.weight_decay,
                               seed=cfg.seed)
    best = max(range(len(lrs)), key=lambda i: accs[i])
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = {"model": cfg.model, "init": cfg.init, "feature_dim": train_x.shape[1], "train": len(train_y),
               "val": len(val_y), "top1_per_lr": dict(zip(map(str, lrs), accs)), "best_lr": lrs[best],
               "best_top1": accs[best], "config": to_dict(cfg)}
    tensors = {"bn.running_mean": heads.bn.running_mean, "bn.running_var": heads.bn.running_var,
               "head.weight": heads.heads[best].weight.detach(), "head.bias": heads.heads[best].bias.detach()}
    atomic_write(out / "head.safetensors", lambda p: save_file(tensors, p))
    atomic_write(out / "linprobe.json", lambda p: Path(p).write_text(json.dumps(summary, indent=2) + "\n"))
    plot_probe(lrs, accs, out / "linprobe.png", f"linear probe: {cfg.model}" + (" (random init)" if not cfg.init
                                                                                 else ""))
    log.info("linear probe of %s: best top-1 %.2f %% at lr %g", cfg.model, accs[best], lrs[best])
    return summary
