"""Measuring models: parameters, FLOPs (counted on the meta device, no compute) and paired wall-clock timings."""

from __future__ import annotations

import contextlib
import ctypes
import gc
import json
import os
import re
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Mapping, Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def logits_only(official: nn.Module) -> nn.Module:
    """An official ``hiera-transformer`` model with its head's eval-mode softmax removed, so that it returns logits
    as ours does (the reference's quirk; see ../shared/REFERENCE.md)."""
    official.head.act_func = nn.Identity()
    return official


def official_model(name: str, **kwargs) -> nn.Module | None:
    """The official ``hiera-transformer`` model ``name`` (its factory, ``kwargs`` passed on) in eval mode, returning
    logits (:func:`logits_only`); None when the package is not installed or has no such model."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import hiera
    except ImportError:
        return None
    factory = getattr(hiera, name, None)
    return logits_only(factory(**kwargs).eval()) if factory is not None else None


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_flops(build: Callable[[], nn.Module], input_shape: Sequence[int]) -> int:
    """FLOPs (2 per multiply-add) of one forward, counted on the meta device so no weights or compute are needed."""
    with torch.device("meta"):
        model = build().eval()
        x = torch.empty(*input_shape)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    return counter.get_total_flops()


def input_shape(model: nn.Module, batch: int) -> tuple[int, ...]:
    """The native input of a model built with ``input_size`` (ours and the official both store it)."""
    size = getattr(model, "config", {}).get("input_size") or (224, 224)
    return (batch, 3, *size)


def matmul_peak_gflops(n: int = 2048, repeats: int = 5, dtype: torch.dtype = torch.float32) -> float:
    """This machine's matmul throughput in ``dtype`` (fp32 or bf16; the best of ``repeats`` n x n x n products),
    the ceiling for a transformer's linear layers in that precision."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    best = min(_time(lambda: a @ b) for _ in range(repeats))
    return 2 * n**3 / best / 1e9


def _time(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def paired_timings(fns: Mapping[str, Callable[[], object]], *, rounds: int = 5, warmup: int = 1,
                   grad: bool = False) -> dict[str, list[float]]:
    """Seconds per call for each function, interleaved round by round (the order rotates each round) so that
    machine noise hits every contender alike; ratios are then taken per round. ``grad``: autograd on (training
    steps), else the calls run under inference mode."""
    names = list(fns)
    with contextlib.nullcontext() if grad else torch.inference_mode():
        for _ in range(warmup):
            for name in names:
                fns[name]()
        times: dict[str, list[float]] = {name: [] for name in names}
        for r in range(rounds):
            for name in names[r % len(names):] + names[: r % len(names)]:
                times[name].append(_time(fns[name]))
    return times


def adamw_step(model: nn.Module, loss: Callable[[], torch.Tensor], lr: float = 1e-5) -> Callable[[], float]:
    """A training step to time: ``loss()``, backward, a fused AdamW step, then the gradients dropped (so no
    contender holds them between calls); the optimizer state is allocated by the first call."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, fused=True)

    def step() -> float:
        value = loss()
        value.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return value.item()

    return step


def median(xs: Sequence[float]) -> float:
    return statistics.median(xs)


def paired_ratio(slow: Sequence[float], fast: Sequence[float]) -> float:
    """Median over rounds of ``slow / fast`` (> 1: ``fast`` is faster)."""
    return statistics.median(s / f for s, f in zip(slow, fast, strict=True))


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


# ---------------------------------------------------------------- memory on CPU: the process's peak RSS
# With a fixed glibc mmap threshold (MALLOC_MMAP_THRESHOLD_=131072 in the environment at process start) every tensor
# of 128 KiB or more is its own mmap, freed back to the OS at once, so the resident set follows the live tensors.
def rss_kib(field: str = "VmRSS") -> int:
    with open("/proc/self/status") as f:
        return int(re.search(rf"^{field}:\s+(\d+) kB", f.read(), re.MULTILINE).group(1))


def in_child_with_fixed_mmap_threshold(argv: Sequence[str]) -> object:
    """Run ``python *argv`` with the mmap threshold fixed and return the JSON its last stdout line holds.

    Peak memory is measured there and timings in the calling process, whose glibc keeps its default (dynamic)
    threshold: a fixed one makes every large tensor its own mmap, page-faulted in on each call, which slowed Hiera-B
    inference by 1.1x (fp32) to 1.25x (bf16) on this project's CPU (docs/bench_precision.md).
    """
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
    out = subprocess.run([sys.executable, *argv], env=env, check=True, stdout=subprocess.PIPE, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def peak_rss_kib(fn: Callable[[], object]) -> tuple[int, int | None]:
    """``(base, peak)``: the resident set (KiB) just before ``fn`` (after a collection and malloc_trim) and its
    peak while ``fn`` runs (Linux: VmHWM, reset through clear_refs); peak None where it cannot be reset."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass
    base = rss_kib()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # VmHWM := VmRSS
    except OSError:
        return base, None
    if rss_kib("VmHWM") > base + 1024:
        return base, None
    fn()
    return base, rss_kib("VmHWM")
