"""Where a Hiera inference forward spends its time, stage by stage: counted GFLOPs, wall ms, achieved GFLOP/s and
the share of this machine's matmul peak per stage, for ours (eager and ``optimize_for_inference``) and the official
model, same weights, fp32, this CPU. Each block is timed by forward hooks over ``--rounds`` forwards (median per
block); the rest (patch embed, head) is what the whole forward adds. Prints a Markdown table.

    .venv/bin/python benchmarks/bench_stages.py [--model hiera_base_224] [--batch 8] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from collections import defaultdict

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import hieralab
from hieralab import bench as B

warnings.filterwarnings("ignore")


def block_flops(name: str, shape: tuple[int, ...]) -> list[float]:
    """GFLOPs of each block of our ``name`` for an input of ``shape`` (FlopCounterMode's per-module counts), on the
    meta device: there attention runs the math path, whose matmuls are counted (the CPU flash kernel has no FLOP
    formula, so a real run would leave attention out)."""
    with torch.device("meta"):
        model = hieralab.create_model(name).eval()
        x = torch.empty(shape)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    counts = counter.get_flop_counts()
    return [sum(counts.get(f"{type(model).__name__}.blocks.{i}", {}).values()) / 1e9 for i in range(len(model.blocks))]


def block_times(model: nn.Module, x: torch.Tensor, rounds: int) -> tuple[list[float], float]:
    """Median seconds per block over ``rounds`` forwards, and the median whole forward."""
    starts: dict[int, float] = {}
    times: dict[int, list[float]] = defaultdict(list)
    handles = []
    for i, blk in enumerate(model.blocks):
        handles.append(blk.register_forward_pre_hook(lambda m, a, i=i: starts.__setitem__(i, time.perf_counter())))
        handles.append(blk.register_forward_hook(lambda m, a, o, i=i: times[i].append(time.perf_counter() - starts[i])))
    whole = []
    with torch.inference_mode():
        model(x)  # warm-up
        times.clear()
        for _ in range(rounds):
            t0 = time.perf_counter()
            model(x)
            whole.append(time.perf_counter() - t0)
    for h in handles:
        h.remove()
    return [statistics.median(times[i]) for i in range(len(model.blocks))], statistics.median(whole)


def main() -> None:
    import hiera

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="hiera_base_224")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    official = getattr(hiera, args.model)().eval()
    ours = hieralab.create_model(args.model).eval()
    hieralab.load_checkpoint(ours, official.state_dict())
    x = torch.randn(args.batch, 3, 224, 224)
    peak = B.matmul_peak_gflops()
    ends = ours.stage_ends
    stage_of = [next(s for s, e in enumerate(ends) if i <= e) for i in range(len(ours.blocks))]
    flops = block_flops(args.model, tuple(x.shape))
    total_flops = B.count_flops(lambda: hieralab.create_model(args.model), x.shape) / 1e9
    print(f"{args.model}, batch {args.batch}, {torch.get_num_threads()} threads, matmul peak {peak:.0f} GFLOP/s, "
          f"median of {args.rounds} forwards per contender", flush=True)
    rows = []
    for impl, model in (("official", official), ("ours", ours), ("ours (packed)", hieralab.optimize_for_inference(ours))):
        per_block, whole = block_times(model, x, args.rounds)
        for s in range(len(ends)):
            idx = [i for i, st in enumerate(stage_of) if st == s]
            sec, gf = sum(per_block[i] for i in idx), sum(flops[i] for i in idx)
            width = ours.blocks[idx[-1]].dim_out
            rows.append([impl, f"stage {s + 1} ({len(idx)} blocks, width {width})", f"{gf:.1f}", f"{sec * 1e3:.0f}",
                         f"{gf / sec:.1f}", f"{100 * gf / sec / peak:.0f}%"])
        rest_s, rest_gf = whole - sum(per_block), total_flops - sum(flops)
        rows.append([impl, "patch embed, pos embed, head", f"{rest_gf:.1f}", f"{rest_s * 1e3:.0f}",
                     f"{rest_gf / rest_s:.1f}", f"{100 * rest_gf / rest_s / peak:.0f}%"])
        rows.append([impl, "**whole forward**", f"{total_flops:.1f}", f"{whole * 1e3:.0f}", f"{total_flops / whole:.1f}",
                     f"{100 * total_flops / whole / peak:.0f}%"])
        print(f"{impl} done", flush=True)
    print()
    print(B.markdown_table(["impl", "part", "GFLOPs (batch)", "ms", "GFLOP/s", "% of matmul peak"], rows))


if __name__ == "__main__":
    main()
