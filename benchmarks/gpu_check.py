"""The GPU check, ready to run on one CUDA GPU in under 8 minutes; ``--dry-run`` runs the same code on tiny models on
the CPU (a test runs it, so it keeps working until a GPU is lent).

1. parity: hieralab's Hiera against the official ``hiera-transformer`` on the device, same weights: fp32 max error
   (must be <= 1e-5) and the bf16-autocast error against the fp32 official (stated, not bounded);
2. training: a few steps of ``hieralab pretrain`` (MAE) and ``hieralab finetune`` at ``precision=bf16``, eager and
   ``torch.compile``d, on drawn images: every loss finite, compiled within 2 % of eager on the first step;
3. DDP: ``torchrun --nproc_per_node 1`` of a short pretraining run;
4. throughput: the device's fp32 and bf16 matmul rates; images/s of Hiera-B, ViT-B/16 and the official Hiera-B at
   batch 64 (inference: fp32 eager, bf16 autocast eager and ``torch.compile``d), and the MAE-Hiera-B training step
   (forward, backward, AdamW) at batch 64 in the same three modes.

Prints a Markdown table and writes ``<out>.md`` and ``<out>.json``. A stage that fails is reported in the table and
the rest still runs; the exit status is 1 when any check failed. Usage:

    .venv/bin/python benchmarks/gpu_check.py [--out docs/gpu_check] [--budget 450]
    .venv/bin/python benchmarks/gpu_check.py --dry-run --out /tmp/gpu_check_dry
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path
from typing import Any

import torch
from PIL import Image, ImageDraw

import hieralab
from hieralab import bench as B
from hieralab.config import FinetuneConfig, PretrainConfig, load_config

warnings.filterwarnings("ignore")
ROWS: list[dict[str, Any]] = []


def record(check: str, result: str, ok: bool | None = True, **data: Any) -> None:
    ROWS.append({"check": check, "result": result, "ok": ok, **data})
    print(f"[{'ok' if ok else 'info' if ok is None else 'FAIL'}] {check}: {result}", flush=True)


def stage(name: str):
    """Run a stage; an exception is a failed row, not the end of the check."""
    def wrap(fn):
        @functools.wraps(fn)
        def run(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except Exception as e:  # reported, and the next stage runs
                record(name, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}", ok=False,
                       traceback=traceback.format_exc()[-2000:])
        return run
    return wrap


def draw_images(root: Path, n: int, size: int) -> Path:
    g = torch.Generator().manual_seed(0)
    for i in range(n):
        folder = root / ("circles" if i % 2 else "boxes")
        folder.mkdir(parents=True, exist_ok=True)
        img = Image.new("RGB", (size, size), tuple(torch.randint(0, 255, (3,), generator=g).tolist()))
        x0, y0 = torch.randint(0, size // 2, (2,), generator=g).tolist()
        (ImageDraw.Draw(img).ellipse if i % 2 else ImageDraw.Draw(img).rectangle)(
            [x0, y0, x0 + size // 3, y0 + size // 3], fill=(255, 255, 255))
        img.save(folder / f"{i:03d}.png")
    return root


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def autocast(device: torch.device, dtype: torch.dtype = torch.bfloat16):
    """bf16 autocast, or nothing for fp32."""
    return contextlib.nullcontext() if dtype == torch.float32 else torch.autocast(device.type, dtype=dtype)


def matmul_gflops(device: torch.device, dtype: torch.dtype, n: int) -> float:
    """The device's n x n x n matmul rate in ``dtype`` (best of 5)."""
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    sync(device)
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


# ---------------------------------------------------------------- 1. parity
@stage("parity")
def parity(device: torch.device, dry: bool) -> None:
    import hiera

    name, kw = ("hiera_tiny_224", {"stages": (1, 1, 1, 1)}) if dry else ("hiera_base_224", {})
    cfg = {**hieralab.model_config(name), **kw}
    cfg["sep_pos_embed"] = cfg.pop("pos_embed", "absolute") == "separate"
    torch.manual_seed(0)
    ref = hiera.Hiera(**cfg).eval()
    for p in ref.parameters():  # trained-like weights: not the zero-init norms and biases
        p.data.normal_(0, 0.02) if p.dim() > 1 else p.data.uniform_(-0.5, 1.5)
    ref = B.logits_only(ref)  # compare logits
    ours = hieralab.create_model(name, **kw).eval()
    missing = hieralab.load_checkpoint(ours, ref.state_dict())
    ref, ours = ref.to(device), ours.to(device)
    x = torch.randn(2 if dry else 8, 3, 224, 224, device=device)
    with torch.no_grad():
        a, b = ref(x), ours(x)
        with autocast(device):
            c = ours(x)
    fp32 = (a - b).abs().max().item()
    bf16 = (a - c.float()).abs().max().item()
    record(f"parity fp32 ({name}, {device.type})", f"max |ours - official| = {fp32:.2e} (<= 1e-5)",
           ok=fp32 <= 1e-5 and not missing, fp32_max_error=fp32)
    record(f"parity bf16 autocast ({name})", f"max |ours bf16 - official fp32| = {bf16:.2e} (logits std "
           f"{a.std().item():.2f})", ok=None, bf16_max_error=bf16)


# ---------------------------------------------------------------- 2. training steps through the tasks
def task_steps(task: str, device: torch.device, dry: bool, compile: bool, images: Path, out: Path) -> list[float]:
    from hieralab.tasks import finetune, pretrain

    steps = 3 if dry else 6
    if task == "pretrain":
        model = (["model=mae_hiera_mini_32", "data.img_size=32"] if dry else
                 ["model=mae_hiera_base_224", "data.img_size=224"])
        cfg = load_config(PretrainConfig, None, [*model, f"data.source={images}", "data.num_workers=2",
                                                 f"optim.batch_size={4 if dry else 32}", f"max_steps={steps}",
                                                 "log_every=1", "recon_images=0", "knn_every=0", "precision=bf16",
                                                 f"compile={str(compile).lower()}", f"device={device.type}",
                                                 f"out_dir={out}"])
        pretrain.run(cfg)
    else:
        model = (["model=hiera_mini_32", "data.img_size=32"] if dry else
                 ["model=hiera_base_224", "data.img_size=224"])
        cfg = load_config(FinetuneConfig, None, [*model, f"data.source={images}", "data.num_workers=2",
                                                 f"optim.batch_size={4 if dry else 32}", f"max_steps={steps}",
                                                 "log_every=1", "precision=bf16", f"compile={str(compile).lower()}",
                                                 f"device={device.type}", f"out_dir={out}", "val_fraction=0.1"])
        finetune.run(cfg)
    import csv
    with open(out / "log.csv") as f:
        return [float(r["loss"]) for r in csv.DictReader(f) if r.get("loss")]


@stage("training")
def training(device: torch.device, dry: bool, work: Path) -> None:
    images = draw_images(work / "images", 64 if dry else 512, 40 if dry else 256)
    for task in ("pretrain", "finetune"):
        results = {}
        for compiled in (False, True):
            t0 = time.perf_counter()
            losses = task_steps(task, device, dry, compiled, images, work / f"{task}-{compiled}")
            results[compiled] = losses
            record(f"{task} bf16 {'compiled' if compiled else 'eager'}",
                   f"{len(losses)} steps in {time.perf_counter() - t0:.0f} s, losses "
                   + ", ".join(f"{v:.3f}" for v in losses), ok=bool(losses) and all(map(_finite, losses)),
                   losses=losses)
        first = [results[c][0] for c in (False, True) if results.get(c)]
        if len(first) == 2:
            rel = abs(first[0] - first[1]) / max(abs(first[0]), 1e-9)
            record(f"{task}: compiled vs eager, first loss", f"relative difference {rel:.2e} (<= 2e-2)",
                   ok=rel <= 2e-2)


def _finite(v: float) -> bool:
    return v == v and abs(v) != float("inf")


# ---------------------------------------------------------------- 3. torchrun DDP on one device
@stage("ddp")
def ddp(device: torch.device, dry: bool, work: Path) -> None:
    images = work / "images"
    model = ["model=mae_hiera_mini_32", "data.img_size=32"] if dry else ["model=mae_hiera_base_224",
                                                                           "data.img_size=224"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1", "-m",
           "hieralab.cli", "pretrain", *model, f"data.source={images}", "data.num_workers=2",
           f"optim.batch_size={4 if dry else 32}", "max_steps=3", "recon_images=0", "knn_every=0",
           f"device={device.type}", f"out_dir={work / 'ddp'}"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "2"})
    ok = proc.returncode == 0 and (work / "ddp" / "summary.json").exists()
    detail = "finished" if ok else (proc.stderr.strip().splitlines() or ["no output"])[-1][:200]
    record("torchrun DDP, 1 process", f"{detail} in {time.perf_counter() - t0:.0f} s (exit {proc.returncode})", ok=ok)


# ---------------------------------------------------------------- 4. throughput
def images_per_s(fn, batch: int, device: torch.device, seconds: float) -> float:
    for _ in range(3):  # warm-up (and compilation)
        fn()
    sync(device)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds or n < 3:
        fn()
        n += 1
    sync(device)
    return batch * n / (time.perf_counter() - t0)


@stage("throughput")
def throughput(device: torch.device, dry: bool, deadline: float) -> None:
    import hiera

    batch, seconds = (2, 0.2) if dry else (64, 3.0)
    names = ({"Hiera (ours)": "hiera_mini_32", "ViT (ours)": "vit_mini_patch4_32"} if dry else
             {"Hiera-B (ours)": "hiera_base_224", "ViT-B/16 (ours)": "vit_base_patch16_224"})
    side = 32 if dry else 224
    models = {label: hieralab.create_model(name).eval().to(device) for label, name in names.items()}
    official = hiera.Hiera(embed_dim=64, num_heads=2, stages=(1, 2, 2), q_pool=2, input_size=(32, 32),
                           mask_unit_size=(4, 4), mask_unit_attn=(True, True, False), patch_kernel=(3, 3),
                           patch_stride=(2, 2), patch_padding=(1, 1), num_classes=10) if dry else hiera.hiera_base_224()
    official = B.logits_only(official)
    models["Hiera-B (official)" if not dry else "Hiera (official)"] = official.eval().to(device)
    n = 256 if dry else 8192
    rates = {name: matmul_gflops(device, dtype, n) for name, dtype in (("fp32", torch.float32),
                                                                       ("bf16", torch.bfloat16))}
    record("matmul rates", f"fp32 {rates['fp32']:.0f} GFLOP/s (TF32 {'on' if _tf32() else 'off'}), bf16 "
           f"{rates['bf16']:.0f} GFLOP/s ({n}^3)", ok=None, **{f"{k}_gflops": round(v, 1) for k, v in rates.items()})
    x = torch.randn(batch, 3, side, side, device=device)
    table = []
    for label, model in models.items():
        row = {"model": label}
        for mode in MODES:
            if time.perf_counter() > deadline:
                row[mode] = "skipped (time budget)"
                continue
            dtype = torch.float32 if mode.startswith("fp32") else torch.bfloat16
            fn = torch.compile(model) if mode.endswith("compiled") else model

            def forward(fn=fn, dtype=dtype):
                with torch.inference_mode(), autocast(device, dtype):
                    return fn(x)
            row[mode] = round(images_per_s(forward, batch, device, seconds), 1)
        table.append(row)
        record(f"throughput {label}", ", ".join(f"{row[m]} img/s {m}" for m in MODES) + f" (batch {batch})",
               ok=None, **row)
    mae_name = "mae_hiera_mini_32" if dry else "mae_hiera_base_224"
    for mode in MODES:
        if time.perf_counter() > deadline:
            record(f"MAE step {mode}", "skipped (time budget)", ok=None)
            continue
        dtype = torch.float32 if mode.startswith("fp32") else torch.bfloat16
        mae = hieralab.create_model(mae_name).to(device).train()
        fwd = torch.compile(mae) if mode.endswith("compiled") else mae
        xs = torch.randn(batch, 3, side, side, device=device)

        def loss(fwd=fwd, mae=mae, dtype=dtype):
            with autocast(device, dtype):
                return fwd(xs, mae.random_visible(xs)).loss
        step = B.adamw_step(mae, loss)
        rate = images_per_s(step, batch, device, seconds)
        record(f"MAE {'-'.join(mae_name.split('_')[1:3])} training step {mode}",
               f"{rate:.1f} img/s, {1000 * batch / rate:.1f} ms per step of {batch}", ok=None,
               images_per_s=round(rate, 1))
    ROWS.append({"check": "throughput table", "table": table, "ok": None})


MODES = ("fp32 eager", "bf16 eager", "bf16 compiled")  # inference and the MAE step, each model


def _tf32() -> bool:
    return torch.cuda.is_available() and torch.backends.cuda.matmul.allow_tf32


# ---------------------------------------------------------------- report
def report(device: torch.device, dry: bool, seconds: float) -> str:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (dry run)"
    lines = [f"# GPU check: {name}", "",
             f"`benchmarks/gpu_check.py{' --dry-run' if dry else ''}`, torch {torch.__version__}, "
             f"{seconds:.0f} s in all.", "", "| check | result | |", "|---|---|---|"]
    for r in ROWS:
        if "result" in r:
            mark = "ok" if r["ok"] else "info" if r["ok"] is None else "**FAIL**"
            lines.append(f"| {r['check']} | {r['result']} | {mark} |")
    for r in ROWS:
        if r.get("table"):
            lines += ["", "Inference images/s (bf16: autocast):", "",
                      B.markdown_table(["model", *MODES], [[t["model"], *(t[m] for m in MODES)] for t in r["table"]])]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="tiny models on the CPU (what CI runs)")
    parser.add_argument("--out", default="docs/gpu_check", help="writes <out>.md and <out>.json")
    parser.add_argument("--budget", type=float, default=450, help="seconds; later compiled timings are skipped past it")
    args = parser.parse_args(argv)
    if args.dry_run:
        device = torch.device("cpu")
        torch.compile = functools.partial(torch.compile, backend="eager")  # dynamo's tracing, without inductor's time
    elif not torch.cuda.is_available():
        print("no CUDA device: run with --dry-run on a CPU", file=sys.stderr)
        return 2
    else:
        device = torch.device("cuda")
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 parity means fp32 matmuls
        torch.backends.cudnn.allow_tf32 = False
    out = Path(args.out).resolve()  # before the run moves into its scratch folder
    start = time.perf_counter()
    ROWS.clear()
    with tempfile.TemporaryDirectory() as tmp, contextlib.chdir(tmp):
        work = Path(tmp)
        parity(device, args.dry_run)
        if device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True  # training and speed as users run them
        training(device, args.dry_run, work)
        ddp(device, args.dry_run, work)
        throughput(device, args.dry_run, start + args.budget)
    seconds = time.perf_counter() - start
    text = report(device, args.dry_run, seconds)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(text)
    out.with_suffix(".json").write_text(json.dumps({"device": str(device), "dry_run": args.dry_run,
                                                    "seconds": round(seconds, 1), "rows": ROWS}, indent=2) + "\n")
    print("\n" + text)
    return 1 if any(r["ok"] is False for r in ROWS) else 0


if __name__ == "__main__":
    sys.exit(main())
