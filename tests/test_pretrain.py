"""The pretraining pipeline: config layering, schedule, data, exact resume (also after kill -9 mid-save), NaN stop,
DDP, reconstructions and the CLI's errors. Tiny models on images the tests draw themselves."""

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from conftest import PRESET, draw_images, error_lines, losses, tiny_mae
from conftest import pretrain_args as args
from conftest import run_pretrain as run
from hieralab.cli import main
from hieralab.config import FinetuneConfig, OptimConfig, PretrainConfig, from_dict, load_config, to_dict
from hieralab.data.pipeline import EpochSampler
from hieralab.engine import checkpoints
from hieralab.engine.schedule import warmup_cosine
from hieralab.errors import DivergedError, RunFolderError


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """40 drawn images plus one corrupt file."""
    root = draw_images(tmp_path_factory.mktemp("images"))
    (root / "boxes" / "broken.png").write_bytes(b"\x89PNG not really")
    return root


@pytest.fixture(scope="module")
def clean_images(tmp_path_factory) -> Path:
    return draw_images(tmp_path_factory.mktemp("clean"))


# ---------------------------------------------------------------- config and schedule
def test_config_layers_and_round_trips(tmp_path):
    cfg = load_config(PretrainConfig, "mae_hiera_fmnist", ["optim.base_lr=1e-3", "data.crop_scale=[0.5,1]"])
    assert cfg.optim.base_lr == 1e-3 and cfg.data.crop_scale == (0.5, 1.0) and cfg.model == "mae_hiera_mini_32"
    assert from_dict(PretrainConfig, to_dict(cfg)) == cfg
    for bad, msg in [(["optim.nope=1"], "unknown config key optim.nope"),
                     (["epochs=abc"], "epochs=.abc.: must be a number"), (["novalue"], "not key=value")]:
        with pytest.raises(ValueError, match=msg):
            load_config(PretrainConfig, None, bad)



def test_partial_section_keeps_its_fields_own_defaults():
    """Overriding one optimiser key of a fine-tuning config must not reset the rest to OptimConfig's (pretraining)
    defaults: the fine-tuning lr, betas and min lr stay."""
    default = FinetuneConfig().optim
    cfg = load_config(FinetuneConfig, None, ["optim.batch_size=128"])
    assert cfg.optim.batch_size == 128
    assert (cfg.optim.base_lr, cfg.optim.betas, cfg.optim.min_lr) == (default.base_lr, default.betas, default.min_lr)
    assert default.base_lr != OptimConfig().base_lr  # the case the test guards: the two defaults differ
    assert from_dict(FinetuneConfig, to_dict(cfg)) == cfg

def test_warmup_cosine_schedule():
    lrs = [warmup_cosine(s, lr=1.0, total_steps=100, warmup_steps=10, min_lr=0.1) for s in range(101)]
    assert lrs[0] == 0 and lrs[5] == pytest.approx(0.5) and lrs[10] == pytest.approx(1.0)
    assert lrs[55] == pytest.approx(0.55) and lrs[100] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))


def test_sampler_splits_an_epoch_across_processes_and_resumes_mid_epoch():
    one = EpochSampler(20, epoch=3, seed=1).indices()
    assert sorted(one) == list(range(20)) and one != list(range(20))
    ranks = [EpochSampler(20, epoch=3, seed=1, rank=r, world=2).indices() for r in range(2)]
    assert sorted(ranks[0] + ranks[1]) == list(range(20)) and ranks[0][:2] + ranks[1][:2] != one[:4]
    assert EpochSampler(20, epoch=3, seed=1, start=6).indices() == one[6:]
    assert EpochSampler(20, epoch=4, seed=1).indices() != one


# ---------------------------------------------------------------- runs
def test_pretrain_writes_everything_and_skips_corrupt_images(tmp_path, images, caplog):
    with caplog.at_level("WARNING"):
        summary = run(args(tmp_path / "r", images))
    r = tmp_path / "r"
    assert summary["steps"] == 10  # 41 files, 40 readable; 41 // 8 = 5 steps per epoch, 2 epochs
    assert summary["skipped_images"] >= 1  # broken.png, counted every time it is drawn ...
    assert "unreadable, skipped:" in caplog.text and "broken.png" in summary["unreadable"][0]  # ... and named
    steps = losses(r)
    assert [s for s, _ in steps] == list(range(1, 11))
    assert steps[-1][1] < steps[0][1]  # it learns something
    for f in ("config.yaml", "log.csv", "loss_curve.png", "summary.json", "model/model.safetensors",
              "encoder/config.json", "reconstructions/overview.png"):
        assert (r / f).exists(), f
    assert any((r / "tb").iterdir())
    assert checkpoints.list_steps(r / "checkpoints") == [10]  # keep_last=2 but ckpt_every=200: only the final one
    # the README's "your images" line on colour images: an RGB model, though the preset is Fashion-MNIST's
    assert json.loads((r / "encoder" / "config.json").read_text())["config"]["in_chans"] == 3
    resolved = load_config(PretrainConfig, str(r / "config.yaml"), [])
    assert resolved == load_config(PretrainConfig, PRESET, args(r, images))
    with pytest.raises(RunFolderError, match="--resume"):  # nothing already written is touched
        run(args(r, images))


def test_resume_reproduces_the_uninterrupted_run_exactly(tmp_path, images):
    run(args(tmp_path / "full", images, "ckpt_every=3"))
    run(args(tmp_path / "cut", images, "ckpt_every=3", "max_steps=4"))
    assert checkpoints.list_steps(tmp_path / "cut" / "checkpoints") == [3, 4]
    run(args(tmp_path / "cut", images, "ckpt_every=3"), resume=True)
    assert losses(tmp_path / "cut") == losses(tmp_path / "full")
    a, b = (load_file(str(tmp_path / d / "model" / "model.safetensors")) for d in ("full", "cut"))
    assert all(torch.equal(a[k], b[k]) for k in a)


KILLER = textwrap.dedent("""
    import os, signal, sys
    import hieralab.engine.checkpoints as ck
    from hieralab.config import PretrainConfig, load_config
    from hieralab.tasks import pretrain

    real = ck.save_file
    def save_then_die(tensors, path, *a, **k):
        if "step-0000006" in path:  # half-way through writing the step-6 checkpoint
            with open(path, "wb") as f:
                f.write(b"half a file")
            os.kill(os.getpid(), signal.SIGKILL)
        return real(tensors, path, *a, **k)
    ck.save_file = save_then_die
    pretrain.run(load_config(PretrainConfig, "mae_hiera_fmnist", sys.argv[1:]))
""")


def test_kill_9_during_a_save_loses_nothing(tmp_path, images):
    run(args(tmp_path / "full", images, "ckpt_every=3"))
    cut = tmp_path / "cut"
    proc = subprocess.run([sys.executable, "-c", KILLER, *args(cut, images, "ckpt_every=3")], capture_output=True)
    assert proc.returncode == -9
    assert checkpoints.list_steps(cut / "checkpoints") == [3]  # the half-written step 6 is not a checkpoint
    assert any(p.name.startswith(".step-0000006") for p in (cut / "checkpoints").iterdir())
    run(args(cut, images, "ckpt_every=3"), resume=True)
    assert losses(cut) == losses(tmp_path / "full")


def test_nan_loss_stops_and_names_the_last_good_checkpoint(tmp_path, images, monkeypatch):
    from hieralab.mae import MaskedAutoencoderHiera

    calls = {"n": 0}
    real = MaskedAutoencoderHiera.forward_loss

    def poisoned(self, x, pred, visible_patches):
        calls["n"] += 1
        loss, target = real(self, x, pred, visible_patches)
        return (loss * float("nan"), target) if calls["n"] == 5 else (loss, target)

    monkeypatch.setattr(MaskedAutoencoderHiera, "forward_loss", poisoned)
    # step 5's loss (from the weights of checkpoint 4) is NaN: checkpoint 4 is bad, 2 is the last good one
    with pytest.raises(DivergedError, match="loss is nan at step 5.*last good checkpoint is .*step-0000002"):
        run(args(tmp_path / "r", images, "ckpt_every=2"))
    ckpts = tmp_path / "r" / "checkpoints"
    assert checkpoints.list_steps(ckpts) == [2, 4]  # the 5th step's NaN never reached the weights
    assert checkpoints.verdict(ckpts / "step-0000004")["healthy"] is False
    assert checkpoints.verdict(ckpts / "step-0000002")["healthy"] is True
    model = tiny_mae()
    checkpoints.load(ckpts / "step-0000004", model)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_gradient_accumulation_matches_a_larger_batch(tmp_path, images):
    run(args(tmp_path / "big", images, "optim.batch_size=8", "max_steps=3"))
    run(args(tmp_path / "acc", images, "optim.batch_size=4", "optim.accum_steps=2", "max_steps=3"))
    for (_, a), (_, b) in zip(losses(tmp_path / "big"), losses(tmp_path / "acc"), strict=True):
        assert a == pytest.approx(b, rel=1e-5)


def test_two_process_ddp_matches_one_process(tmp_path, clean_images):
    images = clean_images  # a skipped image would weigh differently in a 7-image batch and in 3 + 4 across ranks
    run(args(tmp_path / "one", images, "optim.batch_size=8", "max_steps=3"))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "hieralab.cli",
         "pretrain", *args(tmp_path / "two", images, "optim.batch_size=4", "max_steps=3")],
        capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for (_, a), (_, b) in zip(losses(tmp_path / "one"), losses(tmp_path / "two"), strict=True):
        assert a == pytest.approx(b, rel=1e-4)
    assert (tmp_path / "two" / "model" / "model.safetensors").exists()


def test_activation_checkpointing_is_one_key_and_changes_no_number(tmp_path, clean_images, monkeypatch):
    """grad_checkpointing=true recomputes the encoder's and decoder's blocks in the backward pass (drop path's
    draws replayed): the same losses, bit for bit on the CPU."""
    from torch.utils import checkpoint as torch_checkpoint
    from hieralab.models import base
    calls = []
    real = torch_checkpoint.checkpoint
    monkeypatch.setattr(base, "activation_checkpoint", lambda *a, **k: calls.append(1) or real(*a, **k))
    run(args(tmp_path / "off", clean_images, "max_steps=3", "model_args.drop_path_rate=0.2"))
    assert calls == []
    run(args(tmp_path / "on", clean_images, "max_steps=3", "model_args.drop_path_rate=0.2", "grad_checkpointing=true"))
    assert len(calls) >= 3 * 2  # every step, encoder and decoder blocks
    assert losses(tmp_path / "on") == losses(tmp_path / "off")


def torchrun(*argv: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "hieralab.cli", *argv], capture_output=True, text=True, env=env, timeout=300)


def test_two_process_fsdp_matches_one_process_and_resumes(tmp_path, clean_images):
    """parallel=fsdp shards the blocks over 2 gloo processes: the same losses as one process at the same global
    batch, checkpoints written as full weights, and a resume under FSDP that continues the same trajectory."""
    run(args(tmp_path / "one", clean_images, "optim.batch_size=8", "max_steps=4", "ckpt_every=2"))
    two = args(tmp_path / "two", clean_images, "optim.batch_size=4", "ckpt_every=2", "parallel=fsdp")
    proc = torchrun("pretrain", *two, "max_steps=2")
    assert proc.returncode == 0, proc.stderr[-2000:]
    proc = torchrun("pretrain", *two, "max_steps=4", "--resume")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "resuming from" in proc.stderr
    one, sharded = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert [s for s, _ in sharded] == [1, 2, 3, 4]
    for (_, a), (_, b) in zip(one, sharded, strict=True):
        assert a == pytest.approx(b, rel=1e-4)
    full = load_file(tmp_path / "two" / "checkpoints" / "step-0000004" / "model.safetensors")
    ref = load_file(tmp_path / "one" / "checkpoints" / "step-0000004" / "model.safetensors")
    assert full.keys() == ref.keys() and all(full[k].shape == ref[k].shape for k in ref)  # gathered, not shards
    assert max((full[k] - ref[k]).abs().max().item() for k in ref) < 1e-4
    assert (tmp_path / "two" / "encoder" / "model.safetensors").exists()  # outputs from the gathered model


def test_fsdp_is_refused_where_the_task_evaluates_on_one_process(tmp_path, clean_images, capsys):
    assert main(["finetune", f"data.source={clean_images}", "parallel=fsdp", f"out_dir={tmp_path / 'f'}"]) == 1
    errors = error_lines(capsys.readouterr().err)
    assert len(errors) == 1 and "parallel='fsdp'" in errors[0] and "parallel=ddp" in errors[0]


def test_the_loss_is_read_once_per_optimizer_step(tmp_path, clean_images, monkeypatch):
    """The host reads the loss once per optimizer step (the divergence guard's check, before the update), never once
    per micro-batch: 3 steps of 4 micro-batches read as many float values back as 3 steps of 1 (the data's crops,
    drawn on the CPU by torchvision, aside). The sparse MAE also reads each micro-batch's visible-unit count, an
    integer that sets the encoder's token count."""
    import traceback
    import hieralab.engine.trainer as trainer_module
    from hieralab.engine import distributed
    monkeypatch.setattr(trainer_module, "plot_curve", lambda *a, **k: tmp_path / "curve.png")  # no drawing
    real_sum, real_item = distributed.all_sum, torch.Tensor.item
    means, items = [], []
    monkeypatch.setattr(distributed, "all_sum", lambda x: means.append(x.numel()) or real_sum(x))
    monkeypatch.setattr(torch.Tensor, "item",
                        lambda self: (items.append(1) if self.is_floating_point() and not any(
                            "torchvision" in f.filename for f in traceback.extract_stack()) else None)
                        or real_item(self))
    counts = {}
    for accum in (1, 4):
        means.clear(), items.clear()
        run(args(tmp_path / f"acc{accum}", clean_images, "optim.batch_size=2", f"optim.accum_steps={accum}",
                 "max_steps=3", "ckpt_every=100", "recon_images=0"))
        assert means == [2, 2, 2]  # one (loss x images, images) pair per step, over all its micro-batches
        counts[accum] = len(items)
    assert counts[4] == counts[1]


# ---------------------------------------------------------------- CLI
def test_cli_pretrain_and_reconstruct(tmp_path, images, capsys):
    out = tmp_path / "r"
    assert main(["pretrain", "--preset", "mae_hiera_fmnist", *args(out, images, "max_steps=2")]) == 0
    assert "final loss" in capsys.readouterr().out
    assert main(["reconstruct", str(out), "--num", "3", "--out", str(tmp_path / "pics")]) == 0
    pics = sorted((tmp_path / "pics").glob("recon_*.png"))
    assert len(pics) == 3
    w, h = Image.open(pics[0]).size
    assert w > 2.5 * h  # four titled panels side by side
    index = json.loads((tmp_path / "pics" / "reconstructions.json").read_text())
    assert [e["label"] for e in index["images"]] == ["boxes", "circles", "boxes"]  # the classes in turn
    assert index["columns"][0] == "original" and "hidden" in index["title"]
    ow, oh = Image.open(tmp_path / "pics" / "overview.png").size
    assert oh > 2 * h and abs(ow - w) < 0.1 * w  # three rows of the same four columns


@pytest.mark.parametrize("overrides, message", [
    (["data.source={empty}"], "no images in"),
    (["data.source=/no/such/folder"], "does not exist"),
    (["data.img_size=30"], "does not divide into mask units"),
    (["model=hiera_mini_32"], "not an MAE model"),
    (["model=mae_nope"], "unknown model"),
])
def test_cli_errors_are_one_line(tmp_path, images, capsys, overrides, message):
    (tmp_path / "empty").mkdir()
    overrides = [o.format(empty=tmp_path / "empty") for o in overrides]
    base = [o for o in args(tmp_path / "r", images) if not o.startswith(tuple(x.split("=")[0] for x in overrides))]
    assert main(["pretrain", *base, *overrides]) == 1
    errors = error_lines(capsys.readouterr().err)
    assert len(errors) == 1 and message in errors[0]
    assert not (tmp_path / "r").exists()  # a refused run leaves nothing behind


def test_the_online_probe_runs_at_the_start_four_times_over_the_run_and_at_the_end():
    from hieralab.tasks.pretrain import probe_due
    due = [s for s in range(1, 470) if probe_due(s, stop=469, total=469, every=None)]
    assert due == [1, 117, 234, 351, 469]  # 468 is a period multiple, but too close to the last step's probe
    assert [s for s in range(1, 11) if probe_due(s, stop=10, total=10, every=3)] == [1, 3, 6, 10]  # 9: too close
    assert [s for s in range(101, 201) if probe_due(s, stop=200, total=400, every=None)] == [200]  # resumed slice


def _good_and_corrupt(root: Path, good: int, corrupt: int) -> Path:
    """``good`` drawn images and ``corrupt`` files that are not images, in one flat folder."""
    drawn = draw_images(root / "drawn", good)
    flat = root / "flat"
    flat.mkdir()
    for i, p in enumerate(sorted(drawn.rglob("*.png"))):
        (flat / f"good-{i:03d}.png").write_bytes(p.read_bytes())
    for i in range(corrupt):
        (flat / f"zz-bad-{i:03d}.png").write_bytes(b"not a png")
    return flat


def test_a_micro_batch_of_unreadable_files_weighs_nothing_in_the_logged_loss(tmp_path):
    """The step's loss is the mean over the images it trained on: one good image and one corrupt file in two
    micro-batches of one log the losses of the good image alone in one micro-batch (the empty micro-batch once
    doubled them)."""
    both, alone = _good_and_corrupt(tmp_path / "both", 1, 1), _good_and_corrupt(tmp_path / "alone", 1, 0)
    common = ("optim.batch_size=1", "epochs=3", "recon_images=0")  # 1 step per epoch
    run(args(tmp_path / "r2", both, *common, "optim.accum_steps=2"))
    run(args(tmp_path / "r1", alone, *common, "optim.base_lr=2e-2"))  # the lr scales with batch x accum: the same lr
    two, one = losses(tmp_path / "r2"), losses(tmp_path / "r1")
    assert [s for s, _ in two] == [1, 2, 3]
    for (_, a), (_, b) in zip(two, one, strict=True):
        assert a == pytest.approx(b, rel=1e-5)


def test_two_processes_go_on_when_one_gets_only_unreadable_files(tmp_path):
    """Under DDP a process whose micro-batch is all unreadable runs its last readable one again at weight 0, so
    the other's gradient all-reduce is answered (it used to wait for ever)."""
    from hieralab.files import read_csv
    images = _good_and_corrupt(tmp_path, 6, 6)
    out = tmp_path / "run"
    proc = torchrun("pretrain", *args(out, images, "optim.batch_size=1", "max_steps=6", "recon_images=0"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = read_csv(out / "log.csv")[1]
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4, 5, 6]
    finite = [math.isfinite(float(r["loss"])) for r in rows]  # nan: both processes' files unreadable, no update
    assert int(rows[-1]["skipped"]) > 0 and sum(finite) >= 3
