"""What the CPU can do that the matrix kernels care about (AVX512-VNNI, native bf16)."""

from __future__ import annotations

import functools
import os
from pathlib import Path

import torch


@functools.cache
def cpu_has_vnni() -> bool:
    """Whether this CPU has AVX512-VNNI, with which fbgemm accumulates u8 x s8 products in int32
    directly; without it pairs of products saturate int16, so fbgemm gets 7-bit activation
    integers instead of 8 (see :func:`activation_levels`)."""
    if _capped():
        return False
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
    if _capped():
        return False
    probe = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
    if probe is not None and probe():
        return True
    try:
        text = Path("/proc/cpuinfo").read_text(errors="ignore")
    except OSError:
        return False
    flags = set(text.split())
    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})


def _capped() -> bool:
    """Whether torch was told to use no more than AVX2 (``ATEN_CPU_CAPABILITY``, torch's own
    setting): then its kernels use no AVX-512 instruction and neither may our choices assume one
    (a run as on an AVX2 CPU, e.g. to measure what such a CPU gets, on an AVX-512 machine)."""
    return os.environ.get("ATEN_CPU_CAPABILITY", "").strip().lower() in ("default", "avx2", "avx", "zvector")
