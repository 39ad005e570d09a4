"""Dense backbones on this CPU, fp32: speed and memory.

1. Backbone + neck forward (batch 1, inference mode) at 512 x 512 and 1024 x 1024 for Hiera-T and Hiera-B: ours
   (``create_model(..., features_only=True)`` + torchvision's FPN, 256 channels, as ``hieralab detect`` builds it)
   against timm's Hiera ``features_only`` with the same FPN, on the same weights (timm's, loaded into ours; the
   largest difference of the four maps is reported), interleaved rounds; images/s and the peak resident memory a
   call adds.
2. A Hiera-B training step (forward, cross-entropy, backward; batch ``--train-batch``) at 224 and 512 px with and
   without activation checkpointing (``set_grad_checkpointing``): peak resident memory and step time.

Peak memory is measured one call at a time after the timings, in a process re-executed with a fixed glibc mmap
threshold so that the resident set follows live tensors (as ``bench_peers.py``). Writes ``<out>.md`` and
``<out>.json``. Usage (about 10 minutes on an idle 2-core machine):

    .venv/bin/python benchmarks/bench_dense.py [--rounds 3] [--train-batch 2] [--out docs/bench_dense]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from pathlib import Path

import timm
import torch

import hieralab
from hieralab import bench as B
from hieralab.layers.necks import FPN

warnings.filterwarnings("ignore")
ARCHS = {"Hiera-T": "hiera_tiny_224", "Hiera-B": "hiera_base_224"}


def backbones(name: str, size: int) -> tuple[dict, float]:
    """Ours and timm's ``features_only`` backbone, each under the same FPN, on timm's (random) weights; and the
    largest difference between their maps."""
    theirs = timm.create_model(name, pretrained=False, features_only=True, img_size=(size, size)).eval()
    ours = hieralab.create_model(name, features_only=True, input_size=(size, size)).eval()
    hieralab.load_checkpoint(ours.model, {k.removeprefix("model."): v for k, v in theirs.state_dict().items()})
    neck = FPN(ours.feature_info.channels(), 256).eval()
    x = torch.randn(1, 3, size, size)
    with torch.inference_mode():
        diff = max((a - b).abs().max().item() for a, b in zip(ours(x), theirs(x)))
    return {"ours": lambda: neck(ours(x)), "timm": lambda: neck(theirs(x))}, diff


def train_step(size: int, batch: int, checkpointing: bool):
    model = hieralab.create_model("hiera_base_224", num_classes=10).train()
    model.set_grad_checkpointing(checkpointing)
    x, y = torch.randn(batch, 3, size, size), torch.randint(0, 10, (batch,))

    def step() -> None:
        torch.nn.functional.cross_entropy(model(x), y).backward()
        model.zero_grad(set_to_none=True)

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 1024])
    parser.add_argument("--train-sizes", type=int, nargs="+", default=[224, 512])
    parser.add_argument("--train-batch", type=int, default=2)
    parser.add_argument("--out", default="docs/bench_dense")
    args = parser.parse_args()
    if os.environ.get("MALLOC_MMAP_THRESHOLD_") is None:  # RSS must follow live tensors: re-run with that set
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"})
    torch.manual_seed(0)
    peak = B.matmul_peak_gflops()
    print(f"# fp32, {torch.get_num_threads()} threads, torch {torch.__version__}, timm {timm.__version__}; matmul "
          f"peak {peak:.0f} GFLOP/s", flush=True)
    rows, records = [], []
    for arch, name in ARCHS.items():
        for size in args.sizes:
            fns, diff = backbones(name, size)
            times = B.paired_timings(fns, rounds=args.rounds, warmup=1)
            memory = {}
            for impl, fn in fns.items():
                with torch.inference_mode():
                    base, top = B.peak_rss_kib(fn)
                memory[impl] = None if top is None else (top - base) / 1024
            ratio = B.paired_ratio(times["timm"], times["ours"])
            for impl in fns:
                ms = B.median(times[impl]) * 1e3
                rows.append([arch, f"{size}x{size}", impl, f"{ms:.0f}", f"{1e3 / ms:.2f}",
                             "-" if memory[impl] is None else f"{memory[impl]:.0f}",
                             f"{ratio:.2f}x timm's speed" if impl == "ours" else f"max map diff {diff:.1e}"])
                records.append({"section": "backbone + FPN forward", "arch": arch, "size": size, "impl": impl,
                                "ms": ms, "images_per_s": 1e3 / ms, "peak_mib": memory[impl], "max_diff": diff})
            print(f"{arch} {size}: ours {B.median(times['ours']) * 1e3:.0f} ms, timm "
                  f"{B.median(times['timm']) * 1e3:.0f} ms, diff {diff:.1e}", flush=True)
    header = ["arch", "input", "impl", "ms", "images/s", "peak MiB", "note"]
    table1 = B.markdown_table(header, rows)

    rows2 = []
    for size in args.train_sizes:
        fns = {f"checkpointing {'on' if on else 'off'}": train_step(size, args.train_batch, on) for on in (False, True)}
        times = B.paired_timings(fns, rounds=args.rounds, warmup=1, grad=True)
        for impl, fn in fns.items():
            base, top = B.peak_rss_kib(fn)
            mib = None if top is None else (top - base) / 1024
            ms = B.median(times[impl]) * 1e3
            rows2.append([f"{size}x{size}", impl, f"{ms:.0f}", "-" if mib is None else f"{mib:.0f}"])
            records.append({"section": "Hiera-B train step", "size": size, "impl": impl, "ms": ms, "peak_mib": mib,
                            "batch": args.train_batch})
            print(f"Hiera-B train step {size} {impl}: {ms:.0f} ms, {mib} MiB", flush=True)
    table2 = B.markdown_table(["input", "activation checkpointing", "step ms", "peak MiB"], rows2)
    text = (f"# Dense backbones on this CPU\n\nMade by `.venv/bin/python benchmarks/bench_dense.py --rounds "
            f"{args.rounds} --train-batch {args.train_batch}`; fp32, {torch.get_num_threads()} threads, matmul peak "
            f"{peak:.0f} GFLOP/s, torch {torch.__version__}, timm {timm.__version__}. Medians of {args.rounds} "
            "interleaved rounds; ours against timm is the median of the rounds' time ratios (each round times both "
            "back to back, so a busy machine slows both alike); peak MiB is the resident memory a call adds.\n\n"
            "## Backbone + FPN (256 channels) forward, batch 1\n\n" + table1 +
            f"\n\n## Hiera-B training step (forward, cross-entropy, backward), batch {args.train_batch}\n\n" + table2
            + "\n")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(text)
    out.with_suffix(".json").write_text(json.dumps({"matmul_peak_gflops": peak, "rows": records}, indent=2) + "\n")
    print("\n" + text)


if __name__ == "__main__":
    main()
