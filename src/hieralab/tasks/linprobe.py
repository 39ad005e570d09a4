"""``hieralab linprobe``: linear classifiers on a frozen encoder, as MAE evaluates it.

The features are computed once (no augmentation) and every learning rate in ``lrs`` trains its own head in the same
pass over them, as DINOv2's linear evaluation does; the best on the validation split is reported. Each head is
MAE's: BatchNorm without affine (shared, it has no parameters) then a Linear initialised with std 0.01, trained by
SGD (momentum 0.9) with a cosine schedule. ``model=pixels`` probes the raw pixels, the baseline of the baselines.

The heads train through the shared :class:`~hieralab.engine.trainer.Trainer` (run folder, resume, checkpoints,
logs); the task writes ``linprobe.json`` (accuracy per lr), ``linprobe.png`` and ``head.safetensors`` (the
BatchNorm statistics and the best head).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from .. import files, seeds
from ..config import LinprobeConfig, to_dict
from ..data.pipeline import data_channels, labelled_splits
from ..data.transforms import eval_transform
from ..engine import encoder as encoders
from ..engine.artifacts import check_model
from ..engine.evaluate import dataset_features
from ..engine.task import Task
from ..engine.trainer import Curve, Job, Trainer
from ..viz.figures import plot_probe

log = logging.getLogger(__name__)
PIXELS = "pixels"  # model=pixels: the probe reads the normalised pixels themselves


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

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The sum over heads of each head's mean cross-entropy: each head's gradient is its own loss's."""
        logits = self(x).float()  # [H, B, K], fp32 under precision=bf16
        return F.cross_entropy(logits.flatten(0, 1), y.repeat(len(self.heads)), reduction="sum") / len(x)

    @torch.no_grad()
    def accuracy(self, x: torch.Tensor, y: torch.Tensor) -> list[float]:
        """Top-1 (%) of each head, in eval mode."""
        was = self.training
        self.eval()
        pred = self(x).argmax(-1)  # [H, N]
        self.train(was)
        return (100 * (pred == y).float().mean(1)).tolist()


class FeatureSamples(torch.utils.data.Dataset):
    """Cached features as training samples, indexed by ``(epoch, i)`` as the Trainer's sampler asks."""

    def __init__(self, features: torch.Tensor, labels: torch.Tensor):
        self.features, self.labels = features, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, Any]:
        return {"x": self.features[key[1]], "label": self.labels[key[1]]}


def run(cfg: LinprobeConfig, *, resume: bool = False, **options: Any) -> dict[str, Any]:
    """Features, heads, and the summary (accuracy per lr, the best)."""
    if cfg.model != PIXELS:
        check_model(cfg.model, cfg.model_args, mae=False)
    with Trainer(cfg, task="linprobe", resume=resume, **options) as trainer:
        train_set, val_set, classes, mean, std = labelled_splits(cfg.data, cfg.val_source, cfg.val_fraction)
        torch.manual_seed(seeds.seed_int(cfg.seed, "init"))  # a random-init encoder is drawn from the seed
        if cfg.model == PIXELS:
            encoder, channels = nn.Flatten(), data_channels(train_set)
        else:
            start = encoders.plan(cfg.model, cfg.model_args, cfg.init, data_channels=data_channels(train_set),
                                  source=cfg.data.source)
            encoder, channels = start.build(num_classes=0).eval().requires_grad_(False), start.in_chans
        encoder = encoder.to(trainer.device)
        tf = eval_transform(cfg.data.img_size, mean, std, channels=channels)
        train_x, train_y = dataset_features(encoder, train_set, tf, device=trainer.device, desc="features (train)")
        val_x, val_y = dataset_features(encoder, val_set, tf, device=trainer.device, desc="features (val)")
        return fit_probes(trainer, cfg, (train_x.cpu(), train_y), (val_x.cpu(), val_y))


def fit_probes(trainer: Trainer, cfg: LinprobeConfig, train: tuple[torch.Tensor, torch.Tensor],
               val: tuple[torch.Tensor, torch.Tensor]) -> dict[str, Any]:
    """Train one head per ``cfg.lrs`` on cached features ``(x [N, C], y [N])`` through ``trainer``; pick the best
    on ``val``; write ``linprobe.json``, ``linprobe.png`` and ``head.safetensors``. Returns the summary."""
    (train_x, train_y), (val_x, val_y) = train, val
    lrs = list(cfg.lrs)
    torch.manual_seed(seeds.seed_int(cfg.seed, "probe"))
    heads = ProbeHeads(train_x.shape[1], int(max(train_y.max(), val_y.max())) + 1, len(lrs))
    # the Trainer's lr (1 x batch / 256) times each head's lr_scale is that head's lr at this batch
    optimizer = torch.optim.SGD([{"params": h.parameters(), "lr_scale": lr} for h, lr in zip(heads.heads, lrs)],
                                lr=1.0, momentum=0.9, weight_decay=cfg.weight_decay)

    def forward(batch: dict[str, Any], step: int, k: int) -> torch.Tensor:
        return heads.loss(batch["x"], batch["label"])

    def outputs(run_dir: Path) -> dict[str, Any]:
        accs = heads.accuracy(val_x, val_y)
        best = max(range(len(lrs)), key=lambda i: accs[i])
        tensors = {"bn.running_mean": heads.bn.running_mean, "bn.running_var": heads.bn.running_var,
                   "head.weight": heads.heads[best].weight.detach(), "head.bias": heads.heads[best].bias.detach()}
        files.atomic_write(run_dir / "head.safetensors", lambda p: save_file(tensors, p))
        summary = {"model": cfg.model, "init": cfg.init, "feature_dim": train_x.shape[1], "train": len(train_y),
                   "val": len(val_y), "top1_per_lr": dict(zip(map(str, lrs), accs)), "best_lr": lrs[best],
                   "best_top1": accs[best], "config": to_dict(cfg)}
        files.write_json(run_dir / "linprobe.json", summary)
        plot_probe(lrs, accs, run_dir / "linprobe.png",
                   f"linear probe: {cfg.model}" + (" (random init)" if not cfg.init and cfg.model != PIXELS else ""))
        log.info("linear probe of %s: best top-1 %.2f %% at lr %g", cfg.model, accs[best], lrs[best])
        return {k: summary[k] for k in ("feature_dim", "train", "val", "top1_per_lr", "best_lr", "best_top1")}

    lower = "lrs=[" + ",".join(f"{lr / 10:.3g}" for lr in lrs) + "]"
    job = Job(model=heads, optimizer=optimizer, samples=FeatureSamples(train_x, train_y), forward=forward,
              batch_size=cfg.batch_size, base_lr=1.0, lower_lr=lower, guard=False)
    return trainer.fit(job, outputs=outputs, curve=Curve("curves.png", f"linear probes of {cfg.model}"))


def report(cfg: LinprobeConfig, s: dict[str, Any]) -> list[str]:
    """The lines a finished probe prints."""
    return [f"linear probe of {cfg.model} ({cfg.init or 'random init'}): best top-1 {s['best_top1']:.2f} % at lr "
            f"{s['best_lr']:g}", *(f"  lr {float(lr):<8g} {acc:.2f} %" for lr, acc in s["top1_per_lr"].items()),
            f"  wrote {cfg.out_dir}/linprobe.json, linprobe.png, head.safetensors"]


TASK = Task(name="linprobe", config=LinprobeConfig, run=run, report=report,
            help="linear probes (one per learning rate, one pass) on a frozen encoder",
            example="model=hiera_mini_32 init=runs/mae_hiera_fmnist 'lrs=[0.1,1.0]' epochs=30")
