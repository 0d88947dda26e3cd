"""Matrix-vector products for every precision: the one hot spot of RWKV inference.

Every projection in the architecture modules goes through :func:`linear`, which takes either a
plain weight tensor (out, in) or an :class:`Int8Linear`.

- int8: weight-only quantisation, one scale per output channel (rows), symmetric to +-127.
  One token at a time (memory-bound) it uses PyTorch's fused CPU kernel
  ``torch._weight_int8pack_mm`` (int8 weights, bf16 activations), reading 1 byte per weight;
  for prompt chunks (compute-bound) it dequantises to the activation type and multiplies.
  The reference package's CPU int8 dequantises in Python on every call and is far slower.
- On the CPU, activations are float32 whatever the weights' type (the residual stream keeps its
  precision; elementwise work is negligible next to the matrices). bf16 weights multiply in bf16
  one token at a time (half the bytes to read); prompt chunks multiply in float32 on CPUs without
  native bf16 arithmetic (no AVX512-BF16/AMX), many times faster there.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch
import torch.nn.functional as F

SMALL_BATCH = 8  # up to this many rows a product is memory-bound: use the int8 / bf16 kernels


class Int8Linear:
    """A linear layer's weight (out, in) as int8 with a float scale per output channel."""

    def __init__(self, weight: torch.Tensor, *, device: str | torch.device = "cpu"):
        w = weight.to(device=device, dtype=torch.float32)
        scale = w.abs().amax(dim=1).clamp(min=1e-10) / 127.0
        self.q = torch.round(w / scale.unsqueeze(1)).clamp_(-127, 127).to(torch.int8).contiguous()
        del w
        self.scale = scale  # float32 (out,)
        self.scale_bf16 = scale.to(torch.bfloat16)
        self.shape = tuple(self.q.shape)
        self.fused = self.q.device.type == "cpu" and hasattr(torch, "_weight_int8pack_mm")

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        lead, k = x.shape[:-1], x.shape[-1]
        x2 = x.reshape(-1, k)
        if self.fused and x2.shape[0] <= SMALL_BATCH:
            y = torch._weight_int8pack_mm(x2.to(torch.bfloat16).contiguous(), self.q, self.scale_bf16)
        else:
            dt = torch.float32 if x.device.type == "cpu" else x.dtype
            y = F.linear(x2.to(dt), self.q.to(dt)) * self.scale.to(dt)
        return y.to(x.dtype).reshape(*lead, self.shape[0])

    def to(self, device) -> "Int8Linear":
        new = object.__new__(Int8Linear)
        new.q, new.scale, new.scale_bf16 = (t.to(device, non_blocking=True) for t in (self.q, self.scale, self.scale_bf16))
        new.shape = self.shape
        new.fused = new.q.device.type == "cpu" and hasattr(torch, "_weight_int8pack_mm")
        return new

    def nbytes(self) -> int:
        return self.q.numel() + self.scale.numel() * 6


def linear(x: torch.Tensor, w) -> torch.Tensor:
    """``x @ w.T`` for a weight tensor (out, in) or an :class:`Int8Linear`."""
    if isinstance(w, Int8Linear):
        return w(x)
    if x.dtype == w.dtype:
        return F.linear(x, w)
    # lower-precision weights under float32 activations (the CPU strategies)
    if w.dtype == torch.bfloat16 and x.device.type == "cpu" and not cpu_has_bf16() \
            and x.numel() > SMALL_BATCH * x.shape[-1]:
        return F.linear(x, w.to(x.dtype))
    return F.linear(x.to(w.dtype), w).to(x.dtype)


@functools.cache
def cpu_has_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (AVX512-BF16, AMX, Arm BF16)."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="ignore")
    except OSError:
        return False
    flags = set(text.split())
    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})
