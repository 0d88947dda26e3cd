"""Matrix-vector products for every precision: the one hot spot of RWKV inference.

Every projection in the architecture modules goes through :func:`linear`, which takes a plain
weight tensor (out, in), an :class:`Int8Linear` or a :class:`PackedLinear`.

- int8: one scale per output channel (rows), symmetric to +-127. On x86 CPUs the products go
  through fbgemm's u8 x s8 kernels (read 1 byte per weight near the memory bandwidth), with the
  activations split into two 8-bit rows (about 15 bits: weight-only precision, see
  :func:`split_linear`), or, for the matrices whose error allows it, quantised to one 8-bit row.
  Where fbgemm is missing, PyTorch's weight-only ``torch._weight_int8pack_mm`` (bf16 activations)
  or, for prompt chunks and GPUs, weights dequantised to the activation type.
  The reference package's CPU int8 dequantises in Python on every call and is far slower.
- On the CPU, activations are float32 whatever the weights' type (the residual stream keeps its
  precision; elementwise work is negligible next to the matrices). float32 and bf16 weights are
  packed once at load into oneDNN's layout (:class:`PackedLinear`; bf16 only on CPUs with native
  bf16 arithmetic, AVX512-BF16/AMX), which reads them near the memory bandwidth. Elsewhere bf16
  weights multiply in bf16 one token at a time (half the bytes to read) and prompt chunks in
  float32, many times faster on CPUs without native bf16.
"""

from __future__ import annotations

import functools
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

SMALL_BATCH = 8  # up to this many rows a product is memory-bound: use the int8 / bf16 kernels


class Int8Linear:
    """A linear layer's weight (out, in) as int8 with a float scale per output channel.

    Kernels (one token, 24 distinct matrices so that the weights come from memory as in a real
    forward pass; 2-core AVX512-VNNI machine, 7168x2048 / 65536x2048):
    - "fbgemm": fbgemm's u8 x s8 products (``quantized::linear_with_input_q_dq_qweight_dq_output_fp32``)
      with the activations split into two 8-bit rows (:func:`split_linear`): float32 output with
      a relative error ~1e-4, below bf16 activations (2.7e-3); 31-64 GB/s (the head 2.2x faster than
      int8pack), as fast as dequantising for prompt chunks. The default where fbgemm works;
    - "fbgemm-dynamic": ``quantized::linear_dynamic``, the activations quantised to one 8-bit row
      (7-bit without VNNI): a little faster still, 1-2% error per product; chosen per matrix where
      the tests' logit error allows (``quantize_activations``);
    - "int8pack": ``torch._weight_int8pack_mm``, weight-only with bf16 activations and output,
      23-29 GB/s (12-20 on AVX2), for CPUs without fbgemm (Arm);
    - "dequant": int8 weights converted to the activation type per call (GPUs, and long chunks).
    """

    BLOCK = 1 << 25  # weights per fbgemm-packed block of rows (see from_row_blocks)

    def __init__(self, weight: torch.Tensor, *, device: str | torch.device = "cpu",
                 kernel: str | None = None, quantize_activations: bool = False, release=None):
        q, scale = quantize_rows(weight, device, release=release)
        self._setup([(q, scale)], tuple(q.shape), kernel, quantize_activations)

    @classmethod
    def from_quantized(cls, q: torch.Tensor, scale: torch.Tensor, *, kernel: str | None = None,
                       quantize_activations: bool = False) -> "Int8Linear":
        """From :func:`quantize_rows`' output (a converted-weights cache stores it)."""
        return cls.from_row_blocks([(q, scale)], tuple(q.shape), kernel=kernel,
                                   quantize_activations=quantize_activations)

    @classmethod
    def from_row_blocks(cls, blocks, shape: tuple[int, int], *, kernel: str | None = None,
                        quantize_activations: bool = False, packer: "Packer | None" = None) -> "Int8Linear":
        """From :func:`quantize_rows`' output for consecutive blocks of rows (``blocks``: an
        iterable of (q, scale), ``shape``: the whole weight's). With fbgemm each block is packed
        on its own as it comes, so a generator that quantises the next block only when asked
        never holds the whole matrix twice: the head of a 14B model is 268M weights, and packing
        it whole held its int8 rows, a quantised copy and the packed form at once (2.0x the
        head's int8 size over what stays, at the peak of a load; 0.53x in blocks). Products take one call per block (the head of a
        1.5B model is 4 blocks). With a :class:`Packer` the packing runs on its thread and the
        weight is complete once the packer has finished."""
        self = object.__new__(cls)
        self._setup(blocks, shape, kernel, quantize_activations, packer)
        return self

    def _setup(self, blocks, shape, kernel, quantize_activations, packer=None) -> None:
        # a block may come with a third element: called once its rows have been packed or copied
        # (a converted-weights cache gives the pages of the rows it mapped back)
        blocks = ((*b, None)[:3] for b in blocks)
        q, scale, done = next(blocks)
        self.shape, self.dtype = tuple(shape), torch.int8
        self.kernel = kernel or default_kernel(q.device, dynamic=quantize_activations)
        self.q = self.packed = None
        if self.kernel.startswith("fbgemm") and not _fbgemm_works():
            self.kernel = default_kernel(q.device, fbgemm=False)
        scales = []
        if self.kernel.startswith("fbgemm"):
            self.levels = activation_levels()
            packed = []
            while q is not None:
                packed.append(packer.submit(q, scale, done) if packer is not None else _prepack(q, scale, done))
                scales.append(scale)
                q, scale, done = next(blocks, (None, None, None))
            if packer is not None:  # complete once the packer finishes
                packer.pending.append(lambda: setattr(self, "packed", _one_or_list([f.result() for f in packed])))
            else:
                self.packed = _one_or_list(packed)
        else:
            self.q = q if q.shape[0] == shape[0] else torch.empty(shape, dtype=torch.int8, device=q.device)
            r0 = 0
            while q is not None:
                if self.q is not q:
                    self.q[r0:r0 + q.shape[0]] = q
                    if done is not None:
                        done()
                r0 += q.shape[0]
                scales.append(scale)
                q, scale, done = next(blocks, (None, None, None))
        self.scale = scales[0] if len(scales) == 1 else torch.cat(scales)  # float32 (out,)
        if self.q is not None:
            self.scale_bf16 = self.scale.to(torch.bfloat16)

    @property
    def precise_output(self) -> bool:
        """Whether products come out in float32 at weight-only precision (no bf16 rounding)."""
        return self.kernel == "fbgemm"

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        lead, k = x.shape[:-1], x.shape[-1]
        x2 = x.reshape(-1, k)
        if self.kernel == "fbgemm":
            y = split_linear(x2.float(), self.packed, self.levels)
        elif self.kernel == "fbgemm-dynamic":  # one 8-bit row per token
            y = _dynamic_linear(x2.float(), self.packed, self.levels)
        elif self.kernel == "int8pack" and x2.shape[0] <= SMALL_BATCH:
            y = torch._weight_int8pack_mm(x2.to(torch.bfloat16).contiguous(), self.q, self.scale_bf16)
        else:  # prompt chunks (compute-bound): dequantise, multiply in bf16 where the CPU has it
            dt = x.dtype if x.device.type != "cpu" else torch.bfloat16 if cpu_has_bf16() else torch.float32
            xd, step = x2.to(dt), max(1, (1 << 21) // k)  # a few MB of dequantised rows at a time:
            # small blocks come back from the allocator warm; a 30 MB one is faulted in fresh each call
            y = torch.cat([F.linear(xd, self.q[r0:r0 + step].to(dt)) for r0 in range(0, self.shape[0], step)], dim=-1)
            y = y.float() * self.scale if dt == torch.bfloat16 else y * self.scale.to(dt)
        return y.to(x.dtype).reshape(*lead, self.shape[0])

    def to(self, device) -> "Int8Linear":
        if self.packed is not None:
            if torch.device(device).type == "cpu":
                return self
            raise ValueError("fbgemm-packed int8 weights live on the CPU")
        new = object.__new__(Int8Linear)
        new.q, new.scale, new.scale_bf16 = (t.to(device, non_blocking=True) for t in (self.q, self.scale, self.scale_bf16))
        new.shape, new.dtype, new.packed = self.shape, self.dtype, None
        new.kernel = "int8pack" if new.q.device.type == "cpu" and self.kernel == "int8pack" else "dequant"
        return new

    def rows(self, idx: torch.Tensor) -> torch.Tensor:
        """Float32 rows ``idx`` of the dequantised weight: shape ``idx.shape + (in,)``."""
        if self.packed is not None:  # unpacks the whole matrix: for tests and rare use
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                blocks = self.packed if isinstance(self.packed, list) else [self.packed]
                q = torch.cat([torch.ops.quantized.linear_unpack(p)[0].int_repr() for p in blocks])
        else:
            q = self.q
        return q[idx].float() * self.scale[idx].unsqueeze(-1)

    def nbytes(self) -> int:
        return self.shape[0] * self.shape[1] + self.scale.numel() * 4


def _one_or_list(items: list):
    return items[0] if len(items) == 1 else items


def _prepack(q: torch.Tensor, scale: torch.Tensor, done=None):
    """fbgemm's packed form of int8 rows ``q`` with float32 scales per row (``done`` is called once
    ``q`` is no longer needed)."""
    zeros = torch.zeros(q.shape[0], dtype=torch.long)
    with warnings.catch_warnings():  # quantized tensors are "deprecated" but the ops remain
        warnings.simplefilter("ignore")
        qw = torch._make_per_channel_quantized_tensor(q, scale.double(), zeros, 0)  # (a copy)
        if done is not None:
            done()
        return torch.ops.quantized.linear_prepack(qw, None)


class Packer:
    """Packs int8 weights for fbgemm (and small weights for oneDNN) on other threads while loading
    goes on.

    fbgemm's packing runs on one core (~5 ms per million weights) and cannot be cached (its packed
    form is opaque): half of a load from the converted-weights cache. On its own thread (torch
    releases the GIL inside the op) it overlaps the reading and converting of the next matrices.
    One thread per torch thread: a second load of a 1.5B `cpu int8` model from the cache took 6.9 s
    packing on the loading thread, 4.4 s with two packing threads (2 cores); first loads gain ~5%.
    Blocks waiting to be packed hold their int8 rows: at most ``budget`` bytes of them (by default
    what the memory estimate allows for the load's peak). Every Int8Linear made with the packer is
    complete after :meth:`finish`; :meth:`close` (after a failed load) drops what is waiting.
    :meth:`run` runs any other conversion there (a PackedLinear made with the packer: RWKV-7's
    low-rank matrices, 1.0 s of a 2.9 s second load of a 7B `cpu int4` model on the loading thread)."""

    def __init__(self, budget: int | None = None):
        import threading
        from concurrent.futures import ThreadPoolExecutor

        self._pool = ThreadPoolExecutor(min(4, torch.get_num_threads()), thread_name_prefix="roost-pack")
        self._room = threading.Condition()
        self._waiting, self._budget = 0, budget if budget is not None else 4 * Int8Linear.BLOCK
        self.pending: list = []  # what completes a weight once its futures are done, in order

    def submit(self, q: torch.Tensor, scale: torch.Tensor, done=None):
        n = q.numel()
        with self._room:
            self._room.wait_for(lambda: self._waiting == 0 or self._waiting + n <= self._budget)
            self._waiting += n
        future = self._pool.submit(_prepack, q, scale, done)
        future.add_done_callback(lambda _: self._done(n))
        return future

    def run(self, fn, *args):
        """``fn(*args)`` on a packing thread: a future (outside the budget: for small weights)."""
        return self._pool.submit(fn, *args)

    def _done(self, n: int) -> None:
        with self._room:
            self._waiting -= n
            self._room.notify_all()

    def finish(self) -> None:
        try:
            for complete in self.pending:
                complete()
        finally:
            self.close()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)  # (the thread ends: no OpenMP pool left)
        self.pending = []


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


def split_linear(x: torch.Tensor, packed, levels: int = 127) -> torch.Tensor:
    """``x @ W.T`` for float32 ``x`` (M, K) and fbgemm-packed int8 ``W`` (or a list of its blocks
    of rows), at weight-only precision.

    fbgemm multiplies 8-bit activations (u8, with a zero point) by the int8 weights and reads each
    weight byte once however many rows come. So each row is scaled to [-L, L] (L = ``levels``) and
    written as hi + lo / 2L with hi, lo integers in [-L, L]: the 2M integer rows go through one
    product (scale 1, zero point L + 1) and y = (y_hi + y_lo / 2L) * max|x| / L, an activation
    error below max|x| / (4 L^2) (1.5e-5 of the row's largest entry with L = 127). L = 63 on CPUs
    without VNNI, where u8 x s8 pairs must not overflow int16 (see :func:`activation_levels`).
    """
    rows, two_l = x.shape[0], 2.0 * levels
    # a non-finite input makes m inf or nan, and the last multiplication by m carries it to the output
    if rows == 1 and not torch.compiler.is_compiling():  # one token: the scale as a Python number
        m = float(x.abs().max()) or 1e-30  # (fewer small ops; torch.compile would specialise on it)
    else:
        m = x.abs().amax(-1, keepdim=True).clamp_(min=1e-30)
    u = x * (levels / m)
    lo = (u - u.round()).mul_(two_l)  # fbgemm rounds both rows to integers itself (scale 1)
    y = _per_block(torch.ops.quantized.linear_with_input_q_dq_qweight_dq_output_fp32, packed,
                   torch.cat([u, lo]), 1.0, levels + 1)
    return torch.add(y[:rows], y[rows:], alpha=1.0 / two_l).mul_(m / levels)


def linear_many(xs, ws) -> list[torch.Tensor]:
    """``[linear(x, w) for x, w in zip(xs, ws)]`` for several matrices of one layer that read the
    same width (``xs``: a sequence of (T, C) inputs, or one (n, T, C) tensor), the same values.

    The weight-only fbgemm products (:func:`split_linear`) among them split their activations in
    one go: each product is then one kernel call instead of a dozen small operations around it,
    and the small operations cost more than the kernel itself on one token (on an AVX2 CPU, 4
    products of 2048x2048 in int8: 311 against 254 us each; a 16-row matrix 125 against 67 us).
    """
    n = len(ws)
    fast = [i for i, w in enumerate(ws) if isinstance(w, Int8Linear) and w.kernel == "fbgemm"]
    if len(fast) < 2:
        return [linear(x, w) for x, w in zip(xs, ws)]
    out: list = [None] * n
    for i in range(n):
        if i not in fast:
            out[i] = linear(xs[i], ws[i])
    stacked = isinstance(xs, torch.Tensor) and len(fast) == n
    x = xs if stacked else torch.stack([xs[i] for i in fast])  # (f, T, C)
    f, lead, k, dtype = x.shape[0], x.shape[1:-1], x.shape[-1], x.dtype
    if x.dim() != 3:
        x = x.reshape(f, -1, k)
    x = x.float()
    rows, levels = x.shape[1], ws[fast[0]].levels
    two_l = 2.0 * levels
    m = x.abs().amax(-1, keepdim=True).clamp_(min=1e-30)  # (f, T, 1): each row its own scale
    u = x * (levels / m)
    pairs = torch.stack([u, (u - u.round()).mul_(two_l)], dim=1)  # (f, 2, T, C): one input per product
    op = torch.ops.quantized.linear_with_input_q_dq_qweight_dq_output_fp32
    ys = [_per_block(op, ws[i].packed, pairs[j].view(2 * rows, k), 1.0, levels + 1) for j, i in enumerate(fast)]
    scale = m * (1.0 / levels)
    if len({y.shape[-1] for y in ys}) == 1:  # one combination for all of them
        y = torch.stack(ys).view(f, 2, rows, -1)
        ys = torch.add(y[:, 0], y[:, 1], alpha=1.0 / two_l).mul_(scale).unbind(0)
    else:
        ys = [torch.add(y[:rows], y[rows:], alpha=1.0 / two_l).mul_(scale[j]) for j, y in enumerate(ys)]
    for j, i in enumerate(fast):
        y = ys[j].to(dtype)
        out[i] = y if len(lead) == 1 else y.reshape(*lead, ws[i].shape[0])
    return out


def _dynamic_linear(x: torch.Tensor, packed, levels: int) -> torch.Tensor:
    """fbgemm with the activations quantised to one 8-bit row each (per token: fbgemm picks one
    scale for the whole input, so a chunk's rows are first scaled to the same range)."""
    reduce_range = levels != 127
    if x.shape[0] == 1:
        return _per_block(torch.ops.quantized.linear_dynamic, packed, x.contiguous(), reduce_range, last=True)
    m = x.abs().amax(-1, keepdim=True).clamp_(min=1e-30)
    return _per_block(torch.ops.quantized.linear_dynamic, packed, x / m, reduce_range, last=True).mul_(m)


def _per_block(op, packed, x, *args, last: bool = False) -> torch.Tensor:
    """``op(x, *args, block)`` (``last``: ``op(x, block, *args)``) for each packed block of rows,
    the outputs side by side."""
    if not isinstance(packed, list):  # one block (a plain call: torch.compile traces it without a break)
        return op(x, packed, *args) if last else op(x, *args, packed)
    return torch.cat([op(x, p, *args) if last else op(x, *args, p) for p in packed], dim=-1)


def activation_levels() -> int:
    """The largest activation integer fbgemm gets: 127 with AVX512-VNNI (u8 x s8 accumulated in
    int32), 63 without, where vpmaddubsw adds pairs of u8 x s8 products in int16 (2 x 127 x 127
    fits, 2 x 255 x 127 does not)."""
    return 127 if cpu_has_vnni() else 63


def quantize_rows(weight: torch.Tensor, device, block: int = 1 << 22,
                  release=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 per output row, a block of rows at a time so that the float32 work space
    stays small (the output head is 65536 rows: converting it whole would spike RAM by GBs).
    ``release(rows)``, if given, is called with each block of ``weight`` once it is converted
    (to drop a memory-mapped file's pages as the conversion goes)."""
    rows, cols = weight.shape
    q = torch.empty(rows, cols, dtype=torch.int8, device=device)
    scale = torch.empty(rows, dtype=torch.float32, device=device)
    step = max(1, block // cols)
    for r0 in range(0, rows, step):
        w = weight[r0:r0 + step].to(device=device, dtype=torch.float32)
        s = w.abs().amax(dim=1).clamp(min=1e-10) / 127.0
        q[r0:r0 + step] = w.div_(s.unsqueeze(1)).round_().clamp_(-127, 127).to(torch.int8)
        scale[r0:r0 + step] = s
        if release is not None:
            release(weight[r0:r0 + step])
    return q, scale


@functools.cache
def _fbgemm_works() -> bool:
    """Whether this torch has fbgemm's quantized CPU ops (x86), and they compute right."""
    with warnings.catch_warnings():
        return _try_fbgemm()


def _try_fbgemm() -> bool:
    try:
        warnings.simplefilter("ignore")
        q = torch._make_per_channel_quantized_tensor(
            torch.ones(4, 4, dtype=torch.int8), torch.ones(4, dtype=torch.double),
            torch.zeros(4, dtype=torch.long), 0)
        packed = torch.ops.quantized.linear_prepack(q, None)
        x = torch.tensor([[0.5, -1.0, 0.25, 2.0]])
        y = torch.ops.quantized.linear_dynamic(x, packed, True)
        exact = split_linear(x, packed, 63)
        return bool(torch.allclose(y, torch.full((1, 4), 1.75), atol=0.05)
                    and torch.allclose(exact, torch.full((1, 4), 1.75), atol=1e-3))
    except (RuntimeError, AttributeError, NotImplementedError):
        return False


KERNELS = ("fbgemm", "fbgemm-dynamic", "int8pack", "dequant")


def default_kernel(device: torch.device, *, fbgemm: bool = True, dynamic: bool = False) -> str:
    """The int8 kernel for a matrix on ``device`` (``dynamic``: its activations may be quantised
    to 8 bits); ``LoadOptions.int8_kernel`` forces another on the CPU."""
    if device.type != "cpu":
        return "dequant"
    if fbgemm and _fbgemm_works():
        return "fbgemm-dynamic" if dynamic else "fbgemm"
    return "int8pack" if hasattr(torch, "_weight_int8pack_mm") else "dequant"


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
        x2 = x.reshape(-1, k).to(self.dtype).contiguous()
        ys = [torch.ops.mkldnn._linear_pointwise(x2, b, None, "none", [], "") for b in self.blocks]
        y = ys[0] if len(ys) == 1 else torch.cat(ys, dim=-1)
        return y.to(x.dtype).reshape(*lead, self.shape[0])

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
    """Whether a layer placed by ``place`` (a strategy.Placement) keeps its low-rank matrices
    packed in bf16 (the arch modules' PACKED_LOW_RANK): int8 and int4 stages on the CPU, not
    streamed, where bf16 packs (``pack``: LoadOptions.pack)."""
    st = place.stage
    return (st.int8 or st.int4) and st.torch_device == "cpu" and not place.stream and pack \
        and packs_on_cpu(torch.bfloat16)


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
