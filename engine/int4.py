"""Group-wise 4-bit weights on PyTorch's packed CPU kernel (``cpu int4``)."""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

INT4_GROUP = 32  # weights per scale and zero point (see Int4Linear)
INT4_REFINE = 2  # least-squares rounds fitting each group's scale (see quantize_groups)


class Int4Linear:
    """A linear layer's weight (out, in) as group-wise 4-bit integers: each run of ``group``
    weights along a row has its own scale and zero point (asymmetric, the 16 levels span the
    group's range), packed for PyTorch's CPU kernel ``_weight_int4pack_mm_for_cpu``.

    The kernel multiplies bf16 activations and returns bf16 (its float32 path is ~40x slower);
    against 4-bit weights (a few per cent of error per weight) bf16's rounding is negligible.
    Measured one token at a time, 24 distinct matrices (2-core AVX512 machine): 7168x2048 in
    0.26 ms against 0.44 ms for int8 (fbgemm, two activation rows), 2048x2048 0.074 vs 0.18 ms;
    the group size changes the speed little (32..256 within 15%), so it is chosen for quality.
    Scale and zero point are rounded to bf16 before the weights are rounded to the 16 levels, so
    the integers are the best ones for the values the kernel will use. The kernel needs rows in
    multiples of 16 and ``in`` a multiple of the group: :meth:`fits` says whether a shape can.
    """

    def __init__(self, weight: torch.Tensor, *, group: int = INT4_GROUP, block: int = 1 << 22,
                 release=None):
        rows, cols = weight.shape
        if not self.fits(weight.shape, group):
            raise ValueError(f"a {rows}x{cols} weight cannot be packed as 4-bit groups of {group}")
        self.shape, self.group, self.dtype = (rows, cols), group, torch.uint8
        n_groups = cols // group
        self.packed = torch.empty(rows, cols // 2, dtype=torch.uint8)
        self.scale_zero = torch.empty(n_groups, rows, 2, dtype=torch.bfloat16)
        step = max(64, block // cols // 64 * 64)  # 64-row blocks pack exactly as the whole matrix
        for r0 in range(0, rows, step):
            part = weight[r0:r0 + step]
            q, scale, zero = quantize_groups(part, group)
            self.packed[r0:r0 + step] = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1)
            self.scale_zero[:, r0:r0 + step, 0] = scale.t()
            self.scale_zero[:, r0:r0 + step, 1] = zero.t()
            if release is not None:
                release(part)

    @classmethod
    def from_packed(cls, packed: torch.Tensor, scale_zero: torch.Tensor, group: int = INT4_GROUP) -> "Int4Linear":
        """From the tensors an Int4Linear holds (a converted-weights cache stores them)."""
        self = object.__new__(cls)
        self.packed, self.scale_zero, self.group, self.dtype = packed, scale_zero, group, torch.uint8
        self.shape = (packed.shape[0], packed.shape[1] * 2)
        return self

    @staticmethod
    def stored_shapes(shape, group: int = INT4_GROUP) -> dict[str, tuple]:
        rows, cols = shape
        return {"packed": (rows, cols // 2), "scale_zero": (cols // group, rows, 2)}

    @staticmethod
    def fits(shape, group: int = INT4_GROUP) -> bool:
        rows, cols = shape
        return rows % 16 == 0 and cols % group == 0 and group in (32, 64, 128, 256) and int4_works()

    precise_output = False  # bf16 products

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        lead, k = x.shape[:-1], x.shape[-1]
        x2 = x.reshape(-1, k).to(torch.bfloat16).contiguous()
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(x2, self.packed, self.group, self.scale_zero)
        return y.to(x.dtype).reshape(*lead, self.shape[0])

    def dequantized(self) -> torch.Tensor:
        """The float32 weight the kernel multiplies by (for tests: one product with the identity)."""
        eye = torch.eye(self.shape[1], dtype=torch.bfloat16)
        return torch.ops.aten._weight_int4pack_mm_for_cpu(eye, self.packed, self.group, self.scale_zero).float().t()

    def nbytes(self) -> int:
        return self.packed.numel() + self.scale_zero.numel() * 2


def quantize_groups(weight: torch.Tensor, group: int, refine: int = INT4_REFINE
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """4-bit integers (int32, 0..15) of ``weight`` (rows, cols) with one bf16 scale and zero point
    per ``group`` columns, (rows, cols / group) each, such that ``w ~ (q - 8) * scale + zero``.

    Starts from the group's range (min..max in 16 levels), then ``refine`` times fits scale and
    offset to the integers by least squares and rounds again: the error falls ~7% in two rounds
    (Gaussian weights, groups of 32: 7.8% -> 7.3% of the weights' norm), as llama.cpp's k-quants
    search their scales."""
    rows, cols = weight.shape
    w = weight.float().reshape(rows, cols // group, group)
    lo, hi = w.amin(-1, keepdim=True), w.amax(-1, keepdim=True)
    scale, offset = ((hi - lo) / 15).clamp_(min=1e-8), lo
    for _ in range(refine):
        q = ((w - offset) / scale).round_().clamp_(0, 15)
        q_mean, w_mean = q.mean(-1, keepdim=True), w.mean(-1, keepdim=True)
        q -= q_mean
        var = q.square().mean(-1, keepdim=True)
        fitted = (q * (w - w_mean)).mean(-1, keepdim=True) / var.clamp(min=1e-12)
        scale = torch.where(var > 0, fitted, scale).clamp_(min=1e-8)  # a constant group keeps its own
        offset = w_mean - scale * q_mean
    scale = scale.squeeze(-1).to(torch.bfloat16)
    zero = (offset.squeeze(-1) + 8 * scale.float()).to(torch.bfloat16)
    q = ((w - zero.float().unsqueeze(-1)) / scale.float().unsqueeze(-1) + 8).round_().clamp_(0, 15)
    return q.to(torch.int32).reshape(rows, cols), scale, zero


def speed_against_int8(matrices: int = 24, rows: int = 2048, cols: int = 2048, passes: int = 9, *,
                       kernels: bool = True) -> float:
    """How many times faster one token's product runs over 4-bit weights than over Roost's default
    8-bit ones on this CPU (0.0 where the 4-bit kernel is missing), for the advisor's speed
    estimate; with the compiled kernels (engine.native, unless ``kernels`` is False) theirs: q4
    against q8 blocks, 1.6-1.7x from memory on an AVX512-VNNI CPU (the bytes' ratio); else
    estimate: the 4-bit kernel reads half the bytes, but on some CPUs its arithmetic, not the
    memory, sets its pace (AVX2 CPUs, and AMD's Zen 4 despite AVX-512), and there it gains little
    or nothing. Products over ``matrices`` distinct random matrices in turn (96 MB of 8-bit weights
    by default, more than a CPU cache holds, so the weights come from memory as in a forward pass);
    the median of ``passes`` rounds of both kinds in turn. About a second, most of it packing the
    8-bit weights. Measured with it: 1.6-1.75x on a Zen 4 CPU (AVX-512); per matrix earlier
    (benchmarks/RESULTS.md, 7168 x 2048): 1.7x on an Intel AVX512-VNNI CPU, 0.9x on Zen 3 (AVX2)."""
    import statistics
    import time

    from roost.engine import native
    from roost.engine.int8 import Int8Linear

    gen = torch.Generator().manual_seed(0)
    n_groups = cols // INT4_GROUP
    eights, fours = [], []
    if native.available() and kernels:  # the compiled kernels' q8 and q4 blocks, which the model uses
        for _ in range(matrices):  # random bytes are valid blocks
            scales = torch.full((rows, cols // native.QB), 1e-3).half()
            eights.append(native.BlockLinear.from_blocks(8, {
                "q": torch.randint(-127, 128, (rows, cols), dtype=torch.int8, generator=gen), "d": scales}))
            fours.append(native.BlockLinear.from_blocks(4, {
                "q": torch.randint(0, 256, (rows, cols // 2), dtype=torch.uint8, generator=gen), "d": scales,
                "m": torch.zeros_like(scales)}))
    elif not int4_works():
        return 0.0
    else:
        for _ in range(matrices):  # random bytes are valid weights for both kernels
            q = torch.randint(-127, 128, (rows, cols), dtype=torch.int8, generator=gen)
            eights.append(Int8Linear.from_quantized(q, torch.full((rows,), 1e-3)))
            packed = torch.randint(0, 256, (rows, cols // 2), dtype=torch.uint8, generator=gen)
            scale_zero = torch.stack([torch.full((n_groups, rows), 1e-3), torch.zeros(n_groups, rows)], -1)
            fours.append(Int4Linear.from_packed(packed, scale_zero.to(torch.bfloat16).contiguous()))
    x = torch.randn(1, cols, generator=gen)

    def seconds(weights) -> float:
        t0 = time.perf_counter()
        for w in weights:
            w(x)
        return time.perf_counter() - t0

    seconds(eights), seconds(fours)  # once through first: allocations and any lazy set-up
    # the two kinds in alternation, so that a moment of other work on the machine touches both
    return statistics.median(seconds(eights) / seconds(fours) for _ in range(passes))


@functools.cache
def int4_works() -> bool:
    """Whether this torch has the packed 4-bit CPU kernel, and it computes right."""
    try:
        w = torch.linspace(-1, 1, 16 * 64).reshape(16, 64)
        q, scale, zero = quantize_groups(w, 32)
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1)
        sz = torch.stack([scale.t(), zero.t()], -1).contiguous()
        x = torch.linspace(1, -1, 64).reshape(1, 64)
        got = torch.ops.aten._weight_int4pack_mm_for_cpu(x.bfloat16(), packed, 32, sz).float()
        return bool(torch.allclose(got, F.linear(x, w), rtol=0.05, atol=0.2))
    except (RuntimeError, AttributeError, NotImplementedError):
        return False
