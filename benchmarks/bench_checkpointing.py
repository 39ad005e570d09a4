"""Activation checkpointing (``grad_checkpointing=true``) for the MAE models: peak memory and step time of one MAE
training step (forward, backward, fused AdamW) with and without, on this CPU, fp32, same weights, input and mask.

Speed: both in one process, interleaved rounds (the order rotates each round), medians and the paired ratio.
Memory: after the timings, each variant on its own: the step's peak resident memory over the resident memory
before it (weights, AdamW state and gradients allocated by a warm-up step); the process re-executes itself with a
fixed glibc mmap threshold so that RSS follows the live tensors. On a GPU the same switch cuts the activations
the same way (the step keeps one block's activations at a time instead of all of them). Usage (about 6 minutes
on an idle 2-core machine):

    .venv/bin/python benchmarks/bench_checkpointing.py [--models mae_hiera_base_224 mae_vit_base_patch16_224]
        [--batch 8] [--rounds 3] [--out docs/bench_checkpointing.md]
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path

import torch

import hieralab
from hieralab import bench as B

warnings.filterwarnings("ignore")


def step_fn(name: str, batch: int, checkpointing: bool):
    torch.manual_seed(0)
    model = hieralab.create_model(name).train()
    model.set_grad_checkpointing(checkpointing)
    x = torch.randn(batch, 3, 224, 224)
    visible = model.random_visible(x, generator=torch.Generator().manual_seed(0))
    return B.adamw_step(model, lambda: model(x, visible).loss)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["mae_hiera_base_224", "mae_vit_base_patch16_224"])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default="docs/bench_checkpointing.md")
    args = parser.parse_args()
    if os.environ.get("MALLOC_MMAP_THRESHOLD_") is None:  # RSS must follow live tensors: re-run with that set
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"})
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    peak = B.matmul_peak_gflops()
    rows = []
    for name in args.models:
        steps = {"off": step_fn(name, args.batch, False), "on": step_fn(name, args.batch, True)}
        losses = {k: fn() for k, fn in steps.items()}  # warm-up: AdamW state and gradients allocated
        times = B.paired_timings(steps, rounds=args.rounds, warmup=0, grad=True)
        memory = {}
        for k, fn in steps.items():
            base, top = B.peak_rss_kib(fn)
            memory[k] = (top - base) / 1024 if top is not None else float("nan")
        params = B.count_params(hieralab.create_model(name)) / 1e6
        rows.append([name, f"{params:.0f}M", f"{memory['off']:.0f}", f"{memory['on']:.0f}",
                     f"{memory['on'] / memory['off']:.2f}", f"{B.median(times['off']) * 1000:.0f}",
                     f"{B.median(times['on']) * 1000:.0f}", f"{B.paired_ratio(times['on'], times['off']):.2f}",
                     f"{abs(losses['on'] - losses['off']):.1e}"])
        print(rows[-1], flush=True)
    table = B.markdown_table(["MAE", "params", "peak MiB, off", "peak MiB, on", "memory on / off", "ms/step, off",
                              "ms/step, on", "time on / off", "|loss on - off|"], rows)
    text = (f"# Activation checkpointing of the MAE models (CPU, fp32, batch {args.batch}, mask as the model's)\n\n"
            f"`benchmarks/bench_checkpointing.py --batch {args.batch} --rounds {args.rounds}`; this machine: "
            f"{peak:.0f} GFLOP/s fp32 matmul at {torch.get_num_threads()} threads. `grad_checkpointing=true` in any "
            "training config (or `model.set_grad_checkpointing()`) recomputes each encoder and decoder block's "
            "activations in the backward pass. Peak: the step's resident memory over what the weights, gradients "
            "and AdamW state already hold.\n\n" + table + "\n")
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
