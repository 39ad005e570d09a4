"""torch.compile (inductor, CPU, fp32) against eager: Hiera inference and the MAE-Hiera pretraining step, same
weights and inputs, interleaved rounds, paired ratios; compile time reported separately. Prints a Markdown table.

    .venv/bin/python benchmarks/bench_compile.py [--rounds 3] [--batch 8] [--models hiera_tiny_224]
"""

from __future__ import annotations

import argparse
import time
import warnings

import torch

import hieralab
from hieralab import bench as B
from hieralab.mae.masking import random_visible

warnings.filterwarnings("ignore")


def first_call(fn) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--models", nargs="+", default=["hiera_tiny_224"])
    args = parser.parse_args()
    print(f"fp32 CPU, {torch.get_num_threads()} threads, torch {torch.__version__}; median of {args.rounds} "
          "interleaved rounds after 1 warm-up", flush=True)
    rows = []
    for name in args.models:
        torch.manual_seed(0)
        x = torch.randn(args.batch, 3, 224, 224)
        model = hieralab.create_model(name).eval()
        fast = torch.compile(model, fullgraph=True)
        with torch.inference_mode():
            t_compile, out = first_call(lambda: fast(x))
            err = (out - model(x)).abs().max().item()
        times = B.paired_timings({"eager": lambda: model(x), "compiled": lambda: fast(x)}, rounds=args.rounds)
        rows.append([name, "inference", args.batch, f"{B.median(times['eager']) * 1e3:.0f}",
                     f"{B.median(times['compiled']) * 1e3:.0f}", f"{B.paired_ratio(times['eager'], times['compiled']):.2f}x",
                     f"{t_compile:.0f}", f"{err:.1e}"])
        print(rows[-1], flush=True)

        torch.manual_seed(0)
        mae = hieralab.create_model(f"mae_{name}")
        twin = hieralab.create_model(f"mae_{name}")
        twin.load_state_dict(mae.state_dict())
        visible = random_visible(args.batch, 49, 0.6, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            ref = mae(x, visible).loss.item()
        fast_mae = torch.compile(twin, fullgraph=True)
        steps = {"eager": B.adamw_step(mae, lambda: mae(x, visible).loss),
                 "compiled": B.adamw_step(twin, lambda: fast_mae(x, visible).loss)}
        t_compile, first = first_call(steps["compiled"])
        times = B.paired_timings(steps, rounds=args.rounds, grad=True)
        rows.append([f"mae_{name}", "MAE step (mask 0.6)", args.batch, f"{B.median(times['eager']) * 1e3:.0f}",
                     f"{B.median(times['compiled']) * 1e3:.0f}", f"{B.paired_ratio(times['eager'], times['compiled']):.2f}x",
                     f"{t_compile:.0f}", f"{abs(first - ref):.1e} (loss)"])
        print(rows[-1], flush=True)
    print()
    print(B.markdown_table(["model", "what", "batch", "eager ms", "compiled ms", "compiled is faster by",
                            "compile s (first call)", "max diff"], rows))


if __name__ == "__main__":
    main()
