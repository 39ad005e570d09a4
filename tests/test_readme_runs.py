"""Every command the README shows runs as written, at toy size.

``tests/test_readme.py`` checks that each command parses and names real keys; this file *runs* them, in one working
folder laid out as the README's user has it (``~/photos``, ``~/labelled``, ``~/clips``, ``shoe.png``, ``ade/``, the
AVA files, the demo's run in ``runs/mae_hiera_fmnist``), each command as the README writes it followed by the
overrides of :data:`TOY` (a later ``key=value`` or flag wins, as on the command line), in the README's order: a
command that needs an earlier one's output (``init=runs/mae_hiera_fmnist``, ``runs/finetune``, ``runs/detect``) finds
it there, so two examples writing one folder fail here as they would for a user. A command added to the README
without a line in :data:`TOY` fails :func:`test_every_readme_command_has_a_toy_run`.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import MAE_TINY, draw_images, write_clip
from PIL import Image
from test_readme import commands

from hieralab.cli import main

FMNIST = Path(os.environ.get("HIERALAB_FASHION_MNIST", "/usr/share/datasets/fashion-mnist"))
pytestmark = pytest.mark.skipif(not (FMNIST / "train-images-idx3-ubyte.gz").exists(),
                                reason="Fashion-MNIST is not installed (make data)")

QUICK = ["data.num_workers=0", "knn_every=0", "recon_images=1"]  # a pretraining run with no extras
SMALL = ["data.limit=64", "optim.batch_size=16", "data.num_workers=0"]  # a classifier run on 64 images
DENSE = ["data.scenes_train=8", "data.scenes_val=4", "data.num_workers=0", "optim.batch_size=2", "data.img_size=64",
         "neck_channels=16", "pictures=1", "max_steps=1"]
ACTIONS = ["data.actions_train=8", "data.actions_val=4", "data.img_size=32", "optim.batch_size=4", "data.num_workers=0",
           "pictures=1"]  # 12 bundled action clips
# README command -> what makes it toy-sized (appended), and the files it must leave (relative to the working folder)
TOY: dict[str, tuple[list[str], list[str]]] = {
    "hieralab list 'hiera_*_16x224'": ([], []),
    "hieralab presets": ([], []),
    "hieralab weights 'hiera_base_*'": ([], []),
    "hieralab weights download hiera_base_224.mae_in1k": ([], []),
    "hieralab bench --models 'hiera_base_*' --batch 8 --json bench.json": (
        ["--batch", "1", "--rounds", "1", "--max-gflops", "10"], ["bench.json"]),
    "hieralab pretrain --preset mae_hiera_fmnist epochs=2 optim.batch_size=64": (
        ["max_steps=2", "data.limit=64", "optim.batch_size=16", *QUICK, *MAE_TINY],
        ["runs/mae_hiera_fmnist/encoder/model.safetensors", "runs/mae_hiera_fmnist/loss_curve.png",
         "runs/mae_hiera_fmnist/reconstructions/overview.png"]),
    "hieralab pretrain data.source=~/photos data.img_size=224 model=mae_hiera_tiny_224 out_dir=runs/photos": (
        ["max_steps=1", "optim.batch_size=2", "data.img_size=64", *QUICK], ["runs/photos/encoder/model.safetensors"]),
    "hieralab pretrain model=mae_hiera_mini_8x32 data.source=~/clips data.frame_stride=4 out_dir=runs/clips": (
        ["max_steps=1", "optim.batch_size=2", *QUICK, *MAE_TINY], ["runs/clips/encoder/model.safetensors"]),
    "pretrain optim.batch_size=64 out_dir=runs/ddp": (  # under torchrun, 2 processes
        ["max_steps=2", "data.limit=64", "optim.batch_size=8", *QUICK, *MAE_TINY],
        ["runs/ddp/encoder/model.safetensors"]),
    "pretrain --preset mae_hiera_huge_in1k parallel=fsdp grad_checkpointing=true": (  # under torchrun, 2 processes
        ["model=mae_hiera_mini_32", "data.source=fashion-mnist", "data.img_size=32", "data.limit=32",
         "model_args.norm_pix_loss=false", "optim.batch_size=4", "optim.accum_steps=1", "max_steps=1", *QUICK,
         *MAE_TINY],
        ["runs/mae_hiera_huge_in1k/encoder/model.safetensors"]),
    "hieralab finetune model=hiera_mini_32 init=runs/mae_hiera_fmnist epochs=5": (
        ["max_steps=2", *SMALL], ["runs/finetune/best/model.safetensors", "runs/finetune/curves.png"]),
    "hieralab finetune --preset finetune_small init=runs/mae_hiera_fmnist data.source=~/labelled "
    "val_source=~/held_out": (["max_steps=2", "data.num_workers=0"], ["runs/finetune_small/best"]),
    "hieralab finetune --trainable-blocks 2 init=runs/mae_vit_fmnist model=vit_mini_patch4_32 out_dir=runs/last2": (
        ["max_steps=2", *SMALL], ["runs/last2/best"]),
    "hieralab finetune model=hiera_base_224 init=hiera_base_224.mae_in1k data.source=~/labelled "
    "data.img_size=224 out_dir=runs/mine": (["max_steps=1", "optim.batch_size=2", "data.num_workers=0"],
                                            ["runs/mine/best"]),
    "hieralab finetune model=sam2_hiera_mini_32 init=runs/mae_hiera_fmnist out_dir=runs/hieradet_ft": (
        ["max_steps=2", *SMALL, *MAE_TINY[:3], "model_args.global_att_blocks=[2]"], ["runs/hieradet_ft/best"]),
    "hieralab linprobe model=hiera_mini_32 init=runs/mae_hiera_fmnist 'lrs=[0.03,0.1,0.3,1]'": (
        ["epochs=1", "data.limit=64", "batch_size=16", "data.num_workers=0"], ["runs/linprobe/linprobe.json"]),
    "hieralab eval runs/finetune --data fashion-mnist --split test": (
        ["--limit", "50"], ["runs/finetune/best/eval-fashion-mnist-test/metrics.json"]),
    "hieralab predict shoe.png photos/ --checkpoint runs/finetune": ([], []),
    "hieralab export runs/finetune --out clf.onnx --dynamic-batch": ([], ["clf.onnx"]),
    "hieralab extract --model hiera_mini_32 --init runs/mae_hiera_fmnist --out feats.safetensors --knn": (
        ["--limit", "64"], ["feats.safetensors", "feats.json"]),
    "hieralab reconstruct runs/mae_hiera_fmnist --num 8 --seed 1": (
        [], ["runs/mae_hiera_fmnist/reconstructions/overview.png"]),
    "hieralab scenes runs/scenes --train 2000 --val 300": (
        ["--train", "8", "--val", "4"], ["runs/scenes/val/annotations.json"]),
    "hieralab detect init=runs/mae_hiera_fmnist": (
        [*DENSE, "box_head_dim=16", "mask_head_layers=[16]"], ["runs/detect/metrics.json"]),
    "hieralab eval runs/detect --ann val.json --images val/ --limit 50": ([], []),
    "hieralab predict photos/ --checkpoint runs/detect --score-threshold 0.1": ([], []),
    "hieralab segment data.train_images=ade/images/training data.train_masks=ade/annotations/training "
    "data.val_images=ade/images/validation data.val_masks=ade/annotations/validation data.reduce_zero_label=true "
    "'data.classes=[wall,building,sky,floor]'": ([*DENSE, "head_width=16", *MAE_TINY[:3], "model=hiera_mini_32"],
                                                 ["runs/segment/metrics.json"]),
    "hieralab shards ~/imagenet/train shards/in1k --shard-size 1000": (
        ["--shard-size", "4"], ["shards/in1k/shards.json"]),
    "hieralab study --docs docs": (
        ["--limit", "256", "--pretrain-epochs", "1", "--finetune-epochs", "1", "--probe-epochs", "1", "--seeds", "0",
         "model_args.depth=2", "model_args.decoder_depth=1"],
        ["docs/mae_study.md", "docs/mae_study.png"]),
    "hieralab study-dense --docs docs": (
        ["--seeds", "0", "--steps", "1", *[a for a in DENSE if a != "max_steps=1"], "box_head_dim=16",
         "mask_head_layers=[16]", "pictures=0"], ["docs/dense_study.md", "docs/dense_study.png"]),
    "hieralab action max_steps=200 out_dir=runs/action": (
        ["max_steps=2", *ACTIONS, "model_args.embed_dim=16", "model_args.num_heads=1"],
        ["runs/action/metrics.json", "runs/action/detections.csv"]),
    "hieralab action model=vit_mini_patch4_video data.img_size=32 max_steps=200 out_dir=runs/action-vit": (
        ["max_steps=2", *ACTIONS, "model_args.embed_dim=16", "model_args.depth=1"], ["runs/action-vit/metrics.json"]),
    "hieralab pretrain model=mae_vit_mini_patch4_video data.source=runs/fashion-mnist-actions/videos "
    "data.img_size=32 epochs=4 out_dir=runs/mae-vit-video": (
        ["max_steps=1", "optim.batch_size=4", *QUICK, "model_args.embed_dim=16", "model_args.depth=1",
         "model_args.decoder_embed_dim=16", "model_args.decoder_depth=1"],
        ["runs/mae-vit-video/encoder/model.safetensors"]),
    "hieralab action model=vit_mini_patch4_video init=runs/mae-vit-video data.img_size=32 max_steps=200 "
    "out_dir=runs/action-vit-mae": (["max_steps=2", *ACTIONS], ["runs/action-vit-mae/metrics.json"]),
    "hieralab finetune precision=bf16 max_steps=5 out_dir=runs/ft-bf16": (
        ["max_steps=2", *SMALL, *MAE_TINY[:3]], ["runs/ft-bf16/best/model.safetensors"]),
    "hieralab ava-eval ava_val_v2.2.csv detections.csv --labels ava_action_list_v2.2_for_activitynet_2019.pbtxt "
    "--exclude ava_val_excluded_timestamps_v2.2.csv --top-k 50 --out metrics.json": ([], ["metrics.json"]),
}
TORCHRUN = {"pretrain optim.batch_size=64 out_dir=runs/ddp",
            "pretrain --preset mae_hiera_huge_in1k parallel=fsdp grad_checkpointing=true"}


def test_every_readme_command_has_a_toy_run():
    assert set(commands()) == set(TOY), "a README command without its toy run here (or a toy run of a command " \
                                        "the README no longer shows)"


# ---------------------------------------------------------------- the user's folder
def _grey_ramp(path: Path, size: tuple[int, int] = (40, 36)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.linear_gradient("L").resize(size).save(path)


def _ade(root: Path, split: str, n: int) -> None:
    """ADE20K's layout: ``images/<split>/*.jpg`` and ``annotations/<split>/*.png`` holding 0 (ignored with
    ``reduce_zero_label``) and 1-4 (wall, building, sky, floor)."""
    g = torch.Generator().manual_seed(len(split))
    for i in range(n):
        mask = torch.zeros(64, 64, dtype=torch.uint8)
        mask[:32, :32], mask[:32, 32:], mask[32:, :32], mask[32:, 32:48] = 1, 2, 3, 4
        mask = mask.roll(int(torch.randint(0, 16, (1,), generator=g)), dims=1)
        image = (mask.float() * 50 + 10 * torch.rand(64, 64, generator=g)).clamp(0, 255).to(torch.uint8)
        for sub, arr, suffix in (("images", image.unsqueeze(-1).repeat(1, 1, 3), "jpg"), ("annotations", mask, "png")):
            out = root / sub / split / f"ADE_{split}_{i:08d}.{suffix}"
            out.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(arr.numpy()).save(out)


def _ava_files(root: Path) -> None:
    """A hand-sized AVA validation set: the official label map's format, 2 keyframes (one excluded), detections that
    find every box of class 1 and half of class 2's at the top score."""
    (root / "ava_action_list_v2.2_for_activitynet_2019.pbtxt").write_text(
        'label {\n  name: "bend/bow (at the waist)"\n  label_id: 1\n  label_type: PERSON_MOVEMENT\n}\n'
        'label {\n  name: "crawl"\n  label_id: 2\n  label_type: PERSON_MOVEMENT\n}\n')
    (root / "ava_val_v2.2.csv").write_text(
        "vid1,0902,0.1,0.1,0.4,0.9,1,0\nvid1,0902,0.5,0.1,0.9,0.9,2,1\nvid1,0903,0.1,0.1,0.4,0.9,2,0\n"
        "vid1,0904,0.1,0.1,0.4,0.9,1,0\n")
    (root / "detections.csv").write_text(
        "vid1,0902,0.1,0.1,0.4,0.9,1,0.9\nvid1,0902,0.5,0.1,0.9,0.9,2,0.8\nvid1,0903,0.5,0.5,0.9,0.9,2,0.7\n"
        "vid1,0904,0.1,0.1,0.4,0.9,1,0.6\nvid1,0904,0.1,0.1,0.4,0.9,2,0.99\n")
    (root / "ava_val_excluded_timestamps_v2.2.csv").write_text("vid1,0904\n")


class Workspace:
    """The README user's working folder and home; runs each README command once (with its toy overrides)."""

    def __init__(self, root: Path):
        self.root, self.home, self.done = root, root / "home", {}
        draw_images(self.home / "photos", n=8)
        draw_images(self.home / "labelled", n=24)
        draw_images(self.home / "held_out", n=8)
        draw_images(self.home / "imagenet" / "train", n=12)
        for i in range(4):
            write_clip(self.home / "clips" / f"clip{i}.mp4", frames=20, phase=3 * i)
        draw_images(root / "photos", n=4)
        _grey_ramp(root / "shoe.png")
        _ade(root / "ade", "training", 6)
        _ade(root / "ade", "validation", 2)
        _ava_files(root)

    def cached_weights(self) -> None:
        """``hiera_base_224.mae_in1k`` in the download cache, as after ``hieralab weights download`` (nothing in
        the suite reaches the network; the download itself is tested against a loopback server in test_weights)."""
        import hiera

        cached = self.root / "cache" / "downloads" / "dl.fbaipublicfiles.com" / "hiera" / "mae_hiera_base_224.pth"
        if not cached.exists():
            cached.parent.mkdir(parents=True, exist_ok=True)
            torch.manual_seed(0)
            torch.save({"model_state": hiera.mae_hiera_base_224().state_dict()}, cached)

    def run(self, command: str) -> str:
        """Run ``command`` (once) with its toy overrides; its captured output."""
        if command in self.done:
            return self.done[command]
        for need in self.needs(command):
            self.run(need)
        extra, outputs = TOY[command]
        argv = [os.path.expanduser(a) if a.startswith("~") else a for a in shlex.split(command)] + extra
        if command in TORCHRUN:  # as the README: torchrun, on 2 processes instead of 8
            cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "hieralab.cli",
                   *argv]
            done = subprocess.run(cmd, cwd=self.root, capture_output=True, text=True, timeout=600, check=False,
                                  env={**os.environ, "OMP_NUM_THREADS": "1"})
            assert done.returncode == 0, f"{command}:\n{done.stderr[-3000:]}"
            out = done.stdout
        else:
            assert argv[0] == "hieralab"
            rc = main(argv[1:])
            assert rc == 0, f"{command} exited {rc}"
            out = ""
        for path in outputs:
            assert (self.root / path).exists(), f"{command} did not write {path}"
        self.done[command] = out
        return out

    def needs(self, command: str) -> list[str]:
        """The README commands whose outputs ``command`` reads (run first when a test is run alone)."""
        demo = "hieralab pretrain --preset mae_hiera_fmnist epochs=2 optim.batch_size=64"
        finetune = "hieralab finetune model=hiera_mini_32 init=runs/mae_hiera_fmnist epochs=5"
        detect = "hieralab detect init=runs/mae_hiera_fmnist"
        scenes = "hieralab scenes runs/scenes --train 2000 --val 300"
        if command == demo:
            return []
        if "init=runs/mae_vit_fmnist" in command:
            self.vit_mae()
        if "hiera_base_224.mae_in1k" in command:
            self.cached_weights()
        if "runs/finetune" in command and command != finetune:
            return [demo, finetune]
        if "--ann val.json --images val/" in command:  # a user's COCO validation set: the scenes' own
            self.run(scenes)
            for name, src in (("val.json", "runs/scenes/val/annotations.json"), ("val", "runs/scenes/val/images")):
                if not (self.root / name).exists():
                    (self.root / name).symlink_to(self.root / src)
        if "runs/detect" in command and command != detect:
            return [demo, scenes, detect]
        if "runs/fashion-mnist-actions" in command:
            return ["hieralab action max_steps=200 out_dir=runs/action"]
        if "init=runs/mae-vit-video" in command:
            return [("hieralab pretrain model=mae_vit_mini_patch4_video data.source=runs/fashion-mnist-actions/videos "
                     "data.img_size=32 epochs=4 out_dir=runs/mae-vit-video")]
        return [demo] if "runs/mae_hiera_fmnist" in command else []

    def vit_mae(self) -> None:
        """``runs/mae_vit_fmnist``: the README names it (the `mae_vit_fmnist` preset's run) without a command."""
        if not (self.root / "runs" / "mae_vit_fmnist" / "encoder").exists():
            assert main(["pretrain", "--preset", "mae_vit_fmnist", "max_steps=1", "data.limit=32",
                         "optim.batch_size=8", "model_args.depth=2", "model_args.decoder_depth=1", *QUICK]) == 0


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("readme")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("HOME", str(root / "home"))
        mp.setenv("HIERALAB_CACHE", str(root / "cache"))
        mp.setenv("TQDM_DISABLE", "1")
        yield Workspace(root)


@pytest.mark.parametrize("command", list(TOY), ids=lambda c: re.sub(r"[^\w=.-]+", "_", c.removeprefix("hieralab "))[:70])
def test_the_readme_command_runs(command, workspace, capsys):
    out = workspace.run(command) + capsys.readouterr().out
    root = workspace.root
    # what each command is for, beyond running
    if command.startswith("hieralab list"):
        assert "hiera_base_16x224" in out and "hiera_base_224 " not in out
    elif command.startswith("hieralab weights download"):
        assert Path(out.strip().splitlines()[-1].split()[-1]).exists()
    elif command.startswith("hieralab bench"):
        rows = json.loads((root / "bench.json").read_text())
        assert any("hiera_base_224" in json.dumps(r) for r in (rows if isinstance(rows, list) else [rows]))
    elif command.startswith("hieralab eval runs/finetune"):
        metrics = json.loads((root / TOY[command][1][0]).read_text())
        assert metrics["count"] == metrics["given"] == 50
    elif command.startswith("hieralab eval runs/detect"):
        assert "box AP" in out or "bbox" in out
    elif command.startswith("hieralab predict shoe.png"):
        assert "shoe.png" in out
    elif command.startswith("hieralab ava-eval"):
        # class 1: its one scored box found at the top (AP 100); class 2: two true boxes, the first found at the top,
        # a false box at 0.7 (the 0903 box misses), so AP = 1 x 1/2 = 50; the 0904 keyframe is excluded
        scores = json.loads((root / "metrics.json").read_text())
        assert scores["mAP"] == pytest.approx(75.0)
        assert "75.00" in out
