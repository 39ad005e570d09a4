"""The paper recipes as presets: one for MAE pretraining and one for fine-tuning of every official size, images on
IN-1K and video on K400. Each loads with its task's config, builds its model on the meta device (no memory) and
resolves its schedule at the paper's global batch, where it must give the paper's learning rate; and every
hyperparameter line names its source."""

import re

import pytest
import torch

import hieralab
from hieralab.cli import main
from hieralab.config import FinetuneConfig, PretrainConfig, load_config, preset_names, preset_summary
from hieralab.config.schema import PRESETS
from hieralab.engine.schedule import Schedule

IMAGE_SIZES = ("tiny", "small", "base", "base_plus", "large", "huge")
VIDEO_SIZES = ("base", "base_plus", "large", "huge")
IN1K, K400 = 1_281_167, 241_258  # training images / videos
PROCESSES = 8  # the presets' per-process batches are written for 8 processes

# The paper's global batch and (absolute) lr at it: Hiera Tab. 14 (IN-1K) and Tab. 11 (K400, clips per step)
PAPER = {
    **{f"mae_hiera_{s}_in1k": (4096, 8e-4, 1600) for s in IMAGE_SIZES},
    **{f"finetune_hiera_{s}_in1k": (1024, 2e-3 if s in ("tiny", "small", "base") else 1e-3,
                                    {"tiny": 300, "small": 200, "base": 100, "base_plus": 100}.get(s, 50))
       for s in IMAGE_SIZES},
    **{f"mae_hiera_{s}_k400": (512, 3.2e-4 if s == "huge" else 8e-4, 3200) for s in VIDEO_SIZES},
    **{f"finetune_hiera_{s}_k400": (256, 4e-4 if s == "huge" else 8e-4, 150 if s in ("base", "base_plus") else 100)
       for s in VIDEO_SIZES},
}


def config_of(name: str):
    cls = PretrainConfig if name.startswith("mae_") else FinetuneConfig
    return load_config(cls, name, [])


def test_every_size_has_both_recipes():
    assert set(PAPER) <= set(preset_names())


@pytest.mark.parametrize("name", sorted(PAPER))
def test_a_recipe_builds_and_gives_the_papers_lr_at_its_batch(name):
    cfg = config_of(name)
    video = name.endswith("_k400")
    with torch.device("meta"):
        model = hieralab.create_model(cfg.model, **cfg.model_args)  # the whole model, no memory
    assert sum(p.numel() for p in model.parameters()) > 20e6
    clips = cfg.data.repeat_aug
    schedule = Schedule.build(samples=K400 if video else IN1K, batch_size=cfg.optim.batch_size,
                              accum_steps=cfg.optim.accum_steps, world=PROCESSES, epochs=cfg.epochs,
                              max_steps=cfg.max_steps, base_lr=cfg.optim.base_lr, warmup_epochs=cfg.optim.warmup_epochs,
                              min_lr=cfg.optim.min_lr, clips_per_sample=clips)
    batch, lr, effective_epochs = PAPER[name]
    assert cfg.optim.batch_size * cfg.optim.accum_steps * PROCESSES * clips == batch
    assert schedule.lr == pytest.approx(lr)
    assert cfg.epochs * clips == effective_epochs  # K400's epochs are effective: passes x repeated samples
    assert schedule.total == pytest.approx(cfg.epochs * schedule.per_epoch, abs=1)
    assert 0 < schedule.warmup < schedule.total
    if name.startswith("mae_"):
        assert cfg.mask_ratio == (0.9 if video else 0.6)
    else:
        assert (cfg.aug.mixup, cfg.aug.cutmix, cfg.aug.smoothing) == (0.8, 1.0, 0.1)
        # RandAug (9, 0.5) on images (Tab. 14), (7, 0.5) on clips (Tab. 11b); erasing 0.25 (MAE / MAE-ST code)
        randaug = "rand-m7-mstd0.5-inc1-mmax9" if video else "rand-m9-mstd0.5-inc1-mmax9"
        assert (cfg.aug.randaug, cfg.aug.reprob) == (randaug, 0.25)
        assert cfg.init == f"runs/{name.replace('finetune_', 'mae_')}"


@pytest.mark.parametrize("name", sorted(PAPER))
def test_every_recipe_value_names_its_source(name):
    """A hyperparameter line carries a comment citing the table (or the code it falls back to)."""
    keys = ("base_lr", "weight_decay", "betas", "warmup_epochs", "epochs", "mask_ratio", "drop_path", "layer_decay",
            "mixup", "cutmix", "smoothing", "repeat_aug", "clip_grad", "head_dropout", "min_lr", "crop_scale",
            "randaug", "reprob")
    for line in (PRESETS / f"{name}.yaml").read_text().splitlines():
        key = line.strip().split(":")[0]
        if key in keys:
            assert re.search(r"#.*(Tab\. \d+|MAE|not in the table|code|recipe)", line), line


def test_presets_lists_every_preset_with_its_task(capsys):
    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    for name in preset_names():
        task, summary = preset_summary(name)
        assert re.search(rf"^{name}\s+{task}\s+", out, re.M), name
        assert summary and summary in out
    assert preset_summary("mae_hiera_large_in1k")[0] == "pretrain"
    assert "1600 epochs" in preset_summary("mae_hiera_large_in1k")[1]
