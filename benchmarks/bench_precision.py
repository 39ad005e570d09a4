"""fp32 against bf16 on this CPU, in one process: Hiera-B inference at batch 8 (224 px) and the MAE-Hiera-B training
step (forward + backward + fused AdamW, mask ratio 0.6) at batch 8; ours against the official hiera-transformer on
the same weights, input and mask, and timm's ViT-B/16 (inference) under the same precision.

bf16 is ``torch.autocast("cpu", dtype=torch.bfloat16)`` (fp32 weights, what ``precision=bf16`` trains with) for every
model, and for ours also ``optimize_for_inference(model, dtype=torch.bfloat16)`` (weights stored and prepacked in
bf16). Every contender runs in every round, the order rotating; the table gives medians and the medians of per-round
ratios, so the load of a shared machine hits all alike. The machine's fp32 and bf16 matmul rates and its load
(``os.getloadavg``) are printed. Peak memory: the rise of the process's resident set (VmHWM, reset through
/proc/self/clear_refs) during one more call of each contender, with glibc's mmap threshold fixed so that freed tensors
go back to the OS at once (the script re-executes itself with ``MALLOC_MMAP_THRESHOLD_`` set).

``--profile`` instead profiles our MAE step (torch.profiler) fp32 against bf16: time by phase (forward, backward,
optimizer) and by op family, the casts, and which attention kernel runs (see docs/speed.md). Usage:

    .venv/bin/python benchmarks/bench_precision.py [--rounds 5] [--batch 8]
    .venv/bin/python benchmarks/bench_precision.py --profile [--batch 4] [--profile-steps 2]
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

import hieralab
from hieralab import bench as B
from hieralab.engine.precision import cpu_has_native_bf16
from hieralab.mae.masking import random_visible

sys.path.insert(0, str(Path(__file__).parent))
from bench_mae import MASK_RATIO, OP_FAMILIES, _phase, make_step

warnings.filterwarnings("ignore")
LR = 1e-4
BF16 = torch.bfloat16


def autocast(dtype: torch.dtype):
    return torch.autocast("cpu", dtype=dtype) if dtype != torch.float32 else contextlib.nullcontext()


def under(fn: Callable[[], object], dtype: torch.dtype) -> Callable[[], object]:
    def call():
        with autocast(dtype):
            return fn()
    return call


# ---------------------------------------------------------------- contenders
def inference(batch: int) -> tuple[dict[str, Callable], torch.Tensor, float]:
    """Forward functions of every inference contender (same weights: the official Hiera-B's), the input, and
    Hiera-B's GFLOPs at this batch."""
    import hiera  # noqa: F401  (B.official_model imports it)
    import timm

    official = B.official_model("hiera_base_224")
    ours = hieralab.create_model("hiera_base_224").eval()
    hieralab.load_checkpoint(ours, official.state_dict())
    packed = hieralab.optimize_for_inference(ours)
    packed_bf16 = hieralab.optimize_for_inference(ours, dtype=BF16)
    vit = timm.create_model("vit_base_patch16_224", pretrained=False).eval()
    x = torch.randn(batch, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    fns = {"ours fp32": lambda: ours(x), "ours+packed fp32": lambda: packed(x),
           "official fp32": lambda: official(x), "timm ViT-B fp32": lambda: vit(x),
           "ours bf16": under(lambda: ours(x), BF16), "ours+packed bf16": lambda: packed_bf16(x),
           "official bf16": under(lambda: official(x), BF16), "timm ViT-B bf16": under(lambda: vit(x), BF16)}
    with torch.inference_mode():  # bf16 logits against fp32's, relative to the logit scale
        ref = ours(x)
        for k in ("ours bf16", "ours+packed bf16", "official bf16"):
            err = (fns[k]().float() - ref).abs().max().item() / ref.abs().max().item()
            print(f"  {k}: max |logit - fp32| = {100 * err:.2f} % of max |logit|", flush=True)
    gflops = B.count_flops(lambda: hieralab.create_model("hiera_base_224"), (batch, 3, 224, 224)) / 1e9
    return fns, x, gflops


def training(batch: int) -> tuple[dict[str, Callable], dict]:
    """Step functions of the MAE-Hiera-B step, ours and the official, fp32 and bf16 autocast (fused AdamW for
    all; fp32 weights and optimizer state), on the same weights, input and mask."""
    import hiera

    torch.manual_seed(0)
    official = hiera.mae_hiera_base_224()
    ours = hieralab.create_model("mae_hiera_base_224")
    hieralab.load_checkpoint(ours, official.state_dict())
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, 224, 224, generator=gen)
    visible = random_visible(batch, math.prod(official.mask_spatial_shape), MASK_RATIO, generator=gen)
    losses = {"ours": lambda: ours(x, visible).loss, "official": lambda: official(x, mask=visible)[0]}
    models = {"ours": ours, "official": official}
    steps = {}
    for impl in ("ours", "official"):
        for name, dtype in (("fp32", torch.float32), ("bf16", BF16)):
            opt = torch.optim.AdamW(models[impl].parameters(), lr=LR, fused=True)
            steps[f"{impl} {name}"] = make_step(under(losses[impl], dtype), opt)
    return steps, {"models": models, "x": x, "visible": visible}


# ---------------------------------------------------------------- measuring
def peak_mib(fn: Callable[[], object], grad: bool) -> str:
    with contextlib.nullcontext() if grad else torch.inference_mode():
        base, hwm = B.peak_rss_kib(fn)
    return f"{(hwm - base) / 1024:.0f}" if hwm is not None else "-"


def table(times: dict[str, list[float]], peaks: dict[str, str], batch: int, rates: dict[str, float],
          gflops: float | None) -> str:
    rows = []
    for k, t in times.items():
        impl, prec = k.rsplit(" ", 1)
        sec = B.median(t)
        other = f"{impl} {'fp32' if prec == 'bf16' else 'bf16'}"
        vs_fp32 = f"{B.paired_ratio(times[f'{impl} fp32'], t):.2f}x" if prec == "bf16" and other in times else ""
        ref = f"official {prec}"
        vs_official = f"{B.paired_ratio(times[ref], t):.2f}x" if ref in times and ref != k else ""
        peak = f"{100 * gflops / sec / rates[prec]:.0f}%" if gflops and "timm" not in impl else ""
        rows.append([k, f"{sec * 1e3:.0f}", f"{batch / sec:.2f}", vs_fp32, vs_official, peak, peaks.get(k, "-")])
    header = ["contender", "ms / batch", "im/s", "fp32 / bf16 (same impl)",
              "official Hiera / this (same precision)", "% of the matmul peak (same precision)", "peak MiB"]
    return B.markdown_table(header, rows)


def benchmark(args: argparse.Namespace) -> None:
    rates = {"fp32": B.matmul_peak_gflops(), "bf16": B.matmul_peak_gflops(dtype=BF16)}
    load = os.getloadavg()
    print(f"CPU: {_cpu_name()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads, torch {torch.__version__}; "
          f"native bf16: {'yes' if cpu_has_native_bf16() else 'no'}; matmul (2048^3) fp32 {rates['fp32']:.0f} "
          f"GFLOP/s, bf16 {rates['bf16']:.0f} GFLOP/s ({rates['bf16'] / rates['fp32']:.2f}x); load average "
          f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; median of {args.rounds} interleaved rounds after 1 warm-up",
          flush=True)
    fns, _, gflops = inference(args.batch)
    times = B.paired_timings(fns, rounds=args.rounds)
    print("inference, ms per round: " + "; ".join(f"{k} " + " ".join(f"{s * 1e3:.0f}" for s in t)
                                                 for k, t in times.items()), flush=True)
    peaks = {} if args.no_memory else {k: peak_mib(f, grad=False) for k, f in fns.items()}
    inf = table(times, peaks, args.batch, rates, gflops)
    del fns
    steps, _ = training(args.batch)
    times = B.paired_timings(steps, rounds=args.rounds, grad=True)
    print("training step, ms per round: " + "; ".join(f"{k} " + " ".join(f"{s * 1e3:.0f}" for s in t)
                                                     for k, t in times.items()), flush=True)
    peaks = {} if args.no_memory else {k: peak_mib(f, grad=True) for k, f in steps.items()}
    train = table(times, peaks, args.batch, rates, None)
    print(f"\n### Hiera-B inference, batch {args.batch}, 224 px ({gflops:.0f} GFLOPs)\n\n{inf}")
    print(f"\n### MAE-Hiera-B step (forward + backward + fused AdamW), batch {args.batch}, mask {MASK_RATIO}\n\n{train}")
    load = os.getloadavg()
    print(f"\nload average at the end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


def _cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "?"


# ---------------------------------------------------------------- profile
def _family(event) -> str:
    """The op family of a profiler event; a copy made by a dtype cast (``_to_copy``, autocast's and ``.to``'s) is a
    cast, not a layout copy."""
    op, parent = event.name, event.cpu_parent
    if op.startswith("aten::_to_copy") or op == "aten::to" or (
            op in ("aten::copy_", "aten::empty_strided") and parent is not None and parent.name == "aten::_to_copy"):
        return "casts (aten::to / _to_copy and its copy_)"
    if op.startswith(("aten::native_layer_norm", "aten::layer_norm")):
        return "layer norm (fwd + bwd)"
    if op.startswith("aten::gelu"):
        return "GELU (fwd + bwd)"
    if op.startswith(("aten::_softmax", "aten::_safe_softmax", "aten::softmax")):
        return "softmax (outside fused attention)"
    if op.startswith(("aten::_scaled_dot_product_flash", "aten::_flash_attention")):
        return "fused attention (flash SDPA, fwd + bwd)"
    if op.startswith("aten::_scaled_dot_product_efficient"):
        return "fused attention (efficient SDPA)"
    if op.startswith(("aten::mse_loss", "aten::pow", "aten::var", "aten::mean")):
        return "loss and target (pow, var, mean)"
    return next((f for f, prefixes in OP_FAMILIES.items() if op.startswith(prefixes)), "other (elementwise, sums, ...)")


def profile(args: argparse.Namespace) -> None:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    steps, _ = training(args.batch)
    for name in ("ours fp32", "ours bf16"):
        step = steps[name]
        step(), step()  # warm-up (the first step also allocates the optimizer state)
        with torch_profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            start = time.perf_counter()
            for _ in range(args.profile_steps):
                step()
            sec = (time.perf_counter() - start) / args.profile_steps
        n = args.profile_steps
        events = prof.key_averages()
        phases = {e.key[3:]: e.cpu_time_total / n / 1e3 for e in events if e.key.startswith("## ")}
        total = sum(e.self_cpu_time_total for e in events) / n / 1e3
        print(f"\n### {name}, batch {args.batch}: {sec * 1e3:.0f} ms / step (profiled); "
              + ", ".join(f"{k} {ms:.0f} ms" for k, ms in phases.items()))
        families: dict[tuple[str, str], float] = {}
        sdpa: dict[tuple[str, str], int] = {}
        casts: dict[str, int] = {}
        for e in prof.events():
            if e.name.startswith("## "):
                continue
            phase = _phase(e)
            if "scaled_dot_product" in e.name or e.name.startswith(("aten::_flash_attention", "aten::bmm")):
                shape = "x".join(map(str, e.input_shapes[0])) if e.input_shapes and e.input_shapes[0] else "?"
                sdpa[(e.name, phase, shape)] = sdpa.get((e.name, phase, shape), 0) + 1
            if e.name == "aten::_to_copy":
                casts[phase] = casts.get(phase, 0) + 1
            key = ("optimizer step (all its ops)" if phase == "optimizer" else _family(e), phase)
            families[key] = families.get(key, 0.0) + e.self_cpu_time_total / n / 1e3
        print(B.markdown_table(["op family (self CPU)", "phase", "ms / step", "% of step"], [
            [k, p, f"{ms:.0f}", f"{100 * ms / total:.1f}%"]
            for (k, p), ms in sorted(families.items(), key=lambda kv: -kv[1]) if ms >= 0.5]))
        print("\ndtype casts (aten::_to_copy) per step: " + ", ".join(f"{p} {c // n}" for p, c in casts.items()))
        print("\nattention calls (op, phase, query shape: count per step):")
        for (op, phase, shape), count in sorted(sdpa.items()):
            print(f"  {op} [{phase}] {shape}: {count // n}")
        print()
        print(B.markdown_table(["op (self CPU)", "ms / step", "% of step", "calls / step"], [
            [e.key[:60], f"{e.self_cpu_time_total / n / 1e3:.0f}",
             f"{100 * e.self_cpu_time_total / n / 1e3 / total:.1f}%", e.count // n]
            for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[:args.profile_rows]
            if not e.key.startswith("## ")]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory calls")
    parser.add_argument("--profile", action="store_true", help="profile our MAE step fp32 against bf16 instead")
    parser.add_argument("--profile-steps", type=int, default=2)
    parser.add_argument("--profile-rows", type=int, default=20)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's, one per core)")
    args = parser.parse_args()
    if "MALLOC_MMAP_THRESHOLD_" not in os.environ and not args.profile:  # see the module docstring
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"})
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    profile(args) if args.profile else benchmark(args)


if __name__ == "__main__":
    main()
