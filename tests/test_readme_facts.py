"""The facts the README states hold (issue 21): each test reads the README, finds the fact, and compares it with the
code (config defaults, command-line flags, presets, the registry, the files the tasks write) or with the docs file a
measured number was copied from. ``tests/test_readme.py`` checks that the commands parse and the Python blocks run,
``tests/test_readme_runs.py`` that the commands run; this file checks what the prose and the tables say. Nothing here
trains: models are built on the meta device.

A fact is written here as the README fragment the code implies (``f"... {value} ..."``): a change on either side
fails. Facts the lead has been told are wrong carry ``README_FIX`` (a strict xfail): when the README is corrected the
test passes, and the mark must go.
"""

from __future__ import annotations

import argparse
import dataclasses
import fnmatch
import functools
import inspect
import itertools
import json
import math
import re
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
DOCS = ROOT / "docs"
SRC = ROOT / "src" / "hieralab"
FMNIST_TRAIN = 60_000  # Fashion-MNIST's training split (the demo's data)
README_FIX = pytest.mark.xfail(strict=True, reason="the README states this wrongly; reported to the lead (issue 21)")


def flat(text: str) -> str:
    """Text with its line breaks and runs of spaces as one space: the README wraps its prose anywhere."""
    return " ".join(text.split())


FLAT = flat(README)


def says(*fragments: str) -> None:
    for fragment in fragments:
        assert flat(fragment) in FLAT, f"the README does not say {fragment!r}"


def g(x: float) -> str:
    return f"{x:g}"


def e(x: float) -> str:
    """``5e-4`` as the README writes it (not ``5e-04``)."""
    mantissa, exponent = f"{x:.0e}".split("e")
    return f"{mantissa}e{int(exponent)}"


# ---------------------------------------------------------------- what the code and the docs hold
@functools.cache
def subparsers() -> dict[str, argparse.ArgumentParser]:
    from hieralab.cli import build_parser

    parser = build_parser()
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices


def flag_default(command: str, dest: str):
    return subparsers()[command].get_default(dest)


def preset(name: str) -> dict:
    from hieralab.config.schema import read_preset

    return read_preset(name)


def config_keys(cls: type, prefix: str = "") -> set[str]:
    """Every dotted key of a config dataclass (sections included, e.g. ``data`` and ``data.source``)."""
    import typing

    keys = set()
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        keys.add(prefix + f.name)
        if dataclasses.is_dataclass(hints[f.name]):
            keys |= config_keys(hints[f.name], f"{prefix}{f.name}.")
    return keys


def doc(name: str) -> str:
    return (DOCS / name).read_text()


def doc_json(name: str) -> dict:
    return json.loads(doc(name))


def doc_rows(text: str, after: str = "") -> list[list[str]]:
    """The cells of the first Markdown table after ``after`` in ``text`` (header and separator left out)."""
    lines = text[text.index(after):].splitlines() if after else text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    rows = list(itertools.takewhile(lambda line: line.startswith("|"), lines[start:]))[2:]
    return [[c.strip() for c in row.strip().strip("|").split(" | ")] for row in rows]


def numbers(cells: list[str]) -> list[str]:
    return re.findall(r"\d+(?:\.\d+)?", " ".join(cells))


def mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


@functools.cache
def study() -> dict:
    return doc_json("mae_study.json")


@functools.cache
def dense_study() -> dict:
    return doc_json("dense_study.json")


def study_row(prefix: str) -> dict:
    return next(r for r in study()["rows"] if r["row"].startswith(prefix))


def dense_row(name: str) -> dict:
    return next(r for r in dense_study()["rows"] if r["row"] == name)


def finetune_seconds() -> float:
    return sum(r["seconds"] for r in study()["rows"] if r["seconds"])


def probe_seconds() -> float:
    return float(re.search(r"rows a-c: (\d+) s", study_row("(c)")["note"]).group(1))


def demo_steps() -> int:
    p = preset("mae_hiera_fmnist")
    return math.ceil(FMNIST_TRAIN * p["epochs"] / p["optim"]["batch_size"])


def demo_probe_steps() -> list[int]:
    from hieralab.tasks.pretrain import probe_due

    n = demo_steps()
    return [s for s in range(1, n + 1) if probe_due(s, n, n, preset("mae_hiera_fmnist").get("knn_every"))]


def model_config(name: str) -> dict:
    from hieralab.models.registry import model_config as config

    return config(name)


def on_meta(name: str) -> torch.nn.Module:
    import hieralab

    with torch.device("meta"):
        return hieralab.create_model(name)


def bench_row(text: str, *match: str) -> list[str]:
    return next(r for r in doc_rows(text) if r[:len(match)] == list(match))


# ---------------------------------------------------------------- facts: the README fragment the code implies
def _demo() -> list[str]:
    from hieralab.config.schema import DataConfig

    p = preset("mae_hiera_fmnist")
    assert p["epochs"] == 0.5 and DataConfig().source == p["data"]["source"] == "fashion-mnist"
    return [f"MAE-pretrain a small Hiera (`{p['model']}`) on Fashion-MNIST, the bundled default data",
            f"({demo_steps()} optimizer steps of {p['optim']['batch_size']} images, half an epoch",
            f"What `make demo` writes, in `{p['out_dir']}/`",
            f"(`norm_pix_loss: {str(p['model_args']['norm_pix_loss']).lower()}` in its preset)"]


def _demo_makefile() -> list[str]:
    make = (ROOT / "Makefile").read_text()
    assert "hieralab pretrain --preset mae_hiera_fmnist --resume" in make
    assert "hieralab bench" in make and flag_default("bench", "models") == "hiera_*"
    return ["Run again, it resumes the same run (`--resume`)",
            "`make bench` times every registered Hiera against the official package"]


def _demo_probes() -> list[str]:
    from hieralab.config.schema import PretrainConfig
    from hieralab.tasks.pretrain import probe_due

    steps, cfg = demo_probe_steps(), PretrainConfig()
    probes = inspect.signature(probe_due).parameters["probes"].default
    return [f"online k-NN probe of the encoder {len(steps)} times",
            f"the {len(steps)} probes",
            f"after the first step, {probes} times over the run and after the last",
            f"{cfg.knn_bank} training images vote for {cfg.knn_queries} test images, {len(steps)} probes",
            f"at step {steps[1]} while the encoder leaves its initialisation"]


def _demo_mask() -> list[str]:
    c = model_config("mae_hiera_mini_32")
    stride = c["patch_stride"][0]
    unit_px = stride * c["mask_unit_size"][0]
    units = (c["input_size"][0] // unit_px) ** 2
    r = c["mask_ratio"]
    target_px = stride * 2 ** c["q_pool"]  # the MAE predicts patches at the last pooled stage's stride
    return [f"of the {units} {unit_px}x{unit_px}-px mask units hidden",
            (f"the {g(100 * r)} % mask ratio rounded to whole units, as the official code keeps "
             f"int({units} x {g(round(1 - r, 6))}) = {int(units * (1 - r))}"),
            f"a {target_px}x{target_px}-px patch of a garment"]


def _library() -> list[str]:
    import hieralab

    names = hieralab.list_models()
    h = on_meta("hiera_base_224")
    mae, vit = model_config("mae_hiera_base_224"), model_config("mae_vit_base_patch16_224")
    unit_px = h.patch_stride[0] * h.mask_unit_size[0]
    units = (224 // unit_px) ** 2
    patches = (224 // vit["patch_size"]) ** 2
    return [f"hieralab.list_models() # {names[:2]!r}"[:-1] + ", ...]",
            f"mask units ({unit_px} px for the image models)",
            f"({units} units at 224 px)",
            f"draws a mask: {g(100 * mae['mask_ratio'])} % of the {units} mask units hidden",
            f"plain-ViT MAE, {g(100 * vit['mask_ratio'])} % of the {patches} patches hidden"]


def _t2t() -> list[str]:
    t2t = on_meta("t2t_vit_14")
    _, h, w, c = t2t.tokens_to_token(torch.empty(1, 3, 200, 120, device="meta")).shape
    tokens = t2t.forward_features(torch.empty(1, 3, 200, 120, device="meta")).shape
    assert tokens == (1, 1 + h * w, c)
    return [f"# [1, 1 + {h}*{w}, {c}]: any size",
            f"# {list(t2t.tokens_to_token(torch.empty(1, 3, 224, 224, device='meta')).shape)}: soft split"]


def _weights_env() -> list[str]:
    source = "".join(p.read_text() for p in (SRC / "weights").glob("*.py"))
    for name in ("HIERALAB_CACHE", "HIERALAB_OFFLINE", "HIERALAB_MIRROR", ".cache/hieralab"):
        assert name in source, name
    return ["(`HIERALAB_CACHE`, else `~/.cache/hieralab`", "`HIERALAB_OFFLINE=1` reads the cache only",
            "`HIERALAB_MIRROR=<base URL>`"]


def _command_defaults() -> list[str]:
    from hieralab.config.schema import (
        DataConfig,
        DetectConfig,
        LinprobeConfig,
        PretrainConfig,
        preset_names,
    )

    pretrain_presets = [n for n in preset_names() if preset(n).get("task") == "pretrain"]
    assert all(preset(n)["out_dir"] == f"runs/{n}" for n in pretrain_presets)  # "default runs/<preset>"
    assert flag_default("eval", "score_threshold") == DetectConfig().score_threshold
    assert flag_default("extract", "k") == PretrainConfig().knn_k
    decoders = DataConfig.__dataclass_fields__["video_decoder"].metadata["check"]("?")  # "must be one of 'auto', ..."
    return [f"`--max-gflops` (default {g(flag_default('bench', 'max_gflops'))})",
            f"`--preset` is a name (`{flag_default('pretrain', 'preset')}`, the default",
            "Writes to `out_dir` (default `runs/<preset>`)",
            f"to `out_dir` (default `{LinprobeConfig().out_dir}`)",
            "every row over `--seeds` (default " + " ".join(map(str, flag_default("study", "seeds"))) + ")",
            f"kept and drawn from `--score-threshold`, default {g(flag_default('predict', 'score_threshold'))}",
            "`data.num_frames` (default the model's)" if DataConfig().num_frames is None else "data.num_frames",
            f"`data.shuffle_buffer`, default {DataConfig().shuffle_buffer}",
            f"`data.video_decoder={DataConfig().video_decoder}` (the default)",
            "`data.video_decoder=" + "\\|".join(re.findall(r"'(\w+)'", decoders)) + "`",
            f"(k={PretrainConfig().knn_k}, cosine, T={g(_knn_temperature())})"]


def _knn_temperature() -> float:
    from hieralab.engine import evaluate

    fn = next(f for _, f in inspect.getmembers(evaluate, inspect.isfunction)
              if "temperature" in inspect.signature(f).parameters)
    return inspect.signature(fn).parameters["temperature"].default


def _finetune() -> list[str]:
    from hieralab.config.schema import AugConfig, FinetuneConfig

    cfg, small = FinetuneConfig(), preset("finetune_small")
    lr = small["optim"]["base_lr"] * small["optim"]["batch_size"] / 256
    assert cfg.aug.mixup > 0 and cfg.aug.cutmix > 0 and small["aug"]["mixup"] == small["aug"]["cutmix"] == 0
    assert cfg.ema_decay is None  # "ema_decay=0.9999 for an EMA": off unless asked
    return [f"(`layer_decay={g(cfg.layer_decay)}`)",
            f"mixup {g(AugConfig().mixup)} / cutmix {AugConfig().cutmix:.1f}",
            (f"the default recipe is ImageNet's (lr {e(cfg.optim.base_lr)} x batch / 256, mixup / cutmix, "
             f"{g(cfg.epochs)} epochs)"),
            (f"this preset trains at lr {e(lr)} at batch {small['optim']['batch_size']} for {small['epochs']} epochs "
             "on milder crops, without mixup / cutmix")]


def _export() -> list[str]:
    from hieralab.tasks import export

    return [f"max abs difference <= {e(inspect.signature(export.run).parameters['atol'].default)}"]


def _cli_error() -> list[str]:
    import contextlib
    import io
    import os
    import tempfile

    from hieralab.cli import main

    err, here = io.StringIO(), os.getcwd()
    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stderr(err):
        os.chdir(tmp)  # (contextlib.chdir is Python 3.11+)
        try:
            assert main(["pretrain", "optim.batch_size=0"]) != 0  # refused before a run folder is touched
        finally:
            os.chdir(here)
    (line,) = err.getvalue().splitlines()
    return [f"a mistake is one line per problem (`{line}`)"]


def _detect() -> list[str]:
    from hieralab.config.schema import DetectConfig

    cfg = DetectConfig()
    steps = round(cfg.epochs * cfg.data.scenes_train / cfg.optim.batch_size)
    per_run = dense_study()["total_seconds"] / (len(dense_study()["rows"]) * len(dense_study()["seeds"])) / 60
    hours = steps / dense_study()["steps"] * round(per_run) / 60
    lr = cfg.optim.base_lr * cfg.optim.batch_size / 256
    lo, hi = cfg.data.scale_range
    assert cfg.head == "maskrcnn" and flag_default("study-dense", "encoder") == "hiera_mini_32"
    return [(f"(the default {g(cfg.epochs)} epochs of the {cfg.data.scenes_train} scenes, {steps} steps, take about "
             f"{g(hours)} hours on 2 cores, going by the {dense_study()['steps']}-step runs of `study-dense`, about "
             f"{round(per_run)} minutes each with their scoring)"),
            f"(`hiera_mini_32`, FPN neck of {cfg.neck_channels} channels)",
            (f"{flag_default('study-dense', 'steps')} steps of {cfg.optim.batch_size} crops of {cfg.data.img_size} px "
             f"(ViTDet's recipe: AdamW, lr {e(lr)} at batch {cfg.optim.batch_size}, weight decay "
             f"{g(cfg.optim.weight_decay)}, layer decay {g(cfg.layer_decay)}, drop path {g(cfg.drop_path)}, "
             f"scale jitter {g(lo)}-{g(hi)}"),
            f"({cfg.data.scenes_train} training canvases", f"{cfg.data.scenes_val} validation scenes made"]


def _scenes() -> list[str]:
    from hieralab.data import scenes
    from hieralab.data.fashion_mnist import CLASSES

    (c0, c1), (n0, n1), (s0, s1) = scenes.CANVAS, scenes.GARMENTS, scenes.GARMENT_SIZE
    return [f"{c0}-{c1} px canvases with {n0}-{n1} garments ({s0}-{s1} px, overlapping)",
            f"of {c0}-{c1} px with {n0}-{n1} overlapping garments",
            f"a legend of the {len(CLASSES)} classes", f"mIoU over the {len(CLASSES) + 1} classes"]


def _action() -> list[str]:
    from hieralab.config.schema import ActionConfig
    from hieralab.data import fmnist_actions

    cfg = ActionConfig()
    a0, a1 = fmnist_actions.ACTORS
    return [f"(default the mini video Hiera `{cfg.model}`)",
            (f"(written once to `{cfg.data.actions_root}`: {fmnist_actions.FRAMES}-frame MP4s in which {a0} to {a1} "
             "garments move"),
            f"pretrains on all {cfg.data.actions_train + cfg.data.actions_val} bundled clips",
            f"pretrains on the {cfg.data.actions_train} training clips only",
            f"which the action head's default `feature={cfg.feature}` takes"]


def _video_vit() -> list[str]:
    big, mae = model_config("vit_base_patch16_video"), model_config("mae_vit_base_patch16_video")
    t, s = big["input_size"][0], big["input_size"][1]
    tp, p = big["t_patch_size"], big["patch_size"]
    mini = model_config("vit_mini_patch4_video")
    assert all(model_config(f"mae_vit_{n}_video")["mask_ratio"] == mae["mask_ratio"]
               for n in ("base_patch16", "large_patch16", "huge_patch16", "mini_patch4"))
    return [(f"`vit_{{base,large,huge}}_patch16_video` at {t}x{s} ({tp}x{p}x{p} tubelets: {t // tp}x{s // p}x{s // p} "
             "tokens of global attention"),
            (f"`vit_mini_patch4_video` ({mini['input_size'][0]}x{mini['input_size'][1]}, "
             f"{mini['t_patch_size']}x{mini['patch_size']}x{mini['patch_size']} tubelets)"),
            f"({g(100 * mae['mask_ratio'])} % of the tokens hidden, a {mae['decoder_depth']}-block decoder",
            f"{mae['pred_t_dim']} predicted frames"]


def _sam2_mini() -> list[str]:
    sam, hiera = model_config("sam2_hiera_mini_32"), model_config("hiera_mini_32")
    for key in ("embed_dim", "num_heads", "stages", "patch_kernel", "patch_stride", "patch_padding"):
        assert sam[key] == hiera[key], key
    return ["(`sam2_hiera_mini_32` is the demo's `hiera_mini_32` in SAM 2's layout)"]


def _study_recipe() -> list[str]:
    from hieralab.config.schema import FinetuneConfig, LinprobeConfig
    from hieralab.experiments import study as study_module

    enc = flag_default("study", "encoder")
    c = model_config(enc)
    params = sum(p.numel() for p in on_meta(enc).parameters())
    mae = model_config(preset(flag_default("study", "preset"))["model"])
    ft = FinetuneConfig()
    source = inspect.getsource(study_module)
    batch = int(re.search(r'"optim\.batch_size=(\d+)"', source).group(1))
    warmup = re.search(r'"optim\.warmup_epochs=([\d.]+)"', source).group(1)
    assert len(study_module.LRS) == len(LinprobeConfig().lrs)
    return [(f"MAE-pretrains `{enc}` ({c['embed_dim']}-d, {c['depth']} blocks, {params / 1e6:.1f} M parameters, "
             f"{g(100 * mae['mask_ratio'])} % masking) for {g(flag_default('study', 'pretrain_epochs'))} epochs"),
            (f"the best of {len(study_module.LRS)} learning rates each, {flag_default('study', 'probe_epochs')} "
             "epochs on frozen features"),
            (f"{g(flag_default('study', 'finetune_epochs'))} epochs, AdamW lr {e(ft.optim.base_lr * batch / 256)} "
             f"(base {e(ft.optim.base_lr)} at batch 256, betas {g(ft.optim.betas[0])} / {g(ft.optim.betas[1])}), "
             f"{warmup}-epoch warmup, label smoothing {g(ft.aug.smoothing)}, drop path {g(ft.drop_path)}, layer decay "
             f"{g(ft.layer_decay)} for (e)/(f)"),
            f"(f) fine-tune its last {flag_default('study', 'trainable_blocks')} blocks"]


def _presets_at_scale() -> list[str]:
    from hieralab.config.schema import preset_names

    names = preset_names()
    in1k = [n for n in names if re.fullmatch(r"mae_hiera_\w+_in1k", n)]
    k400 = [n for n in names if re.fullmatch(r"mae_hiera_\w+_k400", n)]
    assert {preset(n)["epochs"] for n in in1k} == {1600}
    assert {preset(n)["epochs"] * preset(n)["data"]["repeat_aug"] for n in k400} == {3200}
    videos = {preset(n)["optim"]["batch_size"] * preset(n)["optim"].get("accum_steps", 1) * 8 for n in k400}
    repeats = {preset(n)["data"]["repeat_aug"] for n in k400}
    assert len(videos) == len(repeats) == 1
    (v,), (r,) = videos, repeats
    randaug = {preset(n)["aug"]["randaug"] for n in names if re.fullmatch(r"finetune_hiera_\w+_k400", n)}
    (m, std), = {re.match(r"rand-m(\d+)-mstd([\d.]+)", a).groups() for a in randaug}
    return ["(1600 epochs on IN-1K, 3200 effective epochs on K400",
            f"(3200 effective = `epochs: {3200 // r}` with `repeat_aug: {r}`)",
            f"({v * r} = {v} videos x {r} repeated samples",
            f"RandAugment ({m}, {std})"]


def _shards() -> list[str]:
    size = flag_default("shards", "shard_size")
    last = re.search(r"shard-\{000000\.\.(\d{6})\}\.tar", README).group(1)
    return [f"--shard-size {size} # once: {int(last) + 1} tar shards + shards.json"]


def _run_folder() -> list[str]:
    from hieralab.engine.trainer import Health

    return [f"a running loss more than {g(Health.FACTOR)}x its best"]


def _study_prose() -> list[str]:
    d, b, c, sc, ft, f = (study_row(p) for p in ("(d)", "(b)", "(c)", "(d)", "(e)", "(f)"))
    total = (study()["pretrain_seconds"] + probe_seconds() + finetune_seconds()) / 60
    return [(f"about {int(total // 60)} h {round(total % 60)} min on this 2-core machine: "
             f"{round(study()['pretrain_seconds'] / 60)} min of MAE pretraining, {round(probe_seconds() / 60)} min of "
             "frozen features and probes"),
            f"(about {int(total // 60)} h {round(total % 60)} min on 2 cores)",
            f"{study()['train_images']:,} training images (final loss {study()['pretrain_final_loss']:.3f})",
            f"on the {study()['test_images']:,} test images",
            f"by {mean(c['top1']) - mean(b['top1']):.1f} points** ({mean(c['top1']):.2f} vs {mean(b['top1']):.2f})",
            f"by {mean(ft['top1']) - mean(sc['top1']):.2f} points** ({mean(ft['top1']):.2f} ±",
            f"(MAE's worst seed {min(ft['top1']):.2f}, scratch's best {max(sc['top1']):.2f})",
            f"({ft['per_eval'][0]:.2f} vs {d['per_eval'][0]:.2f}, +{ft['per_eval'][0] - d['per_eval'][0]:.1f})",
            f"({f['per_eval'][0]:.2f} vs {d['per_eval'][0]:.2f})"]


def _study_finetune_minutes() -> list[str]:
    return [f"{round(finetune_seconds() / 60)} min for the nine fine-tuning runs"]


def _dense_prose() -> list[str]:
    mae, rnd = dense_row("MAE encoder"), dense_row("random init")
    runs = len(dense_study()["rows"]) * len(dense_study()["seeds"])
    return [(f"+{mean(mae['bbox_AP']) - mean(rnd['bbox_AP']):.1f} box AP, "
             f"+{mean(mae['segm_AP']) - mean(rnd['segm_AP']):.1f} mask AP"),
            (f"(about {round(dense_study()['total_seconds'] / 3600)} hour on 2 cores: {runs} runs of "
             f"{dense_study()['steps']} steps)")]


def _dense_minutes_per_run() -> list[str]:
    runs = len(dense_study()["rows"]) * len(dense_study()["seeds"])
    return [f"each run ~{round(dense_study()['total_seconds'] / runs / 60)} min"]


def _bench_prose() -> list[str]:
    ckpt = bench_row(doc("bench_checkpointing.md"), "mae_hiera_base_224")
    loader = doc_rows(doc("bench_video_loader.md"))
    ratios = [float(r[3]) for r in loader if "torchcodec" in r[0]]
    clips = [float(r[1]) for r in loader if "loader" in r[0]]
    forward = float(next(r[1] for r in loader if r[0].startswith("Hiera-B")))
    mae = doc_rows(doc("bench_mae.md"), "| model | batch | variant | AdamW |")
    speedup = {m: float(bench_row_in(mae, m, "8", "ours dense (mask 0)")[4]) /
               float(bench_row_in(mae, m, "8", "ours")[4]) for m in ("mae_hiera_tiny_224", "mae_hiera_base_224")}
    hiera = doc_rows(doc("bench_hiera.md"))
    packed, eager = (bench_row_in(hiera, "hiera_base_16x224", "8", impl)[-1] for impl in ("ours+packed", "ours"))
    compile_rows = doc_rows(doc("bench_compile.md"))
    dense = doc_rows(doc("bench_dense.md"))
    vs_timm = [float(re.match(r"([\d.]+)x", r[-1]).group(1)) for r in dense if r[2] == "ours"]
    step = {r[0] + r[1]: r for r in doc_rows(doc("bench_dense.md"), "| input | activation")}
    off, on = step["512x512checkpointing off"], step["512x512checkpointing on"]
    peers = doc("bench_peers.md")
    peak = re.search(r"measured fp32 matmul peak (\d+) GFLOP/s", peers).group(1)
    ckpt_peak = re.search(r"(\d+) GFLOP/s", doc("bench_checkpointing.md")).group(1)
    dense_peak = re.search(r"matmul peak (\d+) GFLOP/s", doc("bench_dense.md")).group(1)
    return [f"Checkpointing halves the MAE-Hiera-B step's activation memory for {ckpt[7]}x its time",
            (f"(Peak: the step's resident memory over what the weights, gradients and AdamW state hold; "
             f"{ckpt_peak} GFLOP/s fp32 matmul"),
            (f"torchcodec delivers {min(ratios):.2f}-{max(ratios):.2f}x PyAV's clips/s, and either is "
             f"{round(min(clips) / forward)}-{round(max(clips) / forward)}x what a Hiera-B 16x224"),
            (f"Masking 60 % of the units makes our step {speedup['mae_hiera_tiny_224']:.1f}x (T) to "
             f"{speedup['mae_hiera_base_224']:.2f}x (B) faster than the dense step"),
            f"runs {packed} faster than the official with `optimize_for_inference` ({eager} eager)",
            f"({peak} GFLOP/s in this run)",
            "on this CPU (" + " / ".join(r[5] for r in compile_rows) + ",",
            f"Ours runs {min(vs_timm):.2f}-{max(vs_timm):.2f}x timm's speed",
            f"; {dense_peak} GFLOP/s fp32 matmul at 2 threads",
            (f"cuts the step's peak memory {float(off[3]) / float(on[3]):.1f}x for "
             f"{float(on[2]) / float(off[2]):.2f}x the time")]


def _bench_dense_memory() -> list[str]:
    dense = doc_rows(doc("bench_dense.md"))
    saved = [100 * (1 - float(o[5]) / float(t[5])) for o, t in zip(dense[::2], dense[1::2])]
    return [f"with {round(min(saved))}-{round(max(saved))} % less peak memory"]


def _peers_prose() -> list[str]:
    rows = {(r[0], r[1]): r for r in doc_rows(doc("bench_peers.md"), "### inference, batch 8")}
    mae = {r[1]: r for r in doc_rows(doc("bench_peers.md"), "### MAE step, batch 8")}
    vit, hb = float(rows["ViT-B/16", "timm"][4]), float(rows["Hiera-B", "ours (packed)"][4])
    dense, sparse = float(mae["ours encoder, mask 0"][4]), float(mae["ours encoder, mask 0.6"][4])
    stages = doc_rows(doc("bench_stages.md"))

    def pct(impl: str, *which: str) -> list[int]:  # "% of matmul peak" of stages `which`
        parts = {f"stage {w}" for w in which}
        return [int(r[5].rstrip("%")) for r in stages if r[0] == impl and r[1].split(" (")[0] in parts]

    late, early = pct("ours (packed)", "3", "4"), pct("ours (packed)", "1", "2")
    official = set(pct("official", "3", "4"))
    (official_late,) = official
    cap = re.search(r"= ([\d.]+)x faster than official\+fused", doc("bench_mae.md")).group(1)
    return [(f"our packed stages 3-4 run at {min(late)}-{max(late)} % of the matmul peak and stages 1-2 (96- and "
             f"192-wide GEMMs) at {min(early)}-{max(early)} %"),
            f"(its stages 3-4 at {official_late} %)",
            f"caps any implementation at ~{cap}x over the official one",
            f"the counted FLOP ratio is {vit:.2f} / {hb:.2f} = {vit / hb:.2f}x",
            f"a counted FLOP ratio of {dense:.2f} / {sparse:.2f} = {dense / sparse:.2f}x"]


def bench_row_in(rows: list[list[str]], *match: str) -> list[str]:
    return next(r for r in rows if r[:len(match)] == list(match))


FACTS = {
    "demo": _demo, "demo_makefile": _demo_makefile, "demo_probes": _demo_probes, "demo_mask": _demo_mask,
    "library": _library, "t2t_shapes": _t2t, "weights_env": _weights_env, "command_defaults": _command_defaults,
    "finetune": _finetune, "export": _export, "cli_error": _cli_error, "detect": _detect, "scenes": _scenes,
    "action": _action, "video_vit": _video_vit, "sam2_mini": _sam2_mini, "study_recipe": _study_recipe,
    "presets_at_scale": _presets_at_scale, "shards": _shards, "run_folder": _run_folder,
    "study_prose": _study_prose, "dense_prose": _dense_prose, "bench_prose": _bench_prose, "peers_prose": _peers_prose,
    "study_finetune_minutes": _study_finetune_minutes,
    "dense_minutes_per_run": _dense_minutes_per_run,
    "bench_dense_memory": _bench_dense_memory,
}


@pytest.mark.parametrize("fact", list(FACTS.values()), ids=list(FACTS))
def test_the_readme_says_what_the_code_and_docs_hold(fact):
    says(*fact())


# ---------------------------------------------------------------- the benchmark tables equal their docs
def same_label(row: list[str]):
    return lambda d: d[0] == row[0]


def first_word(row: list[str]):
    return lambda d: d[0] == row[0].split()[0]


def loader_label(row: list[str]):
    key = re.sub(r"workers?$", "workers", row[0].strip("()"))
    return lambda d: d[0] == key or d[0].endswith(", " + key)


def mae_label(row: list[str]):
    return lambda d: d[0] == row[0] and d[2] in ("official", "ours")


def px_label(row: list[str]):
    side = re.match(r"(\d+) px", row[0]).group(1)
    return lambda d: d[0] == f"{side}x{side}"


# id: (the README table's header line, the docs file it cites, text before the docs table, how a README row finds its
# docs rows: None = the same row, else every number of the README row is in the docs rows its label names)
TABLES = {
    "shards": ("| source | images / s | vs folder |", "bench_shards.md", "", same_label),
    "video_loader": ("| loader | PyAV clips / s |", "bench_video_loader.md", "", loader_label),
    "checkpointing": ("| MAE (fp32, batch 8, 224 px) |", "bench_checkpointing.md", "", first_word),
    "peers_targets": ("| target | wanted | measured | met |", "bench_peers.md", "## Targets", None),
    "peers_inference": ("Inference, batch 8 (batch 1", "bench_peers.md", "### inference, batch 8", None),
    "peers_training": ("Training step, batch 8:", "bench_peers.md", "### train step, batch 8", None),
    "peers_mae": ("MAE-Hiera-B step, batch 8, mask 0.6", "bench_peers.md", "### MAE step, batch 8", None),
    "mae_step": ("| model | official ms | ours ms |", "bench_mae.md", "| model | batch | variant | AdamW |", mae_label),
    "dense_backbone": ("| backbone + FPN |", "bench_dense.md", "", first_word),
    "dense_training": ("| Hiera-B training step, batch 2 |", "bench_dense.md", "| input | activation", px_label),
    "mae_study": ("| row | test top-1 (%) |", "mae_study.md", "", None),
    "dense_study": ("| encoder | box AP |", "dense_study.md", "", None),
    "precision_inference": ("Hiera-B inference in fp32 and bf16:", "bench_precision.md",
                            "### Run 6: Hiera-B inference", None),
    "precision_training": ("The MAE-Hiera-B step in fp32 and bf16", "bench_precision.md",
                           "### Run 6: MAE-Hiera-B step", None),
}


@pytest.mark.parametrize("table", list(TABLES.values()), ids=list(TABLES))
def test_a_benchmark_table_equals_the_docs_file_it_cites(table):
    anchor, name, doc_anchor, key = table
    rows, docs = doc_rows(README, anchor), doc_rows(doc(name), doc_anchor)
    assert rows and f"docs/{name}" in README
    for row in rows:
        if key is None:
            assert row in docs, f"README row {row} is not in docs/{name}"
            continue
        found = [d for d in docs if key(row)(d)]
        assert found, f"README row {row[0]!r} names no row of docs/{name}"
        missing = [n for n in numbers(row[1:]) if n not in numbers([c for d in found for c in d[1:]])]
        assert not missing, f"README row {row[0]!r}: {missing} are not in docs/{name}'s row(s) {found}"


# ---------------------------------------------------------------- names: models, presets, weights
def code_spans(text: str | None = None) -> list[str]:
    """The README's inline code spans (code blocks left out: test_readme.py runs or parses those)."""
    text = re.sub(r"```.*?```", "", README if text is None else text, flags=re.DOTALL)
    return re.findall(r"`([^`\n]+)`", text)


def expand(name: str) -> list[str]:
    """``t2t_vit_{7,10}`` -> ``t2t_vit_7``, ``t2t_vit_10``; ``<size>`` reads as ``*``."""
    name = name.replace("<size>", "*")
    match = re.search(r"\{([^{}]*)\}", name)
    if not match:
        return [name]
    return [n for part in match.group(1).split(",") for n in expand(name[:match.start()] + part + name[match.end():])]


def named_models() -> list[str]:
    pattern = r"(?:mae_|finetune_)?(?:hiera|vit|t2t_vit|sam2_hiera)(?:_[\w*{},<>]*)?(?:\.\w+)?"
    return sorted({n for span in code_spans() if re.fullmatch(pattern, span) for n in expand(span)})


@pytest.mark.parametrize("name", named_models())
def test_a_model_preset_or_weights_name_the_readme_gives_exists(name):
    import hieralab
    from hieralab import weights
    from hieralab.config.schema import preset_names

    known = set(hieralab.list_models()) | set(preset_names())
    if "." in name:  # a catalog name: model.tag
        model, tag = weights.split_name(name)
        assert any(w.model == model and w.tag == tag for w in weights.entries()), name
    elif "*" in name:
        assert fnmatch.filter(known, name), f"{name} matches no model or preset"
    else:
        assert name in known, f"{name} is neither a registered model nor a preset"


def test_the_model_families_and_preset_sizes_the_readme_counts():
    import hiera

    import hieralab
    from hieralab.config.schema import preset_names

    official = [n for n in dir(hiera) if re.fullmatch(r"hiera_\w+_(?:16x)?224", n)]
    words = {10: "ten"}
    says(f"all {words[len(official)]} official configurations plus timm's abswin variants")
    assert set(official) <= set(hieralab.list_models()) and fnmatch.filter(hieralab.list_models(), "hiera_*abswin*")
    sizes = {"T": "tiny", "S": "small", "B": "base", "B+": "base_plus", "L": "large", "H": "huge"}

    def of(pattern: str) -> set[str]:
        return {m.group(1) for n in preset_names() if (m := re.fullmatch(pattern, n))}

    image, video = of(r"mae_hiera_(\w+)_in1k"), of(r"mae_hiera_(\w+)_k400")
    assert image == of(r"finetune_hiera_(\w+)_in1k") and video == of(r"finetune_hiera_(\w+)_k400")
    says("`finetune_hiera_<size>_in1k` for " + ", ".join(k for k, v in sizes.items() if v in image),
         "the video " + ", ".join(k for k, v in sizes.items() if v in video) + " (16x224)",
         "`mae_hiera_{" + ",".join(v for v in sizes.values() if v in image) + "}_in1k`",
         "`mae_hiera_{" + ",".join(v for v in sizes.values() if v in video) + "}_k400`")


# ---------------------------------------------------------------- flags and config keys
def command_rows() -> list[list[str]]:
    return doc_rows(README, "| command | example | what it does / writes |")


def row_commands(row: list[str]) -> list[str]:
    """The subcommands a command-table row is about (its first cell): ``hieralab eval` / `predict`` -> both."""
    names = set(subparsers())
    words = [w for w in re.findall(r"[\w-]+", row[0].replace("hieralab.cli", "")) if w in names]
    # a row named by what it sets ("scale keys", "python -m hieralab"): the command of its example
    return words or [w for w in re.findall(r"hieralab(?:\.cli)?(?: --\w+)* ([\w-]+)", row[1]) if w in names][:1]


def flags_in(text: str) -> list[str]:
    text = re.sub(r"torchrun --nproc_per_node \d+", "", text)
    return sorted(set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", text)))


GLOBAL_FLAGS = {"--version", "--debug", "--quiet", "--help"}


@pytest.mark.parametrize("row", command_rows(), ids=lambda r: re.sub(r"\W+", "_", r[0])[:40])
def test_a_command_rows_flags_are_its_commands(row):
    allowed = set(GLOBAL_FLAGS)
    for command in row_commands(row):
        allowed |= {o for a in subparsers()[command]._actions for o in a.option_strings}
    unknown = [f for f in flags_in(" | ".join(row)) if f not in allowed]
    assert not unknown, f"{row[0]}: {unknown} are not flags of {row_commands(row)}"


def test_every_flag_the_readme_names_exists():
    """In prose too: a flag of some hieralab command, or of the benchmark script the README runs with it."""
    ours = GLOBAL_FLAGS | {o for p in subparsers().values() for a in p._actions for o in a.option_strings}
    scripts = "".join(p.read_text() for p in (ROOT / "benchmarks").glob("*.py"))
    text = re.sub(r"`tensorboard [^`]*`", "", re.sub(r"```.*?```", "", README, flags=re.DOTALL))  # tensorboard's own
    unknown = [f for f in flags_in(text)
               if f not in ours and f'"{f}"' not in scripts]
    assert not unknown, f"the README names flags nothing has: {unknown}"


def task_keys(*names: str) -> set[str]:
    from hieralab.tasks import TASKS

    tasks = [TASKS[n] for n in names] if names else [t for t in TASKS.values() if getattr(t, "config", None)]
    return set().union(*(config_keys(t.config) for t in tasks if getattr(t, "config", None)))


def readme_keys() -> list[tuple[str, tuple[str, ...]]]:
    """Every ``key=value`` and bare ``data.*`` / ``optim.*`` / ``aug.*`` key of the README's inline code, with the
    training commands of its command-table row (empty: any command's keys will do)."""
    from hieralab.tasks import TASKS

    found: dict[str, set[tuple[str, ...]]] = {}
    rows = {" | ".join(r): tuple(c for c in row_commands(r) if c in TASKS) for r in command_rows()}
    prose = re.sub(r"^\|.*$", "", re.sub(r"```.*?```", "", README, flags=re.DOTALL), flags=re.MULTILINE)
    for text, scope in [*rows.items(), (prose, ())]:
        for span in code_spans(text):
            if re.match(r"(hieralab|torchrun|python|benchmarks|\.venv)\b", span) or "(" in span:
                continue  # a command (test_readme.py loads its keys) or a call
            keys = re.findall(r"(?<![\w.-])([a-z_]+(?:\.[a-z_]+)*)=", span)
            keys += re.findall(r"^((?:data|optim|aug)\.[a-z_]+)$", span)
            for k in keys:
                found.setdefault(k, set()).add(scope)
    return sorted((k, s) for k, scopes in found.items() for s in scopes)


KEYS_TO_FIX: set[str] = set()  # keys the README names wrongly (none known)


def python_arguments() -> dict:
    """``name=`` spans of the README that are a function's arguments, not config keys: the function."""
    import hieralab

    return {"checkpoint": hieralab.create_model, "weights_only": torch.load, "key": None}  # key=value: the form


@pytest.mark.parametrize("key,scope", [pytest.param(k, s, marks=README_FIX) if k in KEYS_TO_FIX else (k, s)
                                       for k, s in readme_keys()],
                         ids=lambda v: v if isinstance(v, str) else "+".join(v) or "any")
def test_a_config_key_the_readme_names_exists(key, scope):
    if key in python_arguments():
        fn = python_arguments()[key]
        assert fn is None or key in inspect.signature(fn).parameters, f"{key}= is no argument of {fn}"
        return
    top = key.split(".")[0]
    keys = task_keys(*scope)
    assert key in keys or (top == "model_args" and top in keys), f"{key} is no config key of {scope or 'any task'}"


# ---------------------------------------------------------------- the layout, the run folder, what a run writes
def layout() -> dict[str, str]:
    """The README's Layout block: folder (``models/``, ``tests/``, ``files.py``, ...) -> what it names."""
    block = re.search(r"## Layout\n\n```\n(.*?)```", README, flags=re.DOTALL).group(1)
    entries: dict[str, str] = {}
    folder = ""
    for line in block.splitlines():
        entry = None if line.startswith(" " * 6) else re.match(r"(?:src/hieralab/|  )?([\w.]+/?)\s+(.*)", line.rstrip())
        if entry:  # "  models/      hiera.py, ..." (a continuation line is indented deeper)
            folder, entries[entry.group(1)] = entry.group(1), entry.group(2)
        elif line.strip() and folder:
            entries[folder] += " " + line.strip()
    return entries


def layout_paths(folder: str, text: str) -> list[str]:
    """The files a Layout entry names: ``hiera.py``, ``*_configs.py``, ``pyproject.toml`` ..., and for ``layers/``
    its modules by name (``attention (...)``)."""
    names = [folder] if "." in folder else []
    names += re.findall(r"[\w*/.-]+\.(?:py|yaml|md|toml)\b", text)
    if folder == "layers/":
        bare = text
        while "(" in bare:
            bare = re.sub(r"\([^()]*\)", "", bare)
        names += [item.split()[0] + ".py" for item in bare.split(",") if item.strip()]
    return names


def test_every_file_the_layout_names_exists():
    entries = layout()
    assert {"layers/", "models/", "tasks/", "engine/", "tests/", "benchmarks/"} <= set(entries)
    missing = []
    for folder, text in entries.items():
        base = folder if folder.endswith("/") else ""
        for name in layout_paths(folder, text):
            where = [SRC / base / name, ROOT / base / name, ROOT / name, SRC / name]
            if not any(list(p.parent.glob(p.name)) for p in where if p.parent.exists()):
                missing.append(f"{folder} {name}")
    assert not missing, f"the Layout names files that do not exist: {missing}"


def test_the_layout_names_every_module():
    entries = layout()
    named = {f"{folder}{Path(n).name}" for folder, text in entries.items() if folder.endswith("/")
             for n in layout_paths(folder, text)}
    unnamed = []
    for path in sorted(SRC.glob("*/*.py")):
        folder, name = f"{path.parent.name}/", path.name
        if name == "__init__.py" and folder != "tasks/":
            continue
        if folder not in entries:
            unnamed.append(f"{folder} (the folder)")
        elif f"{folder}{name}" not in named and not any(fnmatch.fnmatch(f"{folder}{name}", n) for n in named):
            unnamed.append(f"{folder}{name}")
    assert not unnamed, f"modules the Layout does not name: {sorted(set(unnamed))}"


def test_the_run_folder_rules_name_the_keys_and_files_the_code_has():
    from hieralab.config.schema import FinetuneConfig, _alters_trajectory

    section = flat(README[README.index("## The run folder"):README.index("## How runs stay reproducible")])
    free = re.findall(r"`([\w.]+)`", re.search(r"Keys that only change how a run is watched or stored \((.*?)\)",
                                                section).group(1))
    kept = re.findall(r"`([\w.*]+)`", re.search(r"alters the run's trajectory \((.*?)\)", section).group(1))
    assert len(free) >= 5 and len(kept) >= 4
    changing = [k for k in free if _alters_trajectory(FinetuneConfig, k.split("."))]
    assert not changing, f"the README says {changing} may change freely on --resume; the schema says they may not"
    for key in kept:  # optim.* means every optim key; data.* the data keys that say what is read
        keys = [f"optim.{f.name}" for f in dataclasses.fields(FinetuneConfig().optim)] if key == "optim.*" else \
            ["data.source", "data.img_size", "data.crop_scale"] if key == "data.*" else \
            ["model_args.depth"] if key == "model_args.*" else [key]
        assert all(_alters_trajectory(FinetuneConfig, k.split(".")) for k in keys), key
    engine = "".join(p.read_text() for p in (SRC / "engine").glob("*.py")) + (SRC / "files.py").read_text()
    for name in re.findall(r"`<out_dir>(/\.lock|\.replaced-)", section) + ["verdict.json", "discarded", "config.yaml",
                                                                            "run.json", "log.csv"]:
        assert name.lstrip("/") in engine, name
    says("`<out_dir>/.lock`", "`<out_dir>.replaced-<time>/`", "`checkpoints/discarded/`", "(`verdict.json` in the")


def written_files(row: list[str]) -> list[str]:
    """The file names a command-table row says its command writes (its third cell, less the files its example
    names), by their literal part: ``NAME.labels.npy`` -> ``.labels.npy``, ``shard-000000.tar`` -> ``shard-``."""
    names = re.findall(r"`([\w<>.*-]+\.(?:json|png|csv|txt|safetensors|npy|yaml|md|gif|tar))`", row[2])
    example = set(re.findall(r"[\w.-]+", row[1]))
    literal = {re.sub(r"^(NAME|<[^>]*>)", "", n) for n in names if n not in example and n != "NAME.json"}
    return sorted(n.split("000000")[0] if "000000" in n else n for n in literal)


@pytest.mark.parametrize("row", [r for r in command_rows() if written_files(r)],
                         ids=lambda r: re.sub(r"\W+", "_", r[0])[:40])
def test_the_files_a_command_writes_are_named_in_its_code(row):
    """Each file a row says its command writes is a name the package's code writes (the runs themselves are
    ``tests/test_readme_runs.py``'s, which checks a few of them on disk)."""
    code = "".join(p.read_text() for p in SRC.rglob("*.py"))
    def quoted(name: str) -> str:  # the name as (the end of) a string literal
        return "[\"'/{}.-]" + re.escape(name) + "[\"']"

    missing = [n for n in written_files(row) if not re.search(quoted(n), code)
               and not (n.endswith("-") and f'"{n}' in code)]
    assert not missing, f"{row[0]}: no code writes {missing}"
