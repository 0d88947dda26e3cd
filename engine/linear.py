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
import os
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

SMALL_BATCH = 8  # up to this many rows a product is memory-bound: use the int8 / bf16 kernels


class Int8Linear:
    """A linear layer's weight (out, in) as int8 with a float scale per output channel.

    Kernels, fastest first (measured on a 2-core AVX2 machine, 24 distinct matrices, so that
    the weights come from memory as in a real forward pass):
    - "fbgemm": PyTorch's quantized CPU engine (``quantized::linear_dynamic``): 23-26 GB/s of
      weights read, 75-85% of the memory bandwidth; the activations are quantised on the fly
      per row (7-bit range on CPUs without VNNI), the error that costs is measured by the tests;
    - "int8pack": ``torch._weight_int8pack_mm``, weight-only (bf16 activations), 12-20 GB/s;
    - "dequant": int8 weights converted to the activation type per call (GPUs, and long chunks).
    """

    def __init__(self, weight: torch.Tensor, *, device: str | torch.device = "cpu",
                 kernel: str | None = None):
        q, scale = quantize_rows(weight, device)
        self.shape = tuple(q.shape)
        self.scale = scale  # float32 (out,)
        self.kernel = kernel or default_kernel(q.device)
        self.q = self.packed = None
        if self.kernel == "fbgemm" and not _fbgemm_works():
            self.kernel = default_kernel(q.device, fbgemm=False)
        if self.kernel == "fbgemm":
            zeros = torch.zeros(q.shape[0], dtype=torch.long)
            with warnings.catch_warnings():  # quantized tensors are "deprecated" but the ops remain
                warnings.simplefilter("ignore")
                qw = torch._make_per_channel_quantized_tensor(q, scale.double(), zeros, 0)
                self.packed = torch.ops.quantized.linear_prepack(qw, None)
        else:
            self.q = q
            self.scale_bf16 = scale.to(torch.bfloat16)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        lead, k = x.shape[:-1], x.shape[-1]
        x2 = x.reshape(-1, k)
        if self.packed is not None:
            y = torch.ops.quantized.linear_dynamic(x2.float().contiguous(), self.packed, True)
        elif self.kernel == "int8pack" and x2.shape[0] <= SMALL_BATCH:
            y = torch._weight_int8pack_mm(x2.to(torch.bfloat16).contiguous(), self.q, self.scale_bf16)
        else:
            dt = torch.float32 if x.device.type == "cpu" else x.dtype
            y = F.linear(x2.to(dt), self.q.to(dt)) * self.scale.to(dt)
        return y.to(x.dtype).reshape(*lead, self.shape[0])

    def to(self, device) -> "Int8Linear":
        if self.packed is not None:
            if torch.device(device).type == "cpu":
                return self
            raise ValueError("fbgemm-packed int8 weights live on the CPU")
        new = object.__new__(Int8Linear)
        new.q, new.scale, new.scale_bf16 = (t.to(device, non_blocking=True) for t in (self.q, self.scale, self.scale_bf16))
        new.shape, new.packed = self.shape, None
        new.kernel = "int8pack" if new.q.device.type == "cpu" and self.kernel == "int8pack" else "dequant"
        return new

    def rows(self, idx: torch.Tensor) -> torch.Tensor:
        """Float32 rows ``idx`` of the dequantised weight: shape ``idx.shape + (in,)``."""
        if self.packed is not None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                q = torch.ops.quantized.linear_unpack(self.packed)[0].int_repr()
        else:
            q = self.q
        return q[idx].float() * self.scale[idx].unsqueeze(-1)

    def nbytes(self) -> int:
        return self.shape[0] * self.shape[1] + self.scale.numel() * 4


def quantize_rows(weight: torch.Tensor, device, block: int = 1 << 22) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 per output row, a block of rows at a time so that the float32 work space
    stays small (the output head is 65536 rows: converting it whole would spike RAM by GBs)."""
    rows, cols = weight.shape
    q = torch.empty(rows, cols, dtype=torch.int8, device=device)
    scale = torch.empty(rows, dtype=torch.float32, device=device)
    step = max(1, block // cols)
    for r0 in range(0, rows, step):
        w = weight[r0:r0 + step].to(device=device, dtype=torch.float32)
        s = w.abs().amax(dim=1).clamp(min=1e-10) / 127.0
        q[r0:r0 + step] = w.div_(s.unsqueeze(1)).round_().clamp_(-127, 127).to(torch.int8)
        scale[r0:r0 + step] = s
    return q, scale


@functools.cache
def _fbgemm_works() -> bool:
    with warnings.catch_warnings():
        return _try_fbgemm()


def _try_fbgemm() -> bool:
    try:
        warnings.simplefilter("ignore")
        q = torch._make_per_channel_quantized_tensor(
            torch.ones(4, 4, dtype=torch.int8), torch.ones(4, dtype=torch.double),
            torch.zeros(4, dtype=torch.long), 0)
        packed = torch.ops.quantized.linear_prepack(q, None)
        y = torch.ops.quantized.linear_dynamic(torch.ones(1, 4), packed, True)
        return bool(torch.allclose(y, torch.full((1, 4), 4.0), atol=0.1))
    except (RuntimeError, AttributeError, NotImplementedError):
        return False


def default_kernel(device: torch.device, *, fbgemm: bool = True) -> str:
    if device.type != "cpu":
        return "dequant"
    if os.environ.get("ROOST_INT8_KERNEL") in ("fbgemm", "int8pack", "dequant"):
        return os.environ["ROOST_INT8_KERNEL"]
    if fbgemm and _fbgemm_works():
        return "fbgemm"
    return "int8pack" if hasattr(torch, "_weight_int8pack_mm") else "dequant"


def linear(x: torch.Tensor, w) -> torch.Tensor:
    """``x @ w.T`` for a weight tensor (out, in) or an :class:`Int8Linear`."""
    if isinstance(w, Int8Linear):
        return w(x)
    if x.dtype == w.dtype:
        return F.linear(x, w)
    # lower-precision weights under float32 activations (the CPU strategies)
    # (the size test first: one token never reads /proc/cpuinfo, which torch.compile cannot trace)
    if w.dtype == torch.bfloat16 and x.device.type == "cpu" and x.numel() > SMALL_BATCH * x.shape[-1] \
            and not cpu_has_bf16():
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
