"""The compute precision of a run: one decision, made here, from the ``precision`` key and the device.

``precision`` is ``"auto"`` (bf16 on CUDA, fp32 elsewhere), ``"fp32"`` or ``"bf16"``. bf16 means autocast: the
weights, their gradients and the optimizer's moments stay fp32 (the master weights), the matmuls and attention run
in bf16, and each task computes its loss from fp32 logits / predictions. bf16 is only worth it where the hardware
multiplies bf16 natively: a CPU without ``avx512_bf16`` / ``amx_bf16`` (AVX2, or AVX-512 without the bf16
extension) emulates it, slower than fp32, so there the run says so in one line and keeps fp32.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import platform
from pathlib import Path

import torch

log = logging.getLogger(__name__)
NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})  # x86 flags of a bf16 dot product in hardware
X86 = ("x86_64", "amd64", "i386", "i686")


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str] | None:
    """The CPU's feature flags from ``/proc/cpuinfo`` (Linux); None where it cannot be read."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return None


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 in hardware: ``avx512_bf16`` or ``amx_bf16`` on x86 (from the flags), else
    what oneDNN reports (ARM's bf16 extension)."""
    flags = cpu_flags()
    if platform.machine().lower() in X86 and flags is not None:
        return bool(NATIVE_BF16_FLAGS & flags)
    return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def resolve(precision: str, device: torch.device) -> torch.dtype:
    """The dtype a run with ``precision`` computes in on ``device`` (see the module docstring); logs the one line
    of a fallback to fp32."""
    if precision == "fp32" or (precision == "auto" and device.type != "cuda"):
        return torch.float32
    if device.type == "cpu" and not cpu_has_native_bf16():
        log.warning("precision=%s: this CPU has no native bf16 (no avx512_bf16 / amx_bf16; bf16 would be emulated "
                    "and slower), so the run computes in fp32", precision)
        return torch.float32
    if device.type == "cuda" and not torch.cuda.is_bf16_supported(including_emulation=False):
        log.warning("precision=%s: this GPU has no native bf16, so the run computes in fp32", precision)
        return torch.float32
    return torch.bfloat16


def name(dtype: torch.dtype) -> str:
    """``"bf16"`` / ``"fp32"``, as run.json records it."""
    return {torch.bfloat16: "bf16", torch.float32: "fp32"}[dtype]


def autocast(device: torch.device, dtype: torch.dtype):
    """The context a forward runs in: bf16 autocast, or nothing (fp32)."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)
