"""Hiera against HieraDet (SAM 2's Hiera) of the same widths on this CPU, fp32: backbone + neck speed and memory.

Three contenders, all at the B+ widths (112 wide, 2 heads, blocks 2, 3, 16, 3; random weights):

* ``Hiera B+`` -- ours (``hiera_base_plus_224`` built at the input size, ``features_only``) with torchvision's FPN
  (the neck ``neck=auto`` gives Hiera);
* ``HieraDet B+`` -- ours (``sam2_hiera_base_plus``, ``features_only``) with SAM 2's top-down neck (``topdown``, the
  neck ``neck=auto`` gives HieraDet);
* ``timm sam2_hiera_base_plus`` -- timm's ``hieradet_sam2`` (``features_only``) with the same top-down neck, on the
  same weights as ours (loaded into ours; the largest difference of the four maps is reported).

Each at every ``--sizes`` side: a forward at batch 1 (inference mode) and a training step at batch 1 (forward,
the mean of every pyramid level as the loss, backward, fused AdamW) in ``--rounds`` interleaved rounds
(``hieralab.bench.paired_timings``: each round times all three back to back, the order rotating, so a busy machine
slows them alike; the ratios are medians over rounds of per-round ratios, ``paired_ratio``), then the peak resident
memory one call adds (``peak_rss_kib``, in a process re-executed with a fixed glibc mmap threshold so the resident
set follows live tensors, as ``bench_dense.py``). Prints a Markdown table (and writes ``--out`` .md / .json when
given). Usage:

    .venv/bin/python benchmarks/bench_hieradet.py [--sizes 224 512 1024] [--train-sizes 224 512] [--rounds 3]
        [--threads 1] [--out docs/bench_hieradet]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import warnings
from pathlib import Path

import timm
import torch
from torch import nn

import hieralab
from hieralab import bench as B
from hieralab.layers.necks import FPN, TopDownNeck

warnings.filterwarnings("ignore")
NECK_CHANNELS = 256  # SAM 2's d_model, and detect's FPN width in bench_dense.py
HIERA, HIERADET, TIMM = "Hiera B+ + FPN", "HieraDet B+ + top-down", "timm sam2_hiera_base_plus + top-down"


class BackboneNeck(nn.Module):
    """``[B, 3, H, W]`` -> the neck's pyramid (an ``OrderedDict`` of ``[B, 256, H_l, W_l]``)."""

    def __init__(self, body: nn.Module, neck: type[nn.Module]):
        super().__init__()
        self.body = body
        self.neck = neck(body.feature_info.channels(), NECK_CHANNELS)

    def forward(self, x: torch.Tensor):
        return self.neck(list(self.body(x)))


def contenders(size: int) -> tuple[dict[str, nn.Module], float]:
    """The three backbone + neck models at ``size`` px, and the largest map difference of ours against timm's
    HieraDet on the same weights."""
    theirs = timm.create_model("sam2_hiera_base_plus", pretrained=False, features_only=True)
    ours = hieralab.create_model("sam2_hiera_base_plus", features_only=True)
    hieralab.load_checkpoint(ours.model, {k.removeprefix("model."): v for k, v in theirs.state_dict().items()})
    hiera = hieralab.create_model("hiera_base_plus_224", features_only=True, input_size=(size, size))
    x = torch.randn(1, 3, size, size)
    with torch.inference_mode():
        diff = max(((a - b).abs().max() / b.abs().max()).item() for a, b in zip(ours.eval()(x), theirs.eval()(x)))
    return {HIERA: BackboneNeck(hiera, FPN), HIERADET: BackboneNeck(ours, TopDownNeck),
            TIMM: BackboneNeck(theirs, TopDownNeck)}, diff


def peak_mib(fn, grad: bool) -> float | None:
    gc.collect()
    if grad:
        base, top = B.peak_rss_kib(fn)
    else:
        with torch.inference_mode():
            base, top = B.peak_rss_kib(fn)
    return None if top is None else (top - base) / 1024


def fmt(value: float | None, spec: str = ".0f") -> str:
    return "-" if value is None else format(value, spec)


def measure(size: int, rounds: int, train: bool) -> tuple[list[dict], float]:
    models, diff = contenders(size)
    x = torch.randn(1, 3, size, size)
    forward = {name: (lambda m=m.eval(): m(x)) for name, m in models.items()}
    fwd_times = B.paired_timings(forward, rounds=rounds, warmup=1)
    rows = {name: {"size": size, "contender": name, "params_M": B.count_params(m) / 1e6,
                   "fwd_ms": B.median(fwd_times[name]) * 1e3, "fwd_peak_mib": peak_mib(forward[name], False),
                   "fwd_vs_timm": B.paired_ratio(fwd_times[TIMM], fwd_times[name])}
            for name, m in models.items()}
    print(f"{size}: forward " + ", ".join(f"{n} {r['fwd_ms']:.0f} ms" for n, r in rows.items()), flush=True)
    if train:
        steps = {}
        for name, m in models.items():
            m.train()
            steps[name] = B.adamw_step(m, lambda m=m: sum(v.mean() for v in m(x).values()))
        train_times = B.paired_timings(steps, rounds=rounds, warmup=1, grad=True)
        for name in models:
            rows[name].update(train_ms=B.median(train_times[name]) * 1e3, train_peak_mib=peak_mib(steps[name], True),
                              train_vs_timm=B.paired_ratio(train_times[TIMM], train_times[name]))
        print(f"{size}: train step " + ", ".join(f"{n} {r['train_ms']:.0f} ms" for n, r in rows.items()), flush=True)
    return list(rows.values()), diff


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[224, 512, 1024])
    parser.add_argument("--train-sizes", type=int, nargs="+", default=None, help="default: --sizes")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default=None, help="also write <out>.md and <out>.json")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's); on a machine "
                        "other processes load, 1 thread avoids OpenMP threads waiting on descheduled peers")
    args = parser.parse_args()
    if os.environ.get("MALLOC_MMAP_THRESHOLD_") is None:  # RSS must follow live tensors: re-run with that set
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"})
    if args.threads:
        torch.set_num_threads(args.threads)
    train_sizes = args.sizes if args.train_sizes is None else args.train_sizes
    torch.manual_seed(0)
    peak = B.matmul_peak_gflops()
    load = os.getloadavg()[0]
    head = (f"fp32, {torch.get_num_threads()} threads, torch {torch.__version__}, timm {timm.__version__}; matmul "
            f"peak {peak:.0f} GFLOP/s; load average {load:.1f} at the start; medians of {args.rounds} interleaved "
            "rounds, batch 1")
    print("# " + head, flush=True)
    records, diffs = [], {}
    for size in args.sizes:
        rows, diffs[size] = measure(size, args.rounds, size in train_sizes)
        records += rows
    table = B.markdown_table(
        ["input", "backbone + neck", "params M", "forward ms", "fwd peak MiB", "fwd: x timm's speed",
         "train step ms", "train peak MiB", "train: x timm's speed"],
        [[f"{r['size']}²", r["contender"], f"{r['params_M']:.1f}", f"{r['fwd_ms']:.0f}", fmt(r["fwd_peak_mib"]),
          f"{r['fwd_vs_timm']:.2f}", fmt(r.get("train_ms")), fmt(r.get("train_peak_mib")),
          fmt(r.get("train_vs_timm"), ".2f")] for r in records])
    parity = ", ".join(f"{s}²: {d:.1e}" for s, d in diffs.items())
    text = (f"{head}.\n\n{table}\n\nOurs against timm's HieraDet on the same weights, largest map difference "
            f"relative to the map's scale: {parity}.\n")
    print("\n" + text)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".md").write_text(text)
        out.with_suffix(".json").write_text(json.dumps({"matmul_peak_gflops": peak, "load_average": load,
                                                        "parity": diffs, "rows": records}, indent=2) + "\n")


if __name__ == "__main__":
    main()
