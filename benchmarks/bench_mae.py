"""MAE pretraining step (forward + backward + AdamW step) of hieralab's MaskedAutoencoderHiera vs the official
hiera-transformer one, on this CPU, fp32, same weights, same input and same mask (ratio 0.6).

Speed: every variant in one process, interleaved rounds (the order rotates each round), medians and paired ratios.
Memory: every variant again in its own fresh subprocess (``--child``): the peak RSS (VmHWM, reset through
/proc/self/clear_refs) during steps, over the RSS after construction, one warm-up step and zero_grad. The child runs
with a fixed glibc mmap threshold (MALLOC_MMAP_THRESHOLD_), so freed tensors go back to the OS at once and RSS
follows the live tensors; ``--default-malloc`` measures under glibc's default (dynamic) policy instead.
``--profile`` prints where the time goes (torch.profiler, by op family and by op) in the official step and in ours.
See docs/bench_mae.md. Usage (the default, tiny at batch 8, takes about 5 minutes on an idle 2-core machine):

    .venv/bin/python benchmarks/bench_mae.py [--rounds 3] [--batch 8] [--models mae_hiera_tiny_224 mae_hiera_base_224]
    .venv/bin/python benchmarks/bench_mae.py --profile [--profile-steps 2] [--models mae_hiera_tiny_224]

On a machine shared with other jobs, 2 OpenMP threads stall on every parallel region whenever one is descheduled
(steps 3-4x slower, and op-heavy code is penalised most); ``--threads 1`` gives steadier, if different, numbers.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable

import torch
from torch.profiler import record_function

import hieralab
from hieralab import bench as B
from hieralab.mae.masking import random_visible

warnings.filterwarnings("ignore")

MASK_RATIO = 0.6
LR = 1e-4
# variant: (model, AdamW kind, what the loss is). "official" is what a user of the official repo gets (torch's
# default AdamW: on CPU the per-tensor for-loop); ours uses fused AdamW as our pipeline (engine/optim.build_adamw).
VARIANTS = {
    "official": ("official", "default", "mae"),
    "official+fused": ("official", "fused", "mae"),
    "ours": ("ours", "fused", "mae"),
    "ours dense (mask 0)": ("ours", "fused", "dense"),
    "official encoder": ("official", "fused", "encoder"),
    "ours encoder": ("ours", "fused", "encoder"),
}
REFERENCE = {"ours encoder": "official encoder", "official encoder": "official encoder"}  # else "official"


def build(name: str, batch: int, variants: list[str], seed: int = 0) -> tuple[dict[str, Callable], dict]:
    """Step functions for ``variants`` (models shared between variants, one optimizer each), and the input."""
    import hiera

    torch.manual_seed(seed)
    models = {"official": getattr(hiera, name)()}
    if any(VARIANTS[v][0] == "ours" for v in variants):
        models["ours"] = hieralab.create_model(name)
        hieralab.load_checkpoint(models["ours"], models["official"].state_dict())
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 3, 224, 224, generator=gen)  # the image models (mae_hiera_*_224)
    units = math.prod(models["official"].mask_spatial_shape)  # 7 * 7 mask units at 224 px
    visible = random_visible(batch, units, MASK_RATIO, generator=gen)  # [B, #MU], True = the encoder sees it
    if all(VARIANTS[v][0] == "ours" for v in variants):
        del models["official"]  # only needed for its weights
    data = {"x": x, "visible": visible, "models": models}

    def loss_fn(impl: str, kind: str) -> Callable[[], torch.Tensor]:
        m = models[impl]
        if impl == "official":
            if kind == "encoder":
                return lambda: m.forward_encoder(x, MASK_RATIO, mask=visible)[0].square().mean()
            return lambda: m(x, mask=visible)[0]
        if kind == "encoder":
            return lambda: m.forward_encoder(x, visible).square().mean()
        if kind == "dense":  # every unit visible: no hidden patch, so the loss is 0, but every op still runs
            dense = torch.ones_like(visible)
            return lambda: m(x, dense).loss
        return lambda: m(x, visible).loss

    steps = {}
    for v in variants:
        impl, opt_kind, kind = VARIANTS[v]
        opt = torch.optim.AdamW(models[impl].parameters(), lr=LR, fused=True if opt_kind == "fused" else None)
        steps[v] = make_step(loss_fn(impl, kind), opt)
    return steps, data


def make_step(loss_fn: Callable[[], torch.Tensor], opt: torch.optim.Optimizer) -> Callable[[], float]:
    def step() -> float:
        opt.zero_grad(set_to_none=True)
        with record_function("## forward"):
            loss = loss_fn()
        with record_function("## backward"):
            loss.backward()
        with record_function("## optimizer"):
            opt.step()
        return loss.item()

    step.opt = opt
    return step


def check_parity(data: dict) -> None:
    """The official and our MAE give the same loss (and encoder output) on the same weights, input and mask."""
    models, x, visible = data["models"], data["x"], data["visible"]
    with torch.no_grad():
        ref, got = models["official"](x, mask=visible)[0], models["ours"](x, visible).loss
        enc_ref = models["official"].forward_encoder(x, MASK_RATIO, mask=visible)[0]
        enc = models["ours"].forward_encoder(x, visible)
    assert abs(ref.item() - got.item()) < 1e-4 * abs(ref.item()), f"losses differ: {ref.item()} vs {got.item()}"
    err = (enc_ref - enc).abs().max().item()
    assert err < 1e-3, f"encoder outputs differ by {err}"


# ---------------------------------------------------------------- memory, in a fresh process per variant
def child(variant: str, name: str, batch: int, mem_steps: int) -> None:
    """Build one variant, warm up, then print ``MEM {json}`` with the resident baseline and the step peak (KiB)."""
    steps, data = build(name, batch, [variant])
    step = steps[variant]
    step()  # warm-up: allocates the optimizer state, first-touches everything
    step.opt.zero_grad(set_to_none=True)
    del data
    start = time.perf_counter()
    base, hwm = B.peak_rss_kib(lambda: [step() for _ in range(mem_steps)])
    sec = (time.perf_counter() - start) / mem_steps
    print("MEM " + json.dumps({"base_kib": base, "hwm_kib": hwm or B.rss_kib("VmHWM"), "reset": hwm is not None,
                               "sec": sec}), flush=True)


def measure_memory(variant: str, name: str, batch: int, mem_steps: int, default_malloc: bool) -> dict:
    env = dict(os.environ)
    if not default_malloc:
        env["MALLOC_MMAP_THRESHOLD_"] = "131072"  # fixed (not dynamic): every tensor >= 128 KiB is its own mmap
    cmd = [sys.executable, os.path.abspath(__file__), "--child", variant, "--models", name, "--batch", str(batch),
           "--mem-steps", str(mem_steps), "--threads", str(torch.get_num_threads())]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"memory subprocess for {variant!r} failed:\n{proc.stderr[-2000:]}")
    return json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("MEM "))[4:])


# ---------------------------------------------------------------- profile
# Op families for the profile summary (by the op's name prefix; the first match wins). The optimizer is reported
# as its own phase, whatever ops it runs.
OP_FAMILIES = {
    "matmul (mm, addmm)": ("aten::mm", "aten::addmm"),
    "attention kernel (SDPA flash, or math: bmm, softmax, -inf checks)": (
        "aten::_scaled_dot_product", "aten::bmm", "aten::_softmax", "aten::_safe_softmax", "aten::all",
        "aten::isneginf", "aten::where", "aten::logical_not"),
    "convolutions (patch embed, fusion heads)": ("aten::convolution", "aten::mkldnn_convolution", "aten::_conv"),
    "mask: boolean indexing, gather, scatter, sort": (
        "aten::index", "aten::_index_put", "aten::nonzero", "aten::masked_", "aten::gather", "aten::scatter",
        "aten::argsort", "aten::sort"),
    "copies, cat, fills (layout changes)": ("aten::copy_", "aten::cat", "aten::fill_", "aten::zero_", "aten::clone"),
    "layer norm, GELU": ("aten::native_layer_norm", "aten::gelu"),
}


def _phase(event) -> str:
    while event is not None and not event.name.startswith("## "):
        event = event.cpu_parent
    return event.name[3:] if event is not None else "other"


def _family(op: str) -> str:
    return next((f for f, prefixes in OP_FAMILIES.items() if op.startswith(prefixes)), "other (elementwise, sums, ...)")


def profile(name: str, batch: int, variants: list[str], n_steps: int, rows: int) -> None:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    steps, _ = build(name, batch, variants)
    for v in variants:
        steps[v]()
        steps[v]()  # warm-up (the first step also allocates the optimizer state)
        with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
            start = time.perf_counter()
            for _ in range(n_steps):
                steps[v]()
            sec = (time.perf_counter() - start) / n_steps
        events = prof.key_averages()
        phases = {e.key[3:]: e.cpu_time_total / n_steps / 1e3 for e in events if e.key.startswith("## ")}
        total = sum(e.self_cpu_time_total for e in events) / n_steps / 1e3
        print(f"\n### {name} batch {batch}: {v}: {sec * 1e3:.0f} ms / step; "
              + ", ".join(f"{k} {ms:.0f} ms" for k, ms in phases.items()))
        families: dict[str, float] = {}
        for e in prof.events():
            if e.name.startswith("## "):
                continue
            key = "optimizer step (all its ops)" if _phase(e) == "optimizer" else _family(e.name)
            families[key] = families.get(key, 0.0) + e.self_cpu_time_total / n_steps / 1e3
        print(B.markdown_table(["op family (self CPU)", "ms / step", "% of step"], [
            [k, f"{ms:.0f}", f"{100 * ms / total:.1f}%"] for k, ms in sorted(families.items(), key=lambda kv: -kv[1])]))
        print()
        print(B.markdown_table(["op (self CPU)", "ms / step", "% of step", "calls / step"], [
            [e.key[:60], f"{e.self_cpu_time_total / n_steps / 1e3:.0f}",
             f"{100 * e.self_cpu_time_total / n_steps / 1e3 / total:.1f}%", e.count // n_steps]
            for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[:rows] if not e.key.startswith("## ")]))


# ---------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, nargs="+", default=[8])
    parser.add_argument("--models", nargs="+", default=["mae_hiera_tiny_224"])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--mem-steps", type=int, default=1, help="measured steps per memory subprocess")
    parser.add_argument("--no-memory", action="store_true", help="skip the per-variant memory subprocesses")
    parser.add_argument("--default-malloc", action="store_true", help="memory under glibc's default mmap policy")
    parser.add_argument("--profile", action="store_true", help="profile instead of benchmarking")
    parser.add_argument("--profile-steps", type=int, default=2)
    parser.add_argument("--profile-rows", type=int, default=15)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's, one per core)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        return child(args.child, args.models[0], args.batch[0], args.mem_steps)
    if args.profile:
        variants = [v for v in args.variants if v in ("official", "official+fused", "ours")]
        for name in args.models:
            for batch in args.batch:
                profile(name, batch, variants, args.profile_steps, args.profile_rows)
        return

    peak = B.matmul_peak_gflops()
    print(f"fp32 CPU, {torch.get_num_threads()} threads, torch {torch.__version__}, matmul peak {peak:.0f} GFLOP/s; "
          f"one MAE step (fwd + bwd + AdamW), mask ratio {MASK_RATIO}; median of {args.rounds} interleaved rounds "
          f"after 1 warm-up; memory: peak RSS over resident, fresh process per variant", flush=True)
    header = ["model", "batch", "variant", "AdamW", "ms / step", "im/s", "official / this", "official+fused / this",
              "step peak MiB", "peak / official", "resident MiB", "process peak MiB"]
    rows, spread = [], 0.0
    for name in args.models:
        for batch in args.batch:
            variants = list(args.variants)
            steps, data = build(name, batch, variants)
            if "official" in data["models"] and "ours" in data["models"]:
                check_parity(data)
            times = B.paired_timings(steps, rounds=args.rounds, grad=True)
            del steps, data
            gc.collect()
            if args.rounds > 1:
                spread = max([spread] + [statistics.pstdev(t) / statistics.mean(t) for t in times.values()])
            print(f"{name} batch {batch}, ms per round: " + "; ".join(
                f"{k} " + " ".join(f"{s * 1e3:.0f}" for s in t) for k, t in times.items()), flush=True)
            mem = {}
            if not args.no_memory:
                for v in variants:
                    mem[v] = measure_memory(v, name, batch, args.mem_steps, args.default_malloc)
                    print(f"  memory {v}: step peak {(mem[v]['hwm_kib'] - mem[v]['base_kib']) / 1024:.0f} MiB over "
                          f"{mem[v]['base_kib'] / 1024:.0f} MiB resident" + ("" if mem[v]["reset"] else
                                                                              " (VmHWM not reset: includes warm-up)"),
                          flush=True)
            for v, t in times.items():
                sec = B.median(t)
                ref = REFERENCE.get(v, "official")
                vs_ref = f"{B.paired_ratio(times[ref], t):.2f}x" if ref in times else "-"
                vs_fused = "-"
                if VARIANTS[v][2] != "encoder" and "official+fused" in times:
                    vs_fused = f"{B.paired_ratio(times['official+fused'], t):.2f}x"
                peak_mib = rel = resident = process = "-"
                if v in mem:
                    peak_mib = (mem[v]["hwm_kib"] - mem[v]["base_kib"]) / 1024
                    resident, process = f"{mem[v]['base_kib'] / 1024:.0f}", f"{mem[v]['hwm_kib'] / 1024:.0f}"
                    if ref in mem:
                        rel = f"{peak_mib * 1024 / (mem[ref]['hwm_kib'] - mem[ref]['base_kib']):.2f}x"
                    peak_mib = f"{peak_mib:.0f}"
                rows.append([name, batch, v, VARIANTS[v][1], f"{sec * 1e3:.0f}", f"{batch / sec:.2f}", vs_ref,
                             vs_fused, peak_mib, rel, resident, process])
    print()
    print(B.markdown_table(header, rows))
    if args.rounds > 1:
        print(f"\nlargest spread of one variant's step time over rounds: {100 * spread:.0f}% of its mean (noise)")


if __name__ == "__main__":
    main()
