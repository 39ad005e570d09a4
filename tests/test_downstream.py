"""Downstream: fine-tune (full, partial, from an MAE run, resumed, two processes), linear probes, eval, predict,
extract and k-NN. Tiny models on images the tests draw themselves."""

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import MAE_TINY, draw_images
from safetensors.torch import load_file

import hieralab
import hieralab.tasks.finetune
from hieralab.cli import main
from hieralab.config import FinetuneConfig, LinprobeConfig, PretrainConfig, load_config
from hieralab.engine.evaluate import knn_classify
from hieralab.metrics.classification import classification_metrics, confusion_matrix
from hieralab.engine.optim import build_adamw
from hieralab.engine.trainer import Trainer
from hieralab.tasks import finetune, pretrain
from hieralab.engine.artifacts import eval_folder_name
from hieralab.tasks.finetune import freeze_all_but_last_blocks
from hieralab.tasks.linprobe import fit_probes

TINY = ["model=hiera_mini_32", "model_args.embed_dim=16", "model_args.num_heads=1", "model_args.stages=[1,1,1]"]


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    return draw_images(tmp_path_factory.mktemp("labelled"), n=48)


def ft_args(out: Path, images: Path, *extra: str) -> list[str]:
    return [*TINY, f"data.source={images}", "data.num_workers=0", "data.img_size=32", "optim.batch_size=8",
            f"out_dir={out}", "log_every=1", "epochs=2", "eval_every=3", "val_fraction=0.25", *extra]


def run_ft(overrides: list[str], resume: bool = False) -> dict:
    return finetune.run(load_config(FinetuneConfig, None, overrides), resume=resume)


def losses(run_dir: Path) -> list[tuple[int, float]]:
    return [(int(r["step"]), float(r["loss"])) for r in csv.DictReader((run_dir / "log.csv").open())]


# ---------------------------------------------------------------- recipe pieces
@pytest.mark.parametrize("name", ["hiera_mini_32", "vit_mini_patch4_32", "t2t_vit_mini_32"])
def test_layer_decay_groups_follow_the_layer_ids(name):
    model = hieralab.create_model(name)
    opt = build_adamw(model, lr=1.0, weight_decay=0.05, betas=(0.9, 0.999), layer_decay=0.75)
    names = {id(p): n for n, p in model.named_parameters()}
    seen = set()
    for group in opt.param_groups:
        for p in group["params"]:
            n = names[id(p)]
            seen.add(n)
            assert group["lr_scale"] == pytest.approx(0.75 ** (model.num_layers - 1 - model.layer_id(n)))
            no_decay = p.ndim == 1 or n in model.no_weight_decay()
            assert group["weight_decay"] == (0.0 if no_decay else 0.05), n
    assert seen == {n for n, p in model.named_parameters() if p.requires_grad}
    assert {model.layer_id(n) for n in seen} == set(range(model.num_layers))


def test_partial_fine_tuning_trains_the_last_blocks_norm_and_head():
    model = hieralab.create_model("vit_mini_patch4_32")
    trainable = freeze_all_but_last_blocks(model, 2)
    assert {n.split(".")[1] for n in trainable if n.startswith("blocks.")} == {"4", "5"}
    assert {"norm.weight", "head.weight"} <= set(trainable)
    assert not any(n.startswith(("patch_embed", "cls_token", "blocks.3")) for n in trainable)
    opt = build_adamw(model, lr=1.0, weight_decay=0.05, betas=(0.9, 0.999), layer_decay=0.75)
    assert sum(len(g["params"]) for g in opt.param_groups) == len(trainable)
    assert len(freeze_all_but_last_blocks(model, 0)) == 4  # norm + head only
    with pytest.raises(ValueError, match="0..6"):
        freeze_all_but_last_blocks(model, 7)


def test_metrics_confusion_and_knn_on_known_inputs():
    logits = torch.tensor([[3.0, 1, 0], [0, 2, 1], [0, 1, 2], [2, 0, 1]])
    labels = torch.tensor([0, 2, 2, 1])
    m = classification_metrics(logits, labels)
    assert m["top1"] == 50.0 and m["top5"] == 100.0
    assert confusion_matrix(logits, labels, 3).tolist() == [[1, 0, 0], [1, 0, 0], [0, 1, 1]]
    train = torch.tensor([[1.0, 0], [0.9, 0.1], [0, 1], [0.1, 0.9]])
    scores = knn_classify(train, torch.tensor([0, 0, 1, 1]), torch.tensor([[1.0, 0.05], [0.05, 1]]), num_classes=2,
                          k=2)
    assert scores.argmax(1).tolist() == [0, 1]


def probe(tmp_path, name, x, y, lrs):
    cfg = LinprobeConfig(out_dir=str(tmp_path / name), lrs=tuple(lrs), epochs=20, batch_size=64)
    with Trainer(cfg, task="linprobe") as trainer:
        return fit_probes(trainer, cfg, (x[:400], y[:400]), (x[400:], y[400:]))


def test_probes_learn_separable_features_and_not_random_labels(tmp_path):
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 4, (600,), generator=g)
    x = torch.randn(600, 16, generator=g) + 4 * torch.nn.functional.one_hot(y, 16)  # 4 well separated clusters
    assert probe(tmp_path, "clusters", x, y, [0.01, 0.1, 1.0])["best_top1"] > 97
    shuffled = y[torch.randperm(600, generator=g)]
    assert probe(tmp_path, "shuffled", x, shuffled, [0.1, 1.0])["best_top1"] < 45  # chance is 25 %


# ---------------------------------------------------------------- fine-tuning runs
def test_finetune_writes_best_last_curves_and_resumes_exactly(tmp_path, images):
    full = run_ft(ft_args(tmp_path / "full", images, "ckpt_every=3", "ema_decay=0.9"))
    for name in ("best/model.safetensors", "best/classifier.json", "last/config.json", "curves.png",
                 "summary.json", "config.yaml"):
        assert (tmp_path / "full" / name).exists(), name
    rows = list(csv.DictReader((tmp_path / "full" / "log.csv").open()))
    evals = [r for r in rows if r["val_top1"]]
    assert [int(r["step"]) for r in evals] == [3, 6, 8] and all(r["ema_val_top1"] for r in evals)
    assert full["best_top1"] == max(max(float(r["val_top1"]), float(r["ema_val_top1"])) for r in evals)
    meta = json.loads((tmp_path / "full" / "best" / "classifier.json").read_text())
    assert meta["classes"] == ["boxes", "circles"] and meta["img_size"] == 32

    run_ft(ft_args(tmp_path / "cut", images, "ckpt_every=3", "ema_decay=0.9", "max_steps=4"))
    run_ft(ft_args(tmp_path / "cut", images, "ckpt_every=3", "ema_decay=0.9"), resume=True)
    assert losses(tmp_path / "cut") == losses(tmp_path / "full")
    a, b = (load_file(str(tmp_path / d / "last" / "model.safetensors")) for d in ("full", "cut"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_finetune_from_an_mae_run_and_partially(tmp_path, images):
    mae_tiny = ["model_args.embed_dim=16", "model_args.num_heads=1", "model_args.stages=[1,1,1]",
                "model_args.decoder_embed_dim=32", "model_args.decoder_depth=1", "model_args.decoder_num_heads=2"]
    pretrain.run(load_config(PretrainConfig, "mae_hiera_fmnist", [
        f"data.source={images}", "data.num_workers=0", "optim.batch_size=8", f"out_dir={tmp_path / 'mae'}",
        "max_steps=2", "recon_images=0", *mae_tiny]))
    encoder = load_file(str(tmp_path / "mae" / "encoder" / "model.safetensors"))
    summary = run_ft(ft_args(tmp_path / "ft", images, f"init={tmp_path / 'mae'}", "max_steps=1",
                             "trainable_blocks=1", "optim.base_lr=0"))
    assert summary["trainable_params"] < sum(v.numel() for v in encoder.values())
    tuned = load_file(str(tmp_path / "ft" / "last" / "model.safetensors"))
    for k, v in encoder.items():  # frozen (and lr 0): the encoder's weights, unchanged
        assert torch.equal(tuned[k], v), k


def test_an_mae_runs_encoder_and_its_classifier_round_trip(tmp_path, images):
    pretrain.run(load_config(PretrainConfig, "mae_hiera_fmnist", [
        f"data.source={images}", "data.num_workers=0", "optim.batch_size=8", f"out_dir={tmp_path / 'mae'}",
        "max_steps=1", "recon_images=0", *MAE_TINY]))
    enc = hieralab.from_pretrained(tmp_path / "mae" / "encoder")  # the README's line, for a Hiera MAE run
    mae = hieralab.from_pretrained(tmp_path / "mae" / "model")
    assert isinstance(enc, hieralab.Hiera) and enc.num_classes == 0
    assert all(torch.equal(mae.encoder.state_dict()[k], v) for k, v in enc.state_dict().items()
               if not k.startswith("norm."))
    registered = hieralab.model_config("hiera_mini_32")["q_pool"]  # the classifier pools where the MAE does not
    assert enc.config["q_pool"] == registered != mae.config["q_pool"]
    run_ft(ft_args(tmp_path / "ft", images, f"init={tmp_path / 'mae'}", "max_steps=1"))
    saved = json.loads((tmp_path / "ft" / "last" / "config.json").read_text())["config"]
    assert saved["q_pool"] == registered and saved["embed_dim"] == 16
    with pytest.raises(ValueError, match="was saved with .*embed_dim=16"):  # the registered width is 64
        hieralab.create_model("hiera_mini_32", checkpoint=str(tmp_path / "ft" / "last"))
    arch = {k: saved[k] for k in ("embed_dim", "num_heads", "stages", "num_classes", "in_chans")}
    loaded = hieralab.create_model("hiera_mini_32", **arch, checkpoint=str(tmp_path / "ft" / "last")).eval()
    x = torch.randn(2, saved["in_chans"], 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), hieralab.from_pretrained(tmp_path / "ft" / "last").eval()(x))


def test_two_process_finetune_matches_one_process(tmp_path, images):
    plain = ["aug.mixup=0", "aug.cutmix=0", "aug.smoothing=0", "aug.randaug=null", "aug.reprob=0", "drop_path=0",
             "max_steps=3"]
    run_ft(ft_args(tmp_path / "one", images, "optim.batch_size=8", *plain))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "hieralab.cli",
         "finetune", *ft_args(tmp_path / "two", images, "optim.batch_size=4", *plain)],
        capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for (_, a), (_, b) in zip(losses(tmp_path / "one"), losses(tmp_path / "two"), strict=True):
        assert a == pytest.approx(b, rel=1e-4)
    assert (tmp_path / "two" / "best" / "classifier.json").exists()


# ---------------------------------------------------------------- the commands
def test_cli_eval_predict_linprobe_extract(tmp_path, images, capsys):
    assert main(["finetune", *ft_args(tmp_path / "ft", images, "max_steps=3")]) == 0
    assert "best top-1" in capsys.readouterr().out

    assert main(["eval", str(tmp_path / "ft"), "--data", str(images)]) == 0
    out = capsys.readouterr().out
    eval_dir = tmp_path / "ft" / "best" / eval_folder_name(str(images), "test")
    metrics = json.loads((eval_dir / "metrics.json").read_text())
    assert f"top-1 {metrics['top1']:.2f} %" in out and metrics["count"] == 48 and str(eval_dir) in out
    assert (eval_dir / "confusion.png").exists()

    assert main(["predict", str(images / "boxes" / "000.png"), "--checkpoint", str(tmp_path / "ft")]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and {line.split()[-1] for line in lines} == {"boxes", "circles"}

    assert main(["linprobe", *TINY, f"data.source={images}", "data.num_workers=0", f"init={tmp_path / 'ft' / 'last'}",
                 "lrs=[0.1,1.0]", "epochs=3", "batch_size=16", "val_fraction=0.25",
                 f"out_dir={tmp_path / 'probe'}"]) == 0
    probe = json.loads((tmp_path / "probe" / "linprobe.json").read_text())
    assert set(probe["top1_per_lr"]) == {"0.1", "1.0"} and probe["val"] == 12
    assert (tmp_path / "probe" / "linprobe.png").exists() and (tmp_path / "probe" / "head.safetensors").exists()

    common = ["--model", "hiera_mini_32", "--data", str(images), "--img-size", "32"]
    small = ["--init", str(tmp_path / "ft" / "last")]
    assert main(["extract", *common, "--out", str(tmp_path / "f.safetensors")]) == 0
    feats = load_file(str(tmp_path / "f.safetensors"))
    capsys.readouterr()
    assert main(["extract", *common, "--out", str(tmp_path / "f.safetensors")]) == 1  # there: not replaced
    assert "pass --overwrite" in capsys.readouterr().err
    assert main(["extract", *common, "--out", str(tmp_path / "f.safetensors"), "--overwrite"]) == 0
    assert feats["features"].shape[0] == feats["labels"].shape[0] == 48
    assert main(["extract", *common, "--out", str(tmp_path / "f.npy"), "--knn", "--knn-train", str(images)]) == 0
    assert "k-NN (k=20) top-1" in capsys.readouterr().out
    assert np.load(tmp_path / "f.npy").shape == tuple(feats["features"].shape)
    assert np.load(tmp_path / "f.labels.npy").tolist() == feats["labels"].tolist()
    assert main(["extract", *common, "--out", str(tmp_path / "s.safetensors"), "--stages"]) == 0
    stages = load_file(str(tmp_path / "s.safetensors"))
    assert [stages[f"stage{i}"].shape[1:] for i in range(3)] == [(64, 16, 16), (128, 8, 8), (256, 4, 4)]
    # a save_pretrained folder brings its architecture (the tiny width here) ...
    assert main(["extract", *common, *small, "--out", str(tmp_path / "t.safetensors")]) == 0
    assert load_file(str(tmp_path / "t.safetensors"))["features"].shape == (48, 64)
    # ... and weights of another family are a one-line error, with nothing written
    assert main(["extract", *common[2:], "--model", "vit_mini_patch4_32", *small,
                 "--out", str(tmp_path / "x.safetensors")]) == 1
    assert "checkpoint does not fit" in capsys.readouterr().err and not (tmp_path / "x.safetensors").exists()


@pytest.mark.parametrize("argv, message", [
    (["finetune", "model=mae_hiera_mini_32"], "is an MAE model"),
    (["finetune", "init=/nonexistent/run"], "no such file or folder"),
    (["eval", "/nonexistent"], "/nonexistent: no such run folder"),
    (["extract", "--model", "hiera_mini_32", "--out", "feats.txt"], "use a .safetensors or .npy"),
])
def test_cli_errors_are_one_line(argv, message, capsys):
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("model", ["t2t_vit_t_mini_32", "vit_mini_patch4_32"])
def test_t2t_and_vit_encoders_go_through_the_same_pipeline(tmp_path, images, model):
    shrink = ["model_args.depth=1", "model_args.embed_dim=32", "model_args.num_heads=2"]
    common = [a for a in ft_args(tmp_path / "ft", images, "max_steps=2") if a not in TINY]
    summary = run_ft([*common, f"model={model}", *shrink])
    assert summary["steps"] == 2 and (tmp_path / "ft" / "best" / "classifier.json").exists()
    assert main(["linprobe", f"model={model}", f"init={tmp_path / 'ft' / 'last'}", f"data.source={images}",
                 "data.num_workers=0", "lrs=[0.1]", "epochs=1", "batch_size=8", f"out_dir={tmp_path / 'probe'}"]) == 0
    assert json.loads((tmp_path / "probe" / "linprobe.json").read_text())["feature_dim"] == 32


def test_cli_study_runs_every_row_and_reuses_stages(tmp_path, capsys):
    fmnist = Path(os.environ.get("HIERALAB_FASHION_MNIST", "/usr/share/datasets/fashion-mnist"))
    if not (fmnist / "train-images-idx3-ubyte.gz").exists():
        pytest.skip("Fashion-MNIST is not installed (make data)")
    argv = ["study", "--limit", "256", "--pretrain-epochs", "1", "--finetune-epochs", "1", "--probe-epochs", "2",
            "--seeds", "0", "1", "--out", str(tmp_path / "study"), "--docs", str(tmp_path / "docs")]
    assert main(argv) == 0
    s = json.loads((tmp_path / "study" / "study.json").read_text())
    assert [r["row"][:3] for r in s["rows"]] == ["(a)", "(b)", "(c)", "(d)", "(e)", "(f)"]
    assert [len(r["top1"]) for r in s["rows"]] == [2] * 6  # every row over both seeds
    assert (tmp_path / "study" / "scratch_seed1" / "summary.json").exists()
    for r in s["rows"][3:]:  # the mean validation curve ends at the mean of the reported top-1
        assert r["per_eval"][-1] == pytest.approx(sum(r["top1"]) / 2, abs=0.01)
    assert (tmp_path / "docs" / "mae_study.png").exists() and (tmp_path / "docs" / "mae_study.md").exists()
    capsys.readouterr()
    before = (tmp_path / "study" / "mae" / "summary.json").stat().st_mtime
    assert main(argv) == 0  # everything reused: nothing retrained
    assert (tmp_path / "study" / "mae" / "summary.json").stat().st_mtime == before
    assert "(f) fine-tune its last 2 blocks" in capsys.readouterr().out


def test_evaluations_of_different_data_write_to_different_folders(tmp_path):
    a, b = tmp_path / "a" / "photos", tmp_path / "b" / "photos"  # two folders of the same name
    names = [eval_folder_name(str(a), "test"), eval_folder_name(str(b), "test"),
             eval_folder_name("fashion-mnist", "test"), eval_folder_name("fashion-mnist", "train"),
             eval_folder_name(str(a), "test", (5, 3))]
    assert len(set(names)) == 5 and names[0].startswith("eval-photos-") and names[2] == "eval-fashion-mnist-test"
    assert eval_folder_name(str(a) + "/", "test") == names[0]  # the same data, the same folder


def test_predict_many_files_and_folders_writes_a_csv(tmp_path, images, capsys):
    run_ft(ft_args(tmp_path / "ft", images, "max_steps=1"))
    (tmp_path / "more").mkdir()
    (tmp_path / "more" / "broken.png").write_bytes(b"not an image")
    shutil.copyfile(images / "boxes" / "000.png", tmp_path / "more" / "copy.png")
    assert main(["predict", str(images / "circles"), str(tmp_path / "more"), "--checkpoint", str(tmp_path / "ft"),
                 "--topk", "2", "--batch-size", "5"]) == 0
    out = capsys.readouterr().out
    written = Path(out.strip().splitlines()[-1].split(" to ")[1].split(" (")[0])
    assert written.parent == tmp_path / "ft" / "best" and "(1 unreadable)" in out
    rows = list(csv.DictReader(written.open()))
    assert len(rows) == 24 + 2 and rows[0].keys() == {"file", "label_1", "p_1", "label_2", "p_2", "error"}
    bad = [r for r in rows if r["error"]]
    assert [Path(r["file"]).name for r in bad] == ["broken.png"] and "UnidentifiedImageError" in bad[0]["error"]
    good = [r for r in rows if not r["error"]]
    assert all(r["label_1"] in ("boxes", "circles") and float(r["p_1"]) >= float(r["p_2"]) for r in good)
    one = hieralab.tasks.finetune.predict_image(str(tmp_path / "ft"), str(tmp_path / "more" / "copy.png"), topk=2)
    row = next(r for r in good if r["file"].endswith("copy.png"))
    assert one[0] == (row["label_1"], float(row["p_1"]))  # batched or alone, the same answer
    mine = tmp_path / "mine.csv"
    mine.write_text("my own notes\n")
    common = ["predict", str(tmp_path / "more"), "--checkpoint", str(tmp_path / "ft"), "--csv", str(mine)]
    assert main(common) == 1 and mine.read_text() == "my own notes\n"  # a file of that name: not replaced
    assert "pass --overwrite" in capsys.readouterr().err
    assert main([*common, "--overwrite"]) == 0 and mine.read_text().startswith("file,")


def test_small_data_with_the_imagenet_recipe_is_warned_about(tmp_path, images):
    from hieralab.tasks.finetune import warn_if_underfitting

    default = load_config(FinetuneConfig, None, [])
    message = warn_if_underfitting(default, 120, 1, 1, mixing=True)
    assert "120 training images" in message and "optimizer steps" in message and "finetune_small" in message
    small = load_config(FinetuneConfig, "finetune_small", [])
    assert warn_if_underfitting(small, 120, 1, 1, mixing=small.aug.mixup > 0) is None
    assert warn_if_underfitting(default, 60_000, 1, 1, mixing=True) is None  # large data: the recipe's own case
