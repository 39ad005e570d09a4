"""HieraDet (SAM 2's Hiera) in every task, through ``hieralab.cli.main``: finetune from scratch, from a Hiera MAE run
(converted, as SAM 2 started its trunk) and from a SAM 2-format file; linprobe, extract, detect and segment (SAM 2's
top-down neck by default), export. ``sam2_hiera_mini_32`` is the demo's ``hiera_mini_32`` in SAM 2's layout, at full
size (64 / 128 / 256 wide, 5 blocks): tiny images keep every run to a few seconds."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from conftest import draw_images, randomize_
from safetensors.torch import load_file

import hieralab
from hieralab.cli import main
from hieralab.engine import encoder
from hieralab.layers.necks import FPN, SimpleFeaturePyramid, TopDownNeck
from hieralab.models.dense import DenseBackbone
from hieralab.models.hieradet import SAM2_TRUNK

MODEL = "sam2_hiera_mini_32"
FMNIST = Path(os.environ.get("HIERALAB_FASHION_MNIST", "/usr/share/datasets/fashion-mnist"))
needs_fmnist = pytest.mark.skipif(not (FMNIST / "train-images-idx3-ubyte.gz").exists(),
                                  reason="Fashion-MNIST is not installed (make data)")


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    return draw_images(tmp_path_factory.mktemp("labelled"), n=32)


@pytest.fixture(scope="module")
def mae_run(tmp_path_factory, images) -> Path:
    """A two-step ``mae_hiera_mini_32`` pretrain run (the demo's preset, its widths) on the drawn images."""
    out = tmp_path_factory.mktemp("mae") / "run"
    assert main(["pretrain", f"data.source={images}", "data.num_workers=0", "optim.batch_size=8", "max_steps=2",
                 "recon_images=0", "knn_every=0", f"out_dir={out}"]) == 0
    return out


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    if not (FMNIST / "train-images-idx3-ubyte.gz").exists():
        pytest.skip("Fashion-MNIST is not installed (make data)")
    from hieralab.data.scenes import ensure_scenes

    return ensure_scenes(tmp_path_factory.mktemp("scenes") / "s", train=8, val=4, seed=0)


def finetune_args(out: Path, images: Path, *extra: str) -> list[str]:
    return ["finetune", f"model={MODEL}", f"data.source={images}", "data.num_workers=0", "data.img_size=32",
            "optim.batch_size=8", f"out_dir={out}", "epochs=1", "val_fraction=0.25", *extra]


def saved(run: Path) -> dict:
    return json.loads((run / "last" / "config.json").read_text())


# ---------------------------------------------------------------- the start-up: a Hiera MAE run into a HieraDet
def test_the_mini_hieradet_has_the_mini_hieras_widths_and_a_hiera_mae_run_converts_into_it(mae_run):
    """``init=<mae_hiera_mini_32 run>`` for ``sam2_hiera_mini_32`` goes through the one encoder start-up and the
    Hiera -> HieraDet conversion: the blocks are the MAE encoder's tensors, the background table is Hiera's 16x16
    table (window table zero), and at 32 px the HieraDet computes what the Hiera does."""
    start = encoder.plan(MODEL, {}, str(mae_run), data_channels=3, source="x", num_classes=10)
    assert start.init == mae_run / "encoder" and start.in_chans == 3
    det = start.build().eval()
    hiera = hieralab.create_model("hiera_mini_32", num_classes=10, checkpoint=str(mae_run / "encoder")).eval()
    ours, theirs = det.state_dict(), hiera.state_dict()
    shared = [k for k in theirs if k.startswith(("blocks.", "patch_embed."))]
    assert len(shared) > 40 and all(torch.equal(ours[k], theirs[k]) for k in shared)
    mae_sd = hieralab.from_pretrained(mae_run / "model").encoder.state_dict()
    assert torch.equal(ours["blocks.3.attn.qkv.weight"], mae_sd["blocks.3.attn.qkv.weight"])  # the MAE's tensor
    assert torch.equal(ours["pos_embed"].movedim(1, -1).flatten(1, 2), theirs["pos_embed"])
    assert not ours["pos_embed_window"].any()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        for a, b in zip(det.forward_intermediates(x, intermediates_only=True),
                        hiera.forward_intermediates(x, intermediates_only=True), strict=True):
            assert a.shape == b.shape
            torch.testing.assert_close(a, b, rtol=0, atol=1e-5 * b.abs().max().item())


def test_neck_auto_is_sam2s_top_down_neck_for_hieradet_fpn_for_hiera_simple_for_vit():
    assert isinstance(DenseBackbone(hieralab.create_model(MODEL, num_classes=0)).neck, TopDownNeck)
    assert isinstance(DenseBackbone(hieralab.create_model("hiera_mini_32", num_classes=0)).neck, FPN)
    assert isinstance(DenseBackbone(hieralab.create_model("vit_mini_patch4_32", num_classes=0)).neck,
                      SimpleFeaturePyramid)
    assert isinstance(DenseBackbone(hieralab.create_model(MODEL, num_classes=0), neck="fpn").neck, FPN)


# ---------------------------------------------------------------- the commands
def test_finetune_from_scratch_and_export(images, tmp_path, capsys):
    run = tmp_path / "ft"
    assert main(finetune_args(run, images, "max_steps=2")) == 0
    assert "best top-1" in capsys.readouterr().out
    assert saved(run)["model_name"] == MODEL and saved(run)["architecture"] == "HieraDet"
    # HieraDet's config has no input size (SAM 2 takes any multiple of 32 px), so export would trace at 224 px
    assert main(["export", str(run), "--out", str(tmp_path / "m.pt2"), "--img-size", "32"]) == 0
    program = torch.export.load(str(tmp_path / "m.pt2"))
    model = hieralab.from_pretrained(run / "last").eval()
    x = torch.randn(1, model.in_chans, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(program.module()(x), model(x), rtol=0, atol=1e-4)


def test_finetune_linprobe_and_extract_from_a_hiera_mae_run(mae_run, images, tmp_path, capsys):
    run = tmp_path / "ft"
    assert main(finetune_args(run, images, f"init={mae_run}", "max_steps=1")) == 0
    assert saved(run)["model_name"] == MODEL
    assert main(["linprobe", f"model={MODEL}", f"init={mae_run}", f"data.source={images}", "data.num_workers=0",
                 "lrs=[0.1]", "epochs=1", "batch_size=8", "val_fraction=0.25", f"out_dir={tmp_path / 'probe'}"]) == 0
    assert json.loads((tmp_path / "probe" / "linprobe.json").read_text())["feature_dim"] == 256
    common = ["extract", "--model", MODEL, "--init", str(mae_run), "--data", str(images), "--img-size", "32"]
    assert main([*common, "--out", str(tmp_path / "f.safetensors")]) == 0
    assert load_file(str(tmp_path / "f.safetensors"))["features"].shape == (32, 256)
    assert main([*common, "--stages", "--out", str(tmp_path / "s.safetensors")]) == 0
    stages = load_file(str(tmp_path / "s.safetensors"))
    assert [stages[f"stage{i}"].shape[1:] for i in range(3)] == [(64, 16, 16), (128, 8, 8), (256, 4, 4)]


def test_finetune_from_a_sam2_file(images, tmp_path):
    """A file in SAM 2's release layout (``{"model": {"image_encoder.trunk.*": ...}}``, MLP as ``mlp.layers.0/1``,
    no final norm) starts a fine-tuning run, and its tensors are what the encoder starts from."""
    trunk = randomize_(hieralab.create_model(MODEL, num_classes=0))
    sd = {SAM2_TRUNK + k.replace(".mlp.fc1.", ".mlp.layers.0.").replace(".mlp.fc2.", ".mlp.layers.1."): v
          for k, v in trunk.state_dict().items() if not k.startswith(("norm.", "head."))}
    sd["image_encoder.neck.convs.0.conv.weight"] = torch.zeros(256, 256, 1, 1)  # the rest of SAM 2: ignored
    torch.save({"model": sd}, tmp_path / "sam2_mini.pt")
    start = encoder.plan(MODEL, {}, str(tmp_path / "sam2_mini.pt"), data_channels=3, source="x", num_classes=2)
    model = start.build()
    assert torch.equal(model.blocks[2].mlp.fc2.weight, trunk.blocks[2].mlp.fc2.weight)
    assert torch.equal(model.pos_embed_window, trunk.pos_embed_window)
    run = tmp_path / "ft"
    assert main(finetune_args(run, images, f"init={tmp_path / 'sam2_mini.pt'}", "max_steps=1")) == 0
    assert json.loads((run / "summary.json").read_text())["steps"] == 1


@needs_fmnist
@pytest.mark.parametrize("task", ["detect", "segment"])
def test_detect_and_segment_on_the_top_down_neck(task, scenes, mae_run, tmp_path):
    run = tmp_path / task
    head = ["box_head_dim=16", "mask_head_layers=[16]"] if task == "detect" else ["head_width=16"]
    assert main([task, f"model={MODEL}", f"init={mae_run}", f"data.scenes_root={scenes}", "data.scenes_train=8",
                 "data.scenes_val=4", "data.num_workers=0", "optim.batch_size=4", "neck_channels=16", "pictures=0",
                 "max_steps=1", "data.img_size=64", f"out_dir={run}", *head]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["images"] == 4
    model = hieralab.from_pretrained(run / "model")
    assert isinstance(model.backbone.neck, TopDownNeck) and type(model.encoder).__name__ == "HieraDet"
