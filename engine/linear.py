"""Matrix-vector products for every precision: the one hot spot of RWKV inference.

Every projection in the architecture modules goes through :func:`linear` (several of one layer at
once: :func:`linear_many`), which takes a plain weight tensor (out, in), an int8 weight
(:class:`~roost.engine.int8.Int8Linear`), a 4-bit one (:class:`~roost.engine.int4.Int4Linear`) or a
:class:`PackedLinear`.

On the CPU, activations are float32 whatever the weights' type (the residual stream keeps its
precision; elementwise work is negligible next to the matrices). float32 and bf16 weights are packed
once at load into oneDNN's layout (:class:`PackedLinear`; bf16 only on CPUs with native bf16
arithmetic, AVX512-BF16/AMX), which reads them near the memory bandwidth. Elsewhere bf16 weights
multiply in bf16 one token at a time (half the bytes to read) and prompt chunks in float32, many
times faster on CPUs without native bf16.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from roost.engine.cpu import cpu_has_bf16
from roost.engine.int8 import SMALL_BATCH, Int8Linear, Packer, split_products


class PackedLinear:
    """A float32 or bf16 CPU weight (out, in) reordered once, at load, into oneDNN's blocked layout.

    One token at a time, oneDNN's inner product on a pre-reordered weight reads it at close to the
    memory bandwidth, where ``F.linear`` on the plain layout re-blocks it on every call (measured
    on a 2-core AVX512-BF16 machine, 7168x2048 matrices: bf16 68 vs 28 GB/s, float32 37 vs 21 GB/s;
    128-token chunks 2.7x faster in float32). The activations are cast to the weight's type, as
    with a plain bf16 weight. Tall matrices (the head) are packed in blocks of rows, so that
    loading never holds a whole converted copy beside the packed one. The reordered tensors are
    opaque: ``keep_rows`` keeps the plain weight too, for the output head, whose top rows are
    re-read in float32 (see ``RWKV._head``). ``release(rows)`` is called with each block of
    ``weight`` once it is packed (to drop a memory-mapped file's pages as loading goes).
    """

    BLOCK = 1 << 24  # elements per packed block: 64 MB of float32

    def __init__(self, weight: torch.Tensor, *, dtype: torch.dtype | None = None,
                 keep_rows: bool = False, release=None, packer: Packer | None = None):
        self.dtype = dtype or weight.dtype
        rows, cols = self.shape = tuple(weight.shape)
        self.blocks = []
        step = max(1, self.BLOCK // cols)
        if packer is not None:  # complete once the packer finishes
            assert not keep_rows, "a weight packed on the packer's threads keeps no plain rows"
            futures = [packer.run(_reorder, weight[r0:r0 + step], self.dtype, release) for r0 in range(0, rows, step)]
            packer.pending.append(lambda: setattr(self, "blocks", [f.result() for f in futures]))
            self.plain = None
            return
        for r0 in range(0, rows, step):
            self.blocks.append(_reorder(weight[r0:r0 + step], self.dtype, None if keep_rows else release))
        self.plain = weight.to(self.dtype).contiguous() if keep_rows else None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        lead, k = x.shape[:-1], x.shape[-1]
        x2 = x if x.dim() == 2 else x.reshape(-1, k)
        x2 = x2.to(self.dtype)
        if not x2.is_contiguous():
            x2 = x2.contiguous()
        ys = [torch.ops.mkldnn._linear_pointwise(x2, b, None, "none", [], "") for b in self.blocks]
        y = ys[0] if len(ys) == 1 else torch.cat(ys, dim=-1)
        if y.dtype != x.dtype:
            y = y.to(x.dtype)
        return y if x.dim() == 2 else y.reshape(*lead, self.shape[0])

    def rows(self, idx: torch.Tensor) -> torch.Tensor:
        """Float32 rows ``idx`` of the weight (only with ``keep_rows``)."""
        if self.plain is None:
            raise ValueError("this packed weight was made without keep_rows")
        return self.plain[idx].float()

    def nbytes(self) -> int:
        n = self.shape[0] * self.shape[1] * self.blocks[0].element_size()
        return n * 2 if self.plain is not None else n


def _reorder(part: torch.Tensor, dtype: torch.dtype, release=None) -> torch.Tensor:
    """Rows of a weight in oneDNN's blocked layout for ``dtype`` (``release(part)`` after)."""
    out = torch.ops.mkldnn._reorder_linear_weight(part.to(dtype).contiguous(), 1)
    if release is not None:
        release(part)
    return out


def pack_for_cpu(weight: torch.Tensor, *, dtype: torch.dtype | None = None, keep_rows: bool = False,
                 release=None, enabled: bool = True):
    """``weight`` in ``dtype`` (default: its own) as a :class:`PackedLinear` where ``enabled`` and
    :func:`packs_on_cpu` says that is faster, else as a plain contiguous tensor."""
    dtype = dtype or weight.dtype
    if not enabled or weight.device.type != "cpu" or weight.dim() != 2 or not packs_on_cpu(dtype):
        return weight.to(dtype).contiguous()
    return PackedLinear(weight, dtype=dtype, keep_rows=keep_rows, release=release)


def packs_low_rank(place, pack: bool = True) -> bool:
    """Whether a layer placed by ``place`` (a strategy.Placement) keeps its low-rank matrices (the
    arch modules' PACKED_LOW_RANK) compact, as int8 rows (engine.model's ``low_rank``): int8 and
    int4 stages on the CPU, not streamed, on CPUs with native bf16 (where they were measured;
    ``pack``: LoadOptions.pack)."""
    st = place.stage
    return (st.int8 or st.int4) and st.torch_device == "cpu" and not place.stream and pack \
        and packs_on_cpu(torch.bfloat16)


def low_rank_in_blocks(place, version: int, blocks: bool) -> bool:
    """Whether a layer placed by ``place`` keeps its low-rank matrices in the compiled kernels' q8
    blocks (RWKV-7's pairs padded to whole pairs of blocks; RWKV-6's mixes' and decay's first
    halves and the decay's second), which the compiled layer steps (engine.fused) multiply:
    RWKV-6 and RWKV-7 int8 / int4 stages on the CPU, not streamed, with the matrices in blocks
    (``blocks``). Read by the loader and by the memory estimate."""
    st = place.stage
    return blocks and version in (6, 7) and (st.int8 or st.int4) and st.torch_device == "cpu" and not place.stream


def packs_on_cpu(dtype: torch.dtype) -> bool:
    """Whether CPU weights of ``dtype`` are packed for oneDNN: float32 wherever oneDNN works,
    bf16 only on CPUs that multiply bf16 natively (``LoadOptions.pack=False`` turns packing off)."""
    if dtype not in (torch.float32, torch.bfloat16):
        return False
    if dtype == torch.bfloat16 and not cpu_has_bf16():
        return False
    return _packing_works(dtype)


@functools.cache
def _packing_works(dtype: torch.dtype) -> bool:
    """Whether this torch build reorders and multiplies ``dtype`` weights with oneDNN, correctly."""
    try:
        if not torch.backends.mkldnn.is_available():
            return False
        w = torch.linspace(-1, 1, 48 * 64).reshape(48, 64).to(dtype)
        x = torch.linspace(1, -1, 3 * 64).reshape(3, 64)
        got = PackedLinear(w)(x)
        want = F.linear(x.double(), w.double()).float()
        return bool(torch.allclose(got, want, rtol=0.02, atol=0.05))
    except (RuntimeError, AttributeError, NotImplementedError):
        return False


def linear(x: torch.Tensor, w) -> torch.Tensor:
    """``x @ w.T`` for a weight tensor (out, in), an :class:`Int8Linear`, :class:`Int4Linear` or
    :class:`PackedLinear`."""
    if not isinstance(w, torch.Tensor):
        return w(x)
    if x.dtype == w.dtype:
        return F.linear(x, w)
    # lower-precision weights under float32 activations (the CPU strategies)
    # (the size test first: one token never reads /proc/cpuinfo, which torch.compile cannot trace)
    if w.dtype == torch.bfloat16 and x.device.type == "cpu" and x.numel() > SMALL_BATCH * x.shape[-1] \
            and not cpu_has_bf16():
        return F.linear(x, w.to(x.dtype))
    return F.linear(x.to(w.dtype), w).to(x.dtype)


def linear_many(xs, ws) -> list[torch.Tensor]:
    """``[linear(x, w) for x, w in zip(xs, ws)]`` for several matrices of one layer that read the
    same width (``xs``: a sequence of (T, C) inputs, or one (n, T, C) tensor), the same values.

    The weight-only fbgemm products among them split their activations in one go
    (:func:`~roost.engine.int8.split_products`)."""
    fast = [i for i, w in enumerate(ws) if isinstance(w, Int8Linear) and w.kernel == "fbgemm"]
    if len(fast) < 2:
        return [linear(x, w) for x, w in zip(xs, ws)]
    out = [None if i in fast else linear(x, w) for i, (x, w) in enumerate(zip(xs, ws))]
    stacked = isinstance(xs, torch.Tensor) and len(fast) == len(ws)
    x = xs if stacked else torch.stack([xs[i] for i in fast])  # (f, T, C)
    lead, dtype = x.shape[1:-1], x.dtype
    if x.dim() != 3 or dtype != torch.float32:
        x = x.reshape(len(fast), -1, x.shape[-1]).float()
    ys = split_products(x, [ws[i].packed for i in fast], ws[fast[0]].levels)
    for i, y in zip(fast, ys):
        y = y if dtype == torch.float32 else y.to(dtype)
        out[i] = y if len(lead) == 1 else y.reshape(*lead, ws[i].shape[0])
    return out
