"""fp32 against bf16 on this CPU, in one process: Hiera-B inference at batch 8 (224 px) and the MAE-Hiera-B training
step (forward + backward + fused AdamW, mask ratio 0.6) at batch 8; ours against the official hiera-transformer on
the same weights, input and mask, and timm's ViT-B/16 (inference) under the same precision.

bf16 is ``torch.autocast("cpu", dtype=torch.bfloat16)`` (fp32 weights, what ``precision=bf16`` trains with) for every
model, and for ours also ``optimize_for_inference(model, dtype=torch.bfloat16)`` (weights stored and prepacked in
bf16). Every contender runs in every round, the order rotating; the table gives medians and the medians of per-round
ratios, so the load of a shared machine hits all alike. The machine's fp32 and bf16 matmul rates and its load
(``os.getloadavg``) are printed. Peak memory: the rise of the process's resident set (VmHWM, reset through
/proc/self/clear_refs) during one more call of each contender, measured in a child process whose glibc mmap threshold
is fixed so that freed tensors go back to the OS at once (``bench.in_child_with_fixed_mmap_threshold``; the timings
run with glibc's default, which the fixed threshold would slow by 1.1-1.25x).

``--profile`` instead profiles the MAE step (torch.profiler), ours and the official, fp32 against bf16: time by
phase (forward, backward, optimizer) and by op family, the casts, and which attention kernel runs (see
docs/speed.md). Usage:

    .venv/bin/python benchmarks/bench_precision.py [--rounds 5] [--batch 8]
    .venv/bin/python benchmarks/bench_precision.py --profile [--batch 8] [--profile-steps 1]
    .venv/bin/python benchmarks/bench_precision.py --attention [--rounds 5]
"""

from __future__ import annotations

import argparse
import contextlib
import json
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
    del fns
    steps, _ = training(args.batch)
    train_times = B.paired_timings(steps, rounds=args.rounds, grad=True)
    print("training step, ms per round: " + "; ".join(f"{k} " + " ".join(f"{s * 1e3:.0f}" for s in t)
                                                     for k, t in train_times.items()), flush=True)
    del steps
    end_rates = {"fp32": B.matmul_peak_gflops(), "bf16": B.matmul_peak_gflops(dtype=BF16)}
    rates = {k: max(rates[k], end_rates[k]) for k in rates}  # a ceiling: the best seen (they vary ~10 % run to run)
    peaks = {"inference": {}, "training": {}} if args.no_memory else B.in_child_with_fixed_mmap_threshold(
        [__file__, "--memory-only", "--batch", str(args.batch)])
    inf = table(times, peaks["inference"], args.batch, rates, gflops)
    train = table(train_times, peaks["training"], args.batch, rates, None)
    print(f"\n### Hiera-B inference, batch {args.batch}, 224 px ({gflops:.0f} GFLOPs)\n\n{inf}")
    print(f"\n### MAE-Hiera-B step (forward + backward + fused AdamW), batch {args.batch}, mask {MASK_RATIO}\n\n{train}")
    load = os.getloadavg()
    print(f"\nload average at the end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; matmul rates at the end: fp32 "
          f"{end_rates['fp32']:.0f}, bf16 {end_rates['bf16']:.0f} GFLOP/s (the % of the peak uses the higher of "
          "start and end)")


def memory(args: argparse.Namespace) -> None:
    """Peak MiB of one call of every contender, as JSON on the last line (run by ``benchmark`` in a child)."""
    fns, _, _ = inference(args.batch)
    with torch.inference_mode():
        for f in fns.values():  # warm-up: oneDNN primitive caches and the like are not the call's memory
            f()
    peaks = {"inference": {k: peak_mib(f, grad=False) for k, f in fns.items()}}
    del fns
    steps, _ = training(args.batch)
    for f in steps.values():  # warm-up: the first step allocates AdamW's moments
        f()
    peaks["training"] = {k: peak_mib(f, grad=True) for k, f in steps.items()}
    print(json.dumps(peaks))


# query and key shapes [batch, heads, L, d] of the MAE-Hiera-B step at batch 8, mask 0.6 (mask-unit attention at
# stages 1-2 with the pooled queries, global attention at stages 3-4, the decoder) and of ViT-B/16 at batch 8
ATTENTION_SHAPES = [((152, 1, 64, 96), 64), ((152, 2, 16, 96), 64), ((152, 2, 16, 96), 16), ((152, 4, 4, 96), 16),
                    ((8, 4, 76, 96), 76), ((8, 8, 19, 96), 76), ((8, 16, 196, 32), 196), ((8, 12, 197, 64), 197)]


def attention(args: argparse.Namespace) -> None:
    """The CPU flash kernel (``scaled_dot_product_attention``) against two matmuls around a softmax
    (``layers.attention.matmul_attention``, ``attend``'s bf16 CPU path), fp32 and bf16, forward and forward +
    backward, at the shapes the models run."""
    import torch.nn.functional as F

    from hieralab.layers.attention import matmul_attention

    def contenders(q, k, v, grad) -> dict[str, Callable]:
        fns = {}
        for kernel, fn in (("flash", F.scaled_dot_product_attention), ("matmuls", matmul_attention)):
            fns[f"{kernel} forward"] = lambda fn=fn: fn(q.detach(), k.detach(), v.detach())
            fns[f"{kernel} fwd+bwd"] = lambda fn=fn: fn(q, k, v).backward(grad)
        return fns

    rows = []
    for shape, lk in ATTENTION_SHAPES:
        for dtype in (torch.float32, BF16):
            gen = torch.Generator().manual_seed(0)
            q = torch.randn(shape, generator=gen).to(dtype).requires_grad_()
            k, v = (torch.randn(*shape[:2], lk, shape[3], generator=gen).to(dtype).requires_grad_() for _ in "kv")
            fns = contenders(q, k, v, torch.randn(shape, generator=gen).to(dtype))
            times = B.paired_timings(fns, rounds=args.rounds, grad=True)
            ms = {n: B.median(t) * 1e3 for n, t in times.items()}
            rows.append(["x".join(map(str, shape)) + f" (keys {lk})", str(dtype)[6:],
                         *(f"{ms[f'{k} {w}']:.1f}" for w in ("forward", "fwd+bwd") for k in ("flash", "matmuls")),
                         f"{B.paired_ratio(times['flash fwd+bwd'], times['matmuls fwd+bwd']):.2f}x"])
    print(B.markdown_table(["query [batch, heads, L, d]", "dtype", "flash fwd ms", "matmuls fwd ms",
                            "flash fwd+bwd ms", "matmuls fwd+bwd ms", "matmuls faster (fwd+bwd)"], rows))


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
    if op.startswith(("aten::_softmax", "aten::_safe_softmax", "aten::softmax", "aten::bmm")):
        return "attention as matmuls (bmm, softmax; bf16 on CPU, the official's 5-D math path)"
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

    fns, _, gflops = inference(args.batch)
    rate = B.matmul_peak_gflops(dtype=BF16)
    with torch.inference_mode():
        for name in ("ours+packed fp32", "ours+packed bf16"):
            fns[name]()  # warm-up
            with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
                start = time.perf_counter()
                for _ in range(args.profile_steps):
                    fns[name]()
                sec = (time.perf_counter() - start) / args.profile_steps
            events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
            total = sum(e.self_cpu_time_total for e in events) / args.profile_steps / 1e3
            print(f"\n### inference, {name}, batch {args.batch}: {sec * 1e3:.0f} ms (profiled; {gflops:.0f} GFLOPs, "
                  f"bf16 matmul {rate:.0f} GFLOP/s)")
            print(B.markdown_table(["op (self CPU)", "ms / forward", "% of forward", "calls"], [
                [e.key[:60], f"{e.self_cpu_time_total / args.profile_steps / 1e3:.0f}",
                 f"{100 * e.self_cpu_time_total / args.profile_steps / 1e3 / total:.1f}%",
                 e.count // args.profile_steps]
                for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[:8]]))
    del fns
    steps, _ = training(args.batch)
    by_contender: dict[str, dict[tuple[str, str], float]] = {}
    for name in ("ours fp32", "ours bf16", "official fp32", "official bf16"):
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
        families[("whole step (profiled)", "")] = sec * 1e3
        by_contender[name] = families
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
    names = list(by_contender)
    keys = sorted({k for f in by_contender.values() for k in f}, key=lambda k: -by_contender["ours bf16"].get(k, 0))
    print("\n### ms per step by op family and phase, every contender\n")
    print(B.markdown_table(["op family (self CPU)", "phase", *names], [
        [k, p, *(f"{by_contender[c].get((k, p), 0):.0f}" for c in names)]
        for k, p in keys if max(by_contender[c].get((k, p), 0) for c in names) >= 0.5]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory calls")
    parser.add_argument("--profile", action="store_true",
                        help="profile the MAE steps (ours, official) fp32 against bf16 instead")
    parser.add_argument("--profile-steps", type=int, default=2)
    parser.add_argument("--profile-rows", type=int, default=20)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's, one per core)")
    parser.add_argument("--attention", action="store_true",
                        help="time the CPU flash kernel against two matmuls and a softmax at the models' shapes")
    parser.add_argument("--memory-only", action="store_true", help=argparse.SUPPRESS)  # the child of `benchmark`
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    (profile if args.profile else attention if args.attention else memory if args.memory_only
     else benchmark)(args)


if __name__ == "__main__":
    main()
