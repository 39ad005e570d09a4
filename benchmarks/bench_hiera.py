"""Hiera inference speed: hieralab (eager, and with optimize_for_inference) vs the official hiera-transformer and
timm, on this CPU, fp32, in one process with interleaved rounds. Prints a Markdown table of medians and paired
ratios. Usage:

    .venv/bin/python benchmarks/bench_hiera.py [--rounds 5] [--video-batches 1 8]
"""

from __future__ import annotations

import argparse
import warnings

import torch

import hieralab
from hieralab import bench as B

warnings.filterwarnings("ignore")


def build(name: str) -> dict[str, torch.nn.Module]:
    """Every contender with the same (random) weights: the official model's."""
    import timm
    from timm.models.hiera import checkpoint_filter_fn

    official = B.official_model(name)
    ours = hieralab.create_model(name).eval()
    hieralab.load_checkpoint(ours, official.state_dict())
    models = {"ours": ours, "ours+packed": hieralab.optimize_for_inference(ours), "official": official}
    if "16x" not in name:  # timm 1.0's video Hiera cannot be built (it rejects 3-D input sizes)
        models["timm"] = timm.create_model(name, pretrained=False).eval()
        models["timm"].load_state_dict(checkpoint_filter_fn(official.state_dict()))
    return models


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--image-batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--video-batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--models", nargs="+", default=["hiera_tiny_224", "hiera_base_224", "hiera_base_16x224"])
    args = parser.parse_args()
    torch.manual_seed(0)
    peak = B.matmul_peak_gflops()
    print(f"fp32 CPU, {torch.get_num_threads()} threads, torch {torch.__version__}, matmul peak {peak:.0f} GFLOP/s; "
          f"median of {args.rounds} interleaved rounds after 1 warm-up", flush=True)
    header = ["model", "batch", "impl", "ms / batch", "im/s", "GFLOP/s", "% of matmul peak", "official / this"]
    rows = []
    for name in args.models:
        models = build(name)
        batches = args.video_batches if "16x" in name else args.image_batches
        for batch in batches:
            shape = B.input_shape(models["ours"], batch)
            gflops = B.count_flops(lambda: hieralab.create_model(name), shape) / 1e9
            x = torch.randn(*shape)
            with torch.inference_mode():
                ref = models["official"](x)
                for impl, m in models.items():
                    err = (m(x) - ref).abs().max().item()
                    assert err < 1e-4, f"{impl} disagrees with the official model by {err}"
            times = B.paired_timings({k: (lambda m=m: m(x)) for k, m in models.items()}, rounds=args.rounds)
            for impl, t in times.items():
                sec = B.median(t)
                rows.append([name, batch, impl, f"{sec * 1e3:.0f}", f"{batch / sec:.2f}", f"{gflops / sec:.1f}",
                             f"{100 * gflops / sec / peak:.0f}%", f"{B.paired_ratio(times['official'], t):.2f}x"])
            print(f"{name} batch {batch}: " + ", ".join(f"{k} {B.median(v) * 1e3:.0f} ms" for k, v in times.items()),
                  flush=True)
    print()
    print(B.markdown_table(header, rows))


if __name__ == "__main__":
    main()
