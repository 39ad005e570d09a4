"""``hieralab pretrain``: MAE pretraining of any ``mae_*`` model on Fashion-MNIST, an image folder or clips.

The task builds the MAE, the data (crops, flips and a mask per sample) and the step's forward (the MAE loss), and
hands them to the shared :class:`~hieralab.engine.trainer.Trainer`, which owns the run folder, resume,
checkpoints, logs and processes. At the end it writes the MAE (``model/``), its encoder alone for fine-tuning
(``encoder/``) and reconstruction pictures.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import files, seeds
from ..config import PretrainConfig
from ..data import catalog
from ..data.geometry import Geometry, takes_clips
from ..data.pipeline import SeededSamples, build_dataset, check_repeat_aug, data_channels, item_labels, \
    spread_over_classes
from ..data.transforms import mae_train_transform
from ..data.video import video_train_transform
from ..engine import distributed
from ..engine.artifacts import check_model
from ..engine.encoder import NORMALISATION, decide_channels
from ..engine.evaluate import dataset_features, knn_top1
from ..engine.task import Task
from ..engine.trainer import Curve, Trainer, optim_job
from ..errors import ConfigError
from ..models.checkpoint import save_pretrained
from ..models.factory import create_model
from ..viz.reconstructions import reconstruct_source

log = logging.getLogger(__name__)


def unit_count(model: nn.Module, geometry: Geometry) -> int:
    """The mask units of one input of ``geometry``; a one-line error for sizes that do not divide into them."""
    return math.prod(model.num_units(torch.empty(1, *geometry.shape, device="meta")))


def run(cfg: PretrainConfig, *, resume: bool = False, **options: Any) -> dict[str, Any]:
    """Train (or continue, with ``resume``); returns the summary. ``options``: ``overwrite``, ``accept_changes``
    (see :class:`~hieralab.engine.trainer.Trainer`)."""
    check_model(cfg.model, cfg.model_args, mae=True)
    with Trainer(cfg, task="pretrain", resume=resume, **options) as trainer:
        d, o = cfg.data, cfg.optim
        video = takes_clips(cfg.model, cfg.model_args)
        dataset, mean, std, _ = build_dataset(d.source, d.split, d.limit, video=video)
        mean, std = d.mean or mean, d.std or std
        channels = decide_channels(cfg.model_args.get("in_chans"), None, data_channels(dataset), d.source)
        torch.manual_seed(seeds.seed_int(cfg.seed, "init"))  # the initial weights
        model = create_model(cfg.model, **{**cfg.model_args, "in_chans": channels}).to(trainer.device)
        mask_ratio = model.mask_ratio if cfg.mask_ratio is None else cfg.mask_ratio
        if not 0 < mask_ratio < 1:
            raise ConfigError([f"mask_ratio={mask_ratio!r} (the model's): must be in (0, 1); at 0 nothing is hidden "
                               "and the MAE loss is 0"])
        geometry = Geometry.of(model.encoder, d.img_size, num_frames=d.num_frames, frame_stride=d.frame_stride)
        num_units = unit_count(model, geometry)
        repeats = check_repeat_aug(d, video)
        if video:
            transform = video_train_transform(geometry.num_frames, d.frame_stride, d.img_size, mean, std,
                                              scale=d.crop_scale, hflip=d.hflip, repeats=repeats,
                                              decoder=d.video_decoder)
        else:
            transform = mae_train_transform(d.img_size, mean, std, scale=d.crop_scale, hflip=d.hflip,
                                            channels=channels)
        samples = SeededSamples(dataset, transform, seed=cfg.seed, num_units=num_units, mask_ratio=mask_ratio,
                                repeats=repeats, shuffle_buffer=d.shuffle_buffer)
        log.info("%s: %d %s of %s, %d channels, mask %.2f of %d units", cfg.model, len(dataset),
                 "videos" if video else "images", d.source, channels, mask_ratio, num_units)

        train_model = trainer.wrap(model)  # checkpointed / DDP or sharded / compiled; the optimizer comes after

        def forward(batch: dict[str, Any], step: int, k: int) -> torch.Tensor:
            x, visible = batch["x"].to(trainer.device, non_blocking=True), batch["visible"].to(trainer.device)
            return train_model(x, visible).loss

        probe = knn_probe(cfg, dataset, geometry.eval_transform(mean, std, decoder=d.video_decoder), trainer.device,
                          sharded=trainer.sharded)

        def after_step(step: int) -> dict[str, Any]:
            if probe is None or not probe_due(step, trainer.schedule.stop, trainer.schedule.total, cfg.knn_every):
                return {}
            top1 = probe(model.encoder) if trainer.dist.is_main else None
            distributed.barrier()
            return {"knn_top1": top1} if top1 is not None else {}

        job = optim_job(o, model, samples, forward, recipe_lr=PretrainConfig().optim.base_lr,
                        num_workers=d.num_workers, clips_per_sample=repeats, after_step=after_step)
        probe_title = (f"online k-NN probe of the encoder (k={cfg.knn_k}, {cfg.knn_bank} labelled images vote for "
                       f"{cfg.knn_queries} others)")
        return trainer.fit(job, outputs=lambda run_dir: _outputs(cfg, trainer.final(model), run_dir, geometry,
                                                                  (mean, std)),
                           curve=Curve("loss_curve.png", f"MAE pretraining of {cfg.model}", extra=("knn_top1",),
                                       extra_title=probe_title))


def probe_due(step: int, stop: int, total: int, every: int | None, probes: int = 4) -> bool:
    """Whether the online probe runs after ``step``: after the first step, every ``every`` steps (None: ``probes``
    times over the ``total``) and after the last (``stop``), skipping a periodic probe within half a period of it."""
    every = every if every is not None else max(1, total // probes)
    return step == 1 or step == stop or (step % every == 0 and 2 * (stop - step) >= every)


def knn_probe(cfg: PretrainConfig, dataset, transform, device: torch.device, *, sharded: bool = False):
    """``encoder -> k-NN top-1 (%)`` on a fixed labelled subset of the data, or None when the data has no labels
    (or ``knn_every=0``): ``knn_bank`` training images spread over the classes vote (weighted k-NN on the pooled
    features, as ``eval --knn``) for ``knn_queries`` others (Fashion-MNIST: test images)."""
    if cfg.knn_every == 0:
        return None
    if sharded:
        log.info("online k-NN probe: off under parallel=fsdp (it runs on the main process alone)")
        return None
    labels = item_labels(dataset)
    classes = sorted({label for label in labels if label >= 0})
    if len(classes) < 2:
        log.info("online k-NN probe: off (the data has no class labels)")
        return None
    order = spread_over_classes(labels, cfg.knn_bank + cfg.knn_queries)
    bank = torch.utils.data.Subset(dataset, order[:cfg.knn_bank])
    if (entry := catalog.builtin(cfg.data.source)) is not None:  # a built-in: queries from its held-out split
        test, _, _, _ = build_dataset(cfg.data.source, entry.held_out)
        queries = torch.utils.data.Subset(test, spread_over_classes(item_labels(test), cfg.knn_queries))
    else:
        queries = torch.utils.data.Subset(dataset, order[cfg.knn_bank:])
    if len(queries) == 0:
        log.info("online k-NN probe: off (%d labelled items, all in its bank of %d)", len(bank), cfg.knn_bank)
        return None
    log.info("online k-NN probe: %d labelled items vote for %d (k=%d)", len(bank), len(queries), cfg.knn_k)

    def probe(encoder: nn.Module) -> float:
        train_x, train_y = dataset_features(encoder, bank, transform, device=device)
        query_x, query_y = dataset_features(encoder, queries, transform, device=device)
        return round(knn_top1(train_x, train_y, query_x, query_y, num_classes=max(classes) + 1, k=cfg.knn_k), 2)

    return probe


def _outputs(cfg: PretrainConfig, model: nn.Module, run_dir: Path, geometry: Geometry, stats) -> dict[str, str]:
    """Final weights (the MAE, and the encoder alone for fine-tuning, with the mean and std it was pretrained with)
    and reconstructions."""
    model.model_name = cfg.model
    model.save_pretrained(run_dir / "model")
    enc = model.export_encoder(cfg.model.removeprefix("mae_"))
    save_pretrained(enc, run_dir / "encoder", extra={NORMALISATION: {"mean": list(stats[0]), "std": list(stats[1])}})
    out = {"model": str(run_dir / "model"), "encoder": str(run_dir / "encoder")}
    if cfg.recon_images > 0:
        d = cfg.data
        with files.output_folder(run_dir / "reconstructions", overwrite=True, command="pretrain") as work:
            reconstruct_source(model, d.source, catalog.held_out_split(d.source, d.split), work, geometry,
                               num=cfg.recon_images, generator=seeds.generator(cfg.seed, "recon"))
        out["reconstructions"] = str(run_dir / "reconstructions")
    return out


def report(cfg: PretrainConfig, s: dict[str, Any]) -> list[str]:
    """The lines a finished pretraining run prints."""
    return [f"pretrained {cfg.model} for {s['steps']} steps in {s['seconds']:.0f} s ({s['images_per_s']:.0f} images/s)"
            f", final loss {s['final_loss']:.4f}"
            + (f" (running mean {s['loss_running_mean']:.4f})" if s.get("loss_running_mean") else ""),
            *(f"  {key:16s} {s[key]}" for key in ("model", "encoder", "curve", "reconstructions") if key in s)]


TASK = Task(
    name="pretrain", config=PretrainConfig, run=run, report=report, default_preset="mae_hiera_fmnist",
    help="MAE-pretrain a mae_* model on Fashion-MNIST, a folder of images or clips",
    description="Defaults <- --preset <- key=value overrides; the resolved config is written to <out_dir>/config.yaml. "
                "Multi-process: torchrun --nproc_per_node N -m hieralab.cli pretrain ...",
    example="data.source=~/photos optim.batch_size=32 epochs=5 out_dir=runs/mine")
