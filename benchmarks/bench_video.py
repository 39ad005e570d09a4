"""Video Hiera-B against MAE-ST's video ViT-B at 16 x 224, side by side in one process: speed, memory, FLOPs.

The Hiera paper's video comparison (its Table / Fig. on Kinetics-400 speed): ``hiera_base_16x224`` (51 M, tokens
8 x 56 x 56 pooled to 8 x 7 x 7) against ``vit_base_patch16_video`` (87 M, 1568 tokens of global attention in every
block), random weights, fp32, batch ``--batch``:

* inference: clips/s of a forward under ``torch.inference_mode``;
* training: clips/s of a step (forward, cross-entropy on random labels, backward, fused AdamW:
  ``hieralab.bench.adamw_step``), dropout and drop path as registered;
* both in ``--rounds`` interleaved rounds (``hieralab.bench.paired_timings``: each round times both back to back, the
  order alternating, so a busy machine slows them alike); speeds are medians over rounds, the speed ratio the median
  of the per-round ratios (``paired_ratio``);
* peak memory a call adds: the resident set's high-water mark (VmHWM, reset before the call through
  ``/proc/self/clear_refs``: ``hieralab.bench.peak_rss_kib``) in a process re-executed with a fixed glibc mmap
  threshold so the resident set follows the live tensors (as ``bench_hieradet.py``; in-process, not getrusage in a
  subprocess per model: the same process, both models built, one call measured at a time). The weights (and, for
  training, AdamW's state made by the warmup step) are there before the call and not counted;
* GFLOPs of one forward per clip (``hieralab.bench.count_flops``, counted on the meta device) and the machine's fp32
  matmul rate (``hieralab.bench.matmul_peak_gflops``), so the achieved GFLOP/s of each model reads as a share of what
  the machine's matmuls reach.

CPU only (a GPU run would need device timings and ``torch.cuda.max_memory_allocated``; not written, as no GPU was
there to check it on).

Prints a Markdown table; ``--out docs/bench_video`` also writes ``.md`` (with the command and the machine) and
``.json``. Usage:

    .venv/bin/python benchmarks/bench_video.py [--rounds 5] [--batch 1] [--frames 16] [--size 224] [--threads N]
        [--out docs/bench_video]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import shlex
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import hieralab
from hieralab import bench as B

warnings.filterwarnings("ignore")
ABOUT = """\
`benchmarks/bench_video.py`: `hiera_base_16x224` and `vit_base_patch16_video` (MAE-ST's ViT-B: 2x16x16 tubelets,
1568 tokens of global attention) at 16 x 224, random weights, fp32, in one process and interleaved rounds
(inference: a forward under inference mode; training: forward, cross-entropy, backward, fused AdamW). Speeds are
medians over rounds, the speed ratio the median of per-round ratios. Peak memory is what one call adds to the
resident set (VmHWM reset before the call; glibc's mmap threshold fixed so the resident set follows the tensors),
over the weights and AdamW's state. GFLOPs count 2 per multiply-add on the meta device (the papers count
multiply-adds: Hiera-B 102, ViT-B 180 at 16 x 224). The last column is the achieved forward GFLOP/s over the
machine's fp32 matmul rate.
"""
MODELS = {"Hiera-B (hiera_base_16x224)": "hiera_base_16x224",
          "ViT-B (vit_base_patch16_video)": "vit_base_patch16_video"}


def build(name: str, frames: int, size: int) -> nn.Module:
    return hieralab.create_model(name, input_size=(frames, size, size))


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def peak_mib(fn, grad: bool) -> float | None:
    """The memory one call of ``fn`` adds at its peak (MiB) to the resident set."""
    gc.collect()
    with torch.enable_grad() if grad else torch.inference_mode():
        base, top = B.peak_rss_kib(fn)
    return None if top is None else (top - base) / 1024


def fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--size", type=int, default=224, help="a multiple of 32 (Hiera's mask units)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--out", default=None, help="also write <out>.md and <out>.json")
    args = parser.parse_args()
    if os.environ.get("MALLOC_MMAP_THRESHOLD_") is None:  # RSS must follow live tensors: re-run with that set
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"})
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    shape = (args.batch, 3, args.frames, args.size, args.size)
    peak, machine = B.matmul_peak_gflops(), f"{cpu_name()}, {os.cpu_count()} cores"
    load = os.getloadavg()[0]
    head = (f"{machine}; fp32, {torch.get_num_threads()} threads, torch {torch.__version__}; fp32 matmul "
            f"{peak:.0f} GFLOP/s; load average {load:.1f} at the start; clips of {args.frames} x {args.size}², batch "
            f"{args.batch}; medians of {args.rounds} interleaved rounds")
    print("# " + head, flush=True)

    models = {label: build(name, args.frames, args.size) for label, name in MODELS.items()}
    flops = {label: B.count_flops(lambda n=name: build(n, args.frames, args.size), shape) / args.batch / 1e9
             for label, name in MODELS.items()}
    x = torch.randn(*shape)
    y = torch.randint(0, 400, (args.batch,))
    forward = {label: (lambda m=m.eval(): m(x)) for label, m in models.items()}
    started = time.perf_counter()
    infer = B.paired_timings(forward, rounds=args.rounds, warmup=1)
    infer_peak = {label: peak_mib(fn, grad=False) for label, fn in forward.items()}
    print("inference: " + ", ".join(f"{k} {args.batch / B.median(v):.2f} clips/s" for k, v in infer.items()),
          flush=True)
    steps = {label: B.adamw_step(m.train(), lambda m=m: F.cross_entropy(m(x), y)) for label, m in models.items()}
    train = B.paired_timings(steps, rounds=args.rounds, warmup=1, grad=True)
    train_peak = {label: peak_mib(fn, grad=True) for label, fn in steps.items()}
    seconds = time.perf_counter() - started
    print("training: " + ", ".join(f"{k} {args.batch / B.median(v):.2f} clips/s" for k, v in train.items()),
          flush=True)

    rows, records = [], []
    for label, m in models.items():
        ips, tps = args.batch / B.median(infer[label]), args.batch / B.median(train[label])
        record = {"model": label, "params_M": B.count_params(m) / 1e6, "gflops_per_clip": flops[label],
                  "infer_clips_s": ips, "train_clips_s": tps, "infer_peak_mib": infer_peak[label],
                  "train_peak_mib": train_peak[label], "infer_share_of_matmul": flops[label] * ips / peak}
        records.append(record)
        rows.append([label, f"{record['params_M']:.1f}", f"{flops[label]:.0f}", f"{ips:.2f}", f"{tps:.2f}",
                     fmt(infer_peak[label], ".0f"), fmt(train_peak[label], ".0f"),
                     f"{100 * record['infer_share_of_matmul']:.0f} %"])
    hiera, vit = MODELS
    speedup = {"inference": B.paired_ratio(infer[vit], infer[hiera]),
               "training": B.paired_ratio(train[vit], train[hiera])}
    table = B.markdown_table(["model", "params M", "GFLOPs / clip", "inference clips/s", "training clips/s",
                              "inference peak MiB", "training peak MiB", "inference GFLOP/s as a share of matmul"],
                             rows)
    one_round = sum(B.median(t[label]) for t in (infer, train) for label in models)
    command = "python " + " ".join(shlex.quote(a) for a in ["benchmarks/bench_video.py", *sys.argv[1:]])
    text = (f"{head}.\n\n{table}\n\nHiera-B's speed over ViT-B's (median of per-round ratios): inference "
            f"{speedup['inference']:.2f}x, training {speedup['training']:.2f}x. Peak memory: what one call adds "
            f"(the resident set's high-water mark) over the weights (and AdamW's state). One round (four timed calls) "
            f"took {one_round:.0f} s; the whole measurement, warmup and memory calls included, {seconds:.0f} s.\n\n"
            f"Command: `{command}`\n")
    print("\n" + text)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".md").write_text(f"# Video Hiera-B against MAE-ST's video ViT-B\n\n{ABOUT}\n{text}")
        out.with_suffix(".json").write_text(json.dumps(
            {"machine": machine, "matmul_gflops": peak, "load_average": load, "args": vars(args),
             "speedup_hiera_over_vit": speedup, "seconds": seconds, "seconds_per_round": one_round,
             "rows": records}, indent=2) + "\n")


if __name__ == "__main__":
    main()
