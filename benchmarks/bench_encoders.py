"""Encoder families side by side: Hiera, plain ViT and T2T-ViT (ours), with their reference implementations where
one exists -- timm's ViT-B/16 and, given a checkout of yitu-opensource/T2T-ViT, the official T2T-ViT-14 -- on the
same weights. Inference, fp32, this CPU, one process, interleaved rounds; prints a Markdown table. Usage:

    .venv/bin/python benchmarks/bench_encoders.py [--rounds 5] [--batches 1 8] [--t2t-official /path/to/T2T-ViT]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import sys
import warnings

import torch

import hieralab
from hieralab import bench as B

warnings.filterwarnings("ignore")
OURS = ["hiera_tiny_224", "hiera_base_224", "vit_base_patch16_224", "t2t_vit_14", "t2t_vit_t_14"]


def reference(name: str, ours: torch.nn.Module, t2t_official: str | None) -> torch.nn.Module | None:
    """The peer implementation of ``name`` loaded with our weights, or None."""
    if name == "vit_base_patch16_224":
        import timm

        peer = timm.create_model(name, pretrained=False)
        peer.load_state_dict(ours.state_dict())
        return peer.eval()
    if name.startswith("t2t_vit") and t2t_official:
        sys.path.insert(0, t2t_official)
        with contextlib.redirect_stdout(io.StringIO()):
            from models import t2t_vit as official

            peer = getattr(official, name)()
        sd = ours.state_dict()
        if ours.config["tokens_type"] == "performer":  # its Performer MLP is an nn.Sequential: mlp.0 / mlp.2
            sd = {re.sub(r"^(tokens_to_token\.attention\d\.mlp)\.fc([12])\.",
                         lambda m: f"{m[1]}.{0 if m[2] == '1' else 2}.", k): v for k, v in sd.items()}
        peer.load_state_dict(sd)
        return peer.eval()
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--models", nargs="+", default=OURS)
    parser.add_argument("--t2t-official", help="a checkout of yitu-opensource/T2T-ViT, to time the official model")
    args = parser.parse_args()
    torch.manual_seed(0)
    peak = B.matmul_peak_gflops()
    print(f"fp32 CPU, {torch.get_num_threads()} threads, torch {torch.__version__}, matmul peak {peak:.0f} GFLOP/s; "
          f"median of {args.rounds} interleaved rounds after 1 warm-up", flush=True)
    header = ["model", "impl", "params (M)", "GFLOPs / image", "batch", "ms / batch", "im/s", "% of matmul peak",
              "peer / ours"]
    rows = []
    for name in args.models:
        ours = hieralab.create_model(name).eval()
        peer = reference(name, ours, args.t2t_official)
        contenders = {"ours": ours, **({"reference": peer} if peer is not None else {})}
        gflops = B.count_flops(lambda: hieralab.create_model(name), (1, 3, 224, 224)) / 1e9
        for batch in args.batches:
            x = torch.randn(batch, 3, 224, 224)
            with torch.inference_mode():
                if peer is not None:
                    err = (ours(x) - peer(x)).abs().max().item()
                    assert err < 1e-4, f"{name}: ours and the reference disagree by {err}"
                times = B.paired_timings({k: (lambda m=m: m(x)) for k, m in contenders.items()}, rounds=args.rounds)
            for impl, t in times.items():
                sec = B.median(t)
                ratio = f"{B.paired_ratio(times['reference'], times['ours']):.2f}x" if peer is not None else ""
                peer_name = "timm" if name.startswith("vit") else "official"
                rows.append([name, impl if impl == "ours" else f"{impl} ({peer_name})",
                             f"{B.count_params(ours) / 1e6:.2f}", f"{gflops:.2f}", batch, f"{sec * 1e3:.0f}",
                             f"{batch / sec:.1f}", f"{100 * gflops * batch / sec / peak:.0f}%",
                             ratio if impl == "ours" else ""])
            print(f"{name} batch {batch}: " + ", ".join(f"{k} {B.median(v) * 1e3:.0f} ms" for k, v in times.items()),
                  flush=True)
    print()
    print(B.markdown_table(header, rows))


if __name__ == "__main__":
    main()
