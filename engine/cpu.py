"""What the CPU can do that the matrix kernels care about (AVX512-VNNI, native bf16)."""

from __future__ import annotations

import functools
from pathlib import Path

import torch


@functools.cache
def cpu_has_vnni() -> bool:
    """Whether this CPU has AVX512-VNNI, with which fbgemm accumulates u8 x s8 products in int32
    directly; without it pairs of products saturate int16, so fbgemm gets 7-bit activation
    integers instead of 8 (see :func:`activation_levels`)."""
    probe = getattr(torch.cpu, "_is_vnni_supported", None)
    if probe is not None:
        return bool(probe())
    try:
        return "avx512_vnni" in Path("/proc/cpuinfo").read_text(errors="ignore").split()
    except OSError:
        return False


@functools.cache
def cpu_has_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (AVX512-BF16, AMX, Arm BF16)."""
    probe = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
    if probe is not None and probe():
        return True
    try:
        text = Path("/proc/cpuinfo").read_text(errors="ignore")
    except OSError:
        return False
    flags = set(text.split())
    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})
