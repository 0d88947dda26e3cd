"""int8 weights on fbgemm's u8 x s8 kernels (x86), PyTorch's weight-only int8 kernel or dequantised.

One scale per output channel (rows), symmetric to +-127. On x86 CPUs the products go through
fbgemm's u8 x s8 kernels (read 1 byte per weight near the memory bandwidth), with the activations
split into two 8-bit rows (about 15 bits: weight-only precision, see :func:`split_products`), or,
for the matrices whose error allows it, quantised to one 8-bit row. Where fbgemm is missing,
PyTorch's weight-only ``torch._weight_int8pack_mm`` (bf16 activations) or, for prompt chunks and
GPUs, weights dequantised to the activation type. The reference package's CPU int8 dequantises in
Python on every call and is far slower.
"""

from __future__ import annotations

import functools
import math
import warnings

import torch
import torch.nn.functional as F

from roost.engine.cpu import cpu_has_bf16, cpu_has_vnni

SMALL_BATCH = 8  # up to this many rows a product is memory-bound: use the int8 / bf16 kernels
HAS_INT8PACK = hasattr(torch, "_weight_int8pack_mm")  # PyTorch's weight-only int8 CPU kernel


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
        if x.dim() == 2 and x.dtype == torch.float32:  # the usual cases on the CPU, with no reshaping
            # or casting: ~4 small operations less a product (counted, not timed alone)
            if self.packed is not None:
                kernel = split_linear if self.kernel == "fbgemm" else _dynamic_linear
                return kernel(x, self.packed, self.levels)
            if self.kernel == "int8pack" and x.shape[0] <= SMALL_BATCH and x.is_contiguous():
                return torch._weight_int8pack_mm(x.to(torch.bfloat16), self.q, self.scale_bf16).float()
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
    :meth:`run` runs any other conversion there (RWKV-6/7's low-rank matrices as int8 rows: on the
    loading thread, 0.2 s of a 1.1 s second load of a 1.5B `cpu int4` model)."""

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


def split_linear(x: torch.Tensor, packed, levels: int = 127) -> torch.Tensor:
    """``x @ W.T`` for float32 ``x`` (M, K) and fbgemm-packed int8 ``W`` (or a list of its blocks
    of rows), at weight-only precision: :func:`split_products` of one matrix."""
    return split_products(x, [packed], levels)[0]


def split_products(x: torch.Tensor, packs: list, levels: int = 127) -> list[torch.Tensor]:
    """``[x[i] @ W_i.T]`` for float32 ``x`` (n, M, K) and n fbgemm-packed int8 weights ``packs``
    (each one packed block, or a list of its blocks of rows), at weight-only precision; ``x`` (M, K)
    with one weight: ``[x @ W.T]``.

    fbgemm multiplies 8-bit activations (u8, with a zero point) by the int8 weights and reads each
    weight byte once however many rows come. So each row is scaled to [-L, L] (L = ``levels``) and
    written as hi + lo / 2L with hi, lo integers in [-L, L]: the 2M integer rows go through one
    product (scale 1, zero point L + 1) and y = (y_hi + y_lo / 2L) * max|x| / L, an activation
    error below max|x| / (4 L^2) (1.5e-5 of the row's largest entry with L = 127). L = 63 on CPUs
    without VNNI, where u8 x s8 pairs must not overflow int16 (see :func:`activation_levels`).

    The n products split their activations in one go: each is then one kernel call instead of a
    dozen small operations around it, which on one token cost more than the kernel itself (on an
    AVX2 CPU, 4 products of 2048x2048: 311 against 254 us each; a 16-row matrix 125 against 67 us).
    """
    one = x.dim() == 2
    rows = x.shape[-2]
    two_l = 2.0 * levels
    # a non-finite input makes m inf or nan, and the last multiplication by m carries it to the output
    if one and rows == 1 and not torch.compiler.is_compiling():  # one row: the scale as a Python number
        m = float(torch.linalg.vector_norm(x, math.inf)) or 1e-30  # (fewer small ops; torch.compile
    else:  # would specialise on it)
        m = torch.linalg.vector_norm(x, math.inf, dim=-1, keepdim=True).clamp_(min=1e-30)  # each row its own
    u = x * (levels / m)
    # (2M, K) per product: fbgemm rounds both rows to integers itself (scale 1)
    pairs = torch.cat([u, (u - u.round()).mul_(two_l)], dim=-2)
    op = torch.ops.quantized.linear_with_input_q_dq_qweight_dq_output_fp32
    ys = [_per_block(op, packed, xi, 1.0, levels + 1) for packed, xi in zip(packs, [pairs] if one else pairs.unbind(0))]
    scale = m / levels
    if not one and len({y.shape[-1] for y in ys}) == 1:  # one combination for all of them
        y = torch.stack(ys).view(len(ys), 2, rows, -1)
        return list(torch.add(y[:, 0], y[:, 1], alpha=1.0 / two_l).mul_(scale).unbind(0))
    return [torch.add(y[:rows], y[rows:], alpha=1.0 / two_l).mul_(scale if one else scale[i]) for i, y in enumerate(ys)]


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
        # a copy, always: for float32 rows already on `device` a plain .to() returns them as they
        # are, a view of the checkpoint's read-only mapping, which the in-place steps below would
        # write into (a segmentation fault with any float32 checkpoint)
        w = weight[r0:r0 + step].to(device=device, dtype=torch.float32, copy=True)
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
    return "int8pack" if HAS_INT8PACK else "dequant"
