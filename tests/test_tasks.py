"""Tasks as declared plug-ins: the table drives the command line, run.json names every run, one encoder start-up
(one precedence rule), one input geometry, a dataset catalog, the backbone contract, outputs that are the command's
own."""

import ast
import re
import json
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from conftest import draw_images

import hieralab
from hieralab import files
from hieralab.cli import main
from hieralab.config import RunConfig, load_config, preset_names, preset_task
from hieralab.config.schema import setting
from hieralab.data.geometry import Geometry
from hieralab.engine import encoder
from hieralab.engine.task import Action, Flag, Task
from hieralab.engine.trainer import Trainer
from hieralab.models import create_model, list_models
from hieralab.models.contract import check_backbone, missing_members

SRC = Path(hieralab.__file__).parent


# ---------------------------------------------------------------- a toy task: its module, its config, one table line
@dataclass
class ToyConfig(RunConfig):
    width: int = setting(3, check=lambda v: None if isinstance(v, int) and v > 0 else "must be positive")
    out_dir: str = RunConfig.default("out_dir", "runs/toy")


def toy_run(cfg: ToyConfig, *, resume: bool = False, **options):
    with Trainer(cfg, task="toy", resume=resume, **options) as trainer:
        trainer.folder.record_start(cfg, trainer.start, 0)
        trainer.folder.write_marker(status="finished")
        return {"task": "toy", "run_dir": str(trainer.dir), "width": cfg.width, "steps": 0}


def toy_evaluate(run, *, out=None, overwrite=False, scale=1):
    return {"score": 42 * scale, "run": str(run)}


TOY = Task(name="toy", config=ToyConfig, run=toy_run, report=lambda cfg, s: [f"toy of width {s['width']}"],
           help="a toy task", flags=(Flag("--width", "the width", type=int, override="width"),),
           evaluate=Action(toy_evaluate, lambda m: [f"toy score {m['score']}"],
                           flags=(Flag("--scale", "a toy flag", type=int, default=1),)))


def test_a_task_is_one_declaration_and_one_table_line(tmp_path, capsys, monkeypatch):
    import hieralab.tasks as tasks

    monkeypatch.setitem(tasks.TASKS, "toy", TOY)
    out = tmp_path / "toy"
    assert main(["toy", f"out_dir={out}", "--width", "7"]) == 0  # an override before the flags
    assert "toy of width 7" in capsys.readouterr().out
    assert json.loads((out / "run.json").read_text())["task"] == "toy"
    assert main(["eval", str(out), "--scale", "2"]) == 0  # eval found the task from run.json
    assert "toy score 84" in capsys.readouterr().out
    assert main(["eval", str(out), "--masks", "x"]) == 1  # a flag of another task: named, one line
    err = capsys.readouterr().err
    assert "--masks is for segment runs" in err and len(err.strip().splitlines()) == 1


def test_the_cli_has_no_per_task_branch():
    tree = ast.parse((SRC / "cli.py").read_text())
    names = {"pretrain", "finetune", "linprobe", "detect", "segment"}
    strings = {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)}
    assert not names & strings, names & strings
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names}
    assert not names & imported


def test_no_task_or_engine_module_names_a_dataset():
    for folder in ("tasks", "engine"):
        for path in (SRC / folder).glob("*.py"):
            text = path.read_text()
            assert "fashion-mnist" not in text and "fashion_mnist" not in text, path


def test_presets_declare_their_task():
    assert {preset_task(name) for name in preset_names()} <= {"pretrain", "finetune"}
    from hieralab.config import FinetuneConfig
    from hieralab.errors import ConfigError

    with pytest.raises(ConfigError, match="mae_hiera_fmnist is a pretrain preset; use it with hieralab pretrain"):
        load_config(FinetuneConfig, "mae_hiera_fmnist", [], task="finetune")


def test_overrides_go_before_and_after_the_flags(capsys):
    from hieralab.cli import parse

    args = parse(["finetune", "epochs=2", "--resume", "seed=3", "--accept-changes", "seed", "optim.base_lr", "=",
                  "1e-3"])
    assert args.resume and args.accept_changes == "seed"
    assert args.overrides == ["epochs=2", "seed=3", "optim.base_lr", "=", "1e-3"]
    with pytest.raises(SystemExit):
        parse(["eval", "run", "--no-such-flag"])


def test_overrides_may_follow_a_flag_of_several_values():
    """``--seeds 0 1`` takes every number after it; argparse would take ``epochs=2`` as a third seed (an int error)."""
    from hieralab.cli import parse

    args = parse(["study", "--seeds", "0", "1", "model_args.depth=2", "--limit", "64", "seed=1", "seed=2"])
    assert args.seeds == [0, 1] and args.limit == 64
    assert args.overrides == ["model_args.depth=2", "seed=1", "seed=2"]  # in order: the later value wins
    args = parse(["study-dense", "--out", "a=b", "--seeds", "3", "data.limit=4"])
    assert args.out == "a=b" and args.seeds == [3] and args.overrides == ["data.limit=4"]  # a one-value flag's value


def test_version_answers_without_importing_torch():
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "hieralab", "--version"], capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip() == f"hieralab {hieralab.__version__}"
    assert time.perf_counter() - t < 3  # the import of torch alone takes several seconds here
    proc = subprocess.run([sys.executable, "-c", "import sys, hieralab.cli; print('torch' in sys.modules)"],
                          capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip() == "False"


# ---------------------------------------------------------------- one encoder start-up
def test_the_user_model_args_win_over_the_task_keys_and_the_saved_architecture(tmp_path):
    folder = tmp_path / "enc"
    create_model("hiera_mini_32", embed_dim=16, num_heads=1, drop_path_rate=0.2).save_pretrained(folder)
    start = encoder.plan("hiera_mini_32", {}, str(folder), data_channels=3, source="x", drop_path=0.1, num_classes=5)
    assert start.args["embed_dim"] == 16 and start.args["drop_path_rate"] == 0.1 and start.args["num_classes"] == 5
    assert start.in_chans == 3  # the weights' channels (the registered 3)
    start = encoder.plan("hiera_mini_32", {"drop_path_rate": 0.3, "embed_dim": 24}, None, data_channels=1,
                         source="x", drop_path=0.1)
    assert start.args["drop_path_rate"] == 0.3 and start.args["embed_dim"] == 24 and start.in_chans == 1


@pytest.mark.parametrize("task", ["finetune", "detect", "segment"])
def test_every_task_builds_its_encoder_by_the_one_rule(task):
    """finetune, detect and segment all start their encoder with encoder.plan and their drop_path, where the user's
    model_args.drop_path_rate wins (in detect and segment drop_path used to win)."""
    import hieralab.tasks as tasks

    t = tasks.TASKS[task]
    text = Path(sys.modules[t.run.__module__].__file__).read_text()
    assert "encoder.plan(" in text and "drop_path=cfg.drop_path" in text
    cfg = load_config(t.config, None, ["model_args.drop_path_rate=0.3", "drop_path=0.1"])
    start = encoder.plan(cfg.model, cfg.model_args, None, data_channels=1, source="x", drop_path=cfg.drop_path)
    assert start.args["drop_path_rate"] == 0.3


def test_a_grey_encoder_takes_colour_images_converted_or_widened(tmp_path):
    grey = create_model("hiera_mini_32", in_chans=1)
    grey.save_pretrained(tmp_path / "grey")
    start = encoder.plan("hiera_mini_32", {}, str(tmp_path / "grey"), data_channels=3, source="colour")
    assert start.in_chans == 1  # the weights' channels; the data is converted to grey
    wide = encoder.plan("hiera_mini_32", {"in_chans": 3}, str(tmp_path / "grey"), data_channels=3,
                        source="colour").build()
    assert wide.in_chans == 3
    w1, w3 = grey.patch_embed.proj.weight, wide.patch_embed.proj.weight
    assert torch.allclose(w3.sum(1, keepdim=True), w1, atol=1e-6)  # adapt_input_conv: the grey kernel spread
    x = torch.rand(1, 1, 32, 32)
    grey.eval(), wide.eval()
    assert torch.allclose(grey.forward_features(x), wide.forward_features(x.expand(-1, 3, -1, -1)), atol=1e-5)


# ---------------------------------------------------------------- one geometry
def test_the_probe_of_a_video_run_reads_the_frames_training_reads():
    mae = create_model("mae_hiera_mini_8x32")
    geometry = Geometry.of(mae.encoder, 32)
    assert geometry.video and geometry.num_frames == 8 and geometry.shape == (3, 8, 32, 32)
    assert Geometry.of(mae.encoder, 32, num_frames=4).num_frames == 4
    text = (SRC / "tasks" / "pretrain.py").read_text()
    assert "knn_probe(cfg, dataset, geometry.eval_transform(" in text and "or 16" not in text
    image = Geometry.of(create_model("hiera_mini_32", in_chans=1), 32)
    assert not image.video and image.shape == (1, 32, 32)
    assert Geometry.from_record(image.record()) == image


# ---------------------------------------------------------------- run.json is a run's identity
def test_runs_are_known_by_their_run_json(tmp_path):
    from hieralab.tasks import task_of

    run = tmp_path / "ft"
    (run / "best").mkdir(parents=True)
    files.write_json(run / "run.json", {"task": "finetune"})
    assert task_of(run)[0].name == "finetune" and task_of(run / "best") == (task_of(run)[0], run)
    legacy = tmp_path / "old" / "model"  # an earlier version's detect run: no run.json
    legacy.mkdir(parents=True)
    (legacy / "detector.json").write_text("{}")
    assert task_of(legacy.parent)[0].name == "detect"
    with pytest.raises(FileNotFoundError, match="is not a hieralab run"):
        task_of(tmp_path)


# ---------------------------------------------------------------- the backbone contract
@pytest.mark.parametrize("name", [n for n in list_models() if not n.startswith("mae_")])
def test_every_registered_encoder_keeps_the_backbone_contract(name):
    with torch.device("meta"):
        model = create_model(name)
    assert missing_members(model) == []
    assert model.size_multiple > 0 and model.ndim in (2, 3)


def test_a_model_without_the_contract_is_refused_by_name():
    from hieralab.errors import ConfigError

    with pytest.raises(ConfigError, match="lacks .*size_multiple"):
        check_backbone(torch.nn.Linear(2, 2))


# ---------------------------------------------------------------- outputs are the command's own
def test_an_output_folder_never_replaces_what_it_did_not_write(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "metrics.json").write_text("the user's")
    with pytest.raises(FileExistsError, match="a folder hieralab did not write"):
        with files.output_folder(mine) as work:
            (work / "metrics.json").write_text("ours")
    assert (mine / "metrics.json").read_text() == "the user's"
    with files.output_folder(mine, overwrite=True) as work:  # moved aside, nothing deleted
        (work / "metrics.json").write_text("ours")
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("mine.replaced-")]
    assert len(aside) == 1 and (aside[0] / "metrics.json").read_text() == "the user's"
    with files.output_folder(mine) as work:  # our own: replaced
        (work / "metrics.json").write_text("again")
    assert (mine / "metrics.json").read_text() == "again"
    assert not [p for p in tmp_path.iterdir() if files.is_temporary(p.name)]


def test_two_writers_of_one_new_output_never_both_succeed(tmp_path):
    target, results = tmp_path / "out", []
    gate = threading.Barrier(2)

    def write(text):
        try:
            with files.output_folder(target) as work:
                (work / "x").write_text(text)
                gate.wait()
            results.append("ok")
        except FileExistsError:
            results.append("refused")

    user = tmp_path / "user"
    user.mkdir()
    (user / "x").write_text("user")
    threads = [threading.Thread(target=write, args=(t,)) for t in "ab"]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert sorted(results) in (["ok", "ok"], ["ok", "refused"])  # a second of ours may replace the first of ours
    assert (target / "x").read_text() in "ab"
    target2 = tmp_path / "file.csv"
    files.atomic_write(target2, lambda p: Path(p).write_text("1"), exclusive=True)
    with pytest.raises(FileExistsError):
        files.atomic_write(target2, lambda p: Path(p).write_text("2"), exclusive=True)
    assert target2.read_text() == "1"


def test_eval_refuses_a_users_folder_and_writes_there_with_overwrite(tmp_path, capsys):
    images = draw_images(tmp_path / "images", n=12)
    run = tmp_path / "ft"
    assert main(["finetune", f"data.source={images}", "model_args.embed_dim=8", "model_args.num_heads=1",
                 "optim.batch_size=4", "epochs=1", "max_steps=1", f"out_dir={run}", "data.num_workers=0",
                 "data.img_size=32"]) == 0
    out = tmp_path / "results"
    out.mkdir()
    (out / "confusion.png").write_text("the user's picture")
    capsys.readouterr()
    assert main(["eval", str(run), "--data", str(images), "--out", str(out)]) == 1
    assert "a folder hieralab did not write" in capsys.readouterr().err
    assert (out / "confusion.png").read_text() == "the user's picture"
    assert main(["eval", str(run), "--data", str(images), "--out", str(out), "--overwrite", "--limit", "3"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["count"] == 3 and metrics["given"] == 3


# ---------------------------------------------------------------- commands that are not tasks
def test_ava_eval_prints_and_writes_the_benchmarks_numbers(tmp_path, capsys):
    from hieralab.metrics.ava import evaluate_files

    (tmp_path / "gt.csv").write_text("v1,0902,0.1,0.1,0.5,0.5,1,0\nv1,0902,0.1,0.1,0.5,0.5,2,0\n"
                                     "v1,0903,0.5,0.5,0.9,0.9,1,1\n")
    (tmp_path / "det.csv").write_text("v1,0902,0.1,0.1,0.5,0.5,1,0.9\nv1,0903,0.1,0.1,0.5,0.5,1,0.8\n"
                                      "v1,0903,0.5,0.5,0.9,0.9,1,0.7\nv1,0902,0.1,0.1,0.5,0.5,2,0.6\n")
    (tmp_path / "labels.pbtxt").write_text('item { name: "stand" id: 1 }\nitem { name: "walk" id: 2 }\n')
    out = tmp_path / "m.json"
    args = [str(tmp_path / "gt.csv"), str(tmp_path / "det.csv"), "--labels", str(tmp_path / "labels.pbtxt")]
    assert main(["ava-eval", *args, "--out", str(out)]) == 0
    expected = evaluate_files(*args[:2], str(tmp_path / "labels.pbtxt"))
    # class 1: TP (0.9), FP (0.8), TP (0.7) -> AP = (1 + 2/3) / 2 = 83.33; class 2: 100; mAP 91.67
    assert expected["mAP"] == pytest.approx((250 / 3 + 100) / 2)
    assert f"frame mAP@0.5 {expected['mAP']:.2f} %" in capsys.readouterr().out
    assert json.loads(out.read_text())["mAP"] == pytest.approx(expected["mAP"])
    assert main(["ava-eval", *args, "--out", str(out)]) == 1  # nothing replaced unasked
    assert "exists" in capsys.readouterr().err


def test_init_takes_public_weights_by_name(tmp_path, monkeypatch):
    from hieralab import weights
    from hieralab.engine.artifacts import resolve_weights

    file = tmp_path / "w.safetensors"
    file.write_bytes(b"x")
    monkeypatch.setattr(weights, "resolve", lambda spec: file if spec == "hiera_mini_32.toy" else None)
    assert resolve_weights("hiera_mini_32.toy") == file
    with pytest.raises(FileNotFoundError, match="public weights by name"):
        resolve_weights("no/such/run")


def test_the_divergence_message_instruction_runs_as_written(tmp_path, capsys, monkeypatch):
    """The message says "add --resume optim.base_lr=X --accept-changes optim.base_lr to the command": the command
    had key=value overrides, the flags and the new override come after them, and it resumes."""
    import shlex

    from conftest import PRESET, pretrain_args
    from hieralab.mae import MaskedAutoencoderHiera

    images = draw_images(tmp_path / "images", n=24)
    calls = {"n": 0}
    real = MaskedAutoencoderHiera.forward_loss

    def poisoned(self, x, pred, visible_patches):
        calls["n"] += 1
        loss, target = real(self, x, pred, visible_patches)
        return (loss * float("nan"), target) if calls["n"] == 4 else (loss, target)

    monkeypatch.setattr(MaskedAutoencoderHiera, "forward_loss", poisoned)
    command = ["pretrain", "--preset", PRESET, *pretrain_args(tmp_path / "r", images, "ckpt_every=1", "max_steps=5")]
    assert main(command) == 1
    err = capsys.readouterr().err
    instruction = re.search(r"add (--resume .*?) to the command", err).group(1)
    monkeypatch.setattr(MaskedAutoencoderHiera, "forward_loss", real)
    assert main([*command, *shlex.split(instruction)]) == 0
    assert json.loads((tmp_path / "r" / "summary.json").read_text())["steps"] == 5


def test_a_grey_folder_is_normalised_by_its_own_statistics(tmp_path):
    import numpy as np
    from PIL import Image

    from hieralab.data.pipeline import build_dataset

    for i in range(5):
        (tmp_path / "a").mkdir(exist_ok=True)
        Image.fromarray(np.full((10, 10), 50 * i, np.uint8)).save(tmp_path / "a" / f"{i}.png")
    _, mean, std, _ = build_dataset(str(tmp_path))
    values = np.repeat(np.arange(5) * 50 / 255, 100)
    assert mean[0] == pytest.approx(values.mean(), abs=1e-4) and std[0] == pytest.approx(values.std(), abs=1e-4)
