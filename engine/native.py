"""Roost's compiled CPU kernels (engine/csrc/native.cpp), reached with ctypes.

Built when the wheel or the bundle is built (setup.py), never on the user's machine. Where the
library is missing (an install from source without a compiler), cannot be loaded, or fails its
self-test on this CPU, :func:`available` is False, :func:`unavailable_reason` says why in plain
words, and the engine runs its PyTorch path, which stays the reference.

The kernels multiply float32 activations by block-quantised weights (:class:`BlockLinear`):
"q8" (int8, one fp16 scale per 32 weights) for `cpu int8` and "q4" (4 bits, one fp16 scale and
one fp16 offset per 32) for `cpu int4`, with the activations quantised per 32 values to 8 bits,
as llama.cpp's Q8_0 and Q4_1 do. Every instruction set the CPU family offers is compiled in; the
best one this CPU has runs (:func:`isa`).
"""

from __future__ import annotations

import ctypes
import functools
import importlib.util
import os
import sys

import torch
import torch.nn.functional as F

ABI = 4  # rn_abi() of the library this module was written for
FORMAT = "blocks-2"  # the layout of BlockLinear's tensors (the weight cache keeps it apart)
QB = 32  # weights per block
SMALL_BATCH = 8  # products of up to this many rows run in the kernels; more (prompts): torch
ISAS = {0: "portable C++", 1: "AVX2", 2: "AVX512-VNNI", 3: "NEON", 4: "NEON dot product"}
ISA_ENV = "ROOST_NATIVE_ISA"  # e.g. "avx2": run the kernels with that instruction set (benchmarks)
_DTYPE_CODE = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}
_P, _I64, _INT = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int


@functools.cache
def _load() -> tuple[ctypes.CDLL | None, str]:
    """The library and "" when it works, else None and why not."""
    spec = importlib.util.find_spec("roost.engine._native")
    if spec is None or not spec.origin:
        return None, "the compiled kernels are not installed (this copy of Roost was installed without a C++ compiler)"
    try:
        lib = ctypes.CDLL(spec.origin)
    except OSError as e:
        return None, f"the compiled kernels could not be loaded ({e})"
    try:
        if lib.rn_abi() != ABI:
            return None, "the compiled kernels are from another version of Roost; reinstall Roost"
    except AttributeError:
        return None, "the compiled kernels are damaged; reinstall Roost"
    lib.rn_quantize.argtypes = [_INT, _P, _INT, _I64, _I64, _P, _P, _P]
    lib.rn_matmul.argtypes = [_INT, _P, _P, _P, _I64, _I64, _P, _I64, _P]
    lib.rn_dequantize.argtypes = [_INT, _P, _P, _P, _I64, _I64, _I64, _P, _INT]
    lib.rn_v7_step.argtypes = [_P, _I64] + [_P] * 9
    lib.rn_v7_step.restype = _INT
    lib.rn_v6_step.argtypes = [_P, _I64] + [_P] * 8
    lib.rn_v6_step.restype = _INT
    lib.rn_set_threads.argtypes = [_INT]
    lib.rn_use_isa.argtypes = [_INT]
    lib.rn_use_openmp.argtypes = [_P, _P, _P]
    lib.rn_share_products.argtypes = [_INT]
    runtime = _torch_openmp()
    if runtime is not None:
        lib.rn_use_openmp(*runtime)
    why = _self_test(lib)
    if why:
        return None, why
    forced = os.environ.get(ISA_ENV, "").strip().lower()
    if forced:  # (a development knob: what a CPU with less sees, e.g. AVX2 on an AVX-512 machine)
        code = {name.lower().replace(" ", "-"): c for c, name in ISAS.items()}.get(forced)
        if code is None or lib.rn_use_isa(code) != code:
            return None, f"{ISA_ENV}={forced}: not an instruction set this CPU runs ({', '.join(_names(lib))})"
    return lib, ""


def _names(lib) -> list[str]:
    """The instruction sets this CPU runs, as ISA_ENV takes them."""
    best = lib.rn_isa()
    runs = [c for c in ISAS if lib.rn_use_isa(c) == c]
    lib.rn_use_isa(best)
    return [ISAS[c].lower().replace(" ", "-") for c in runs]


def _torch_openmp() -> tuple[int, int, int] | None:
    """The addresses of GOMP_parallel, omp_get_thread_num and omp_get_num_threads in the OpenMP
    runtime torch has loaded (libgomp on Linux, libomp on macOS), so that the kernels run on torch's
    threads rather than on a second team beside them; None where there is none to share."""
    import sys
    from pathlib import Path

    lib_dir = Path(torch.__file__).parent / "lib"
    if sys.platform.startswith("linux"):
        try:  # the runtime this process has mapped (never a second copy loaded here)
            maps = Path("/proc/self/maps").read_text()
        except OSError:
            return None
        found = sorted({line.split()[-1] for line in maps.splitlines() if "libgomp" in line.rsplit("/", 1)[-1]})
    elif sys.platform == "darwin":
        found = [str(p) for p in lib_dir.glob("libomp*.dylib")]
    else:
        return None
    for path in found:
        try:
            rt = ctypes.CDLL(path)
            return tuple(ctypes.cast(getattr(rt, name), ctypes.c_void_p).value
                         for name in ("GOMP_parallel", "omp_get_thread_num", "omp_get_num_threads"))
        except (OSError, AttributeError):
            continue
    return None


def _self_test(lib) -> str:
    """A product on this CPU against the same arithmetic in torch: "" if right, else why not."""
    try:
        gen = torch.Generator().manual_seed(0)
        w = torch.randn(20, 128, generator=gen)
        x = torch.randn(3, 128, generator=gen)
        for bits in (8, 4):
            q, d, m = _quantize(lib, bits, w)
            y = torch.empty(3, 20)
            lib.rn_matmul(bits, q.data_ptr(), d.data_ptr(), _ptr(m), 20, 128, x.data_ptr(), 3, y.data_ptr())
            want = reference_matmul(x, _dequantize(lib, bits, q, d, m, 128))
            if not torch.allclose(y, want, rtol=1e-4, atol=1e-4):
                return f"the compiled kernels compute wrongly on this CPU ({ISAS.get(lib.rn_isa(), '?')})"
    except Exception as e:  # noqa: BLE001 (whatever fails here means: do not use them)
        return f"the compiled kernels failed their check ({type(e).__name__}: {e})"
    return ""


def available() -> bool:
    return _load()[0] is not None


def unavailable_reason() -> str:
    """Why the compiled kernels are not used ("" when they are)."""
    return _load()[1]


def _lib() -> ctypes.CDLL:
    lib, why = _load()
    if lib is None:
        raise RuntimeError(why)
    return lib


def isa() -> str:
    """The instruction set the kernels run with on this CPU ("" when they are not available)."""
    return ISAS.get(_lib().rn_isa(), "?") if available() else ""


def use_isa(code: int) -> int:
    """Run the kernels with instruction set ``code`` (see ISAS; -1: the best this CPU has), for
    tests that compare each with the portable one. Returns the one now in use."""
    return _lib().rn_use_isa(code)


_threads = 0  # the pool's size now
_fixed: int | None = None  # set_threads' count; None: as many as torch uses


def set_threads(n: int | None) -> None:
    """How many threads each product uses (the calling one included); None: as many as torch's
    own products (``torch.get_num_threads()``), the default."""
    global _fixed
    _fixed = None if n is None else max(1, int(n))
    _resize(_fixed or torch.get_num_threads())


def _resize(n: int) -> None:
    global _threads
    if n != _threads:
        _lib().rn_set_threads(n)
        _threads = n


def sync_threads() -> None:
    """Size the kernels' threads as :func:`set_threads` asked (by default: as torch's, which may
    have changed since); before each call into the library that runs products."""
    want = _fixed or torch.get_num_threads()  # (a call costs ~0.1 us)
    if want != _threads:
        _resize(want)


def share_torch_threads(on: bool) -> None:
    """Run the compiled layer step's products (engine.fused) on torch's OpenMP threads too
    (``on``; where torch's runtime allows it), or on the kernels' own pool (the default: on a busy
    machine a thread that is not running holds nobody up there; see engine/csrc/native.cpp's
    thread pool). Products called from layers that run in PyTorch always use torch's threads."""
    _lib().rn_share_products(int(bool(on)))


def fits(shape) -> bool:
    """Whether a (rows, cols) weight can be stored in blocks (cols a multiple of 64)."""
    return len(shape) == 2 and shape[1] % 64 == 0 and shape[0] > 0


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


_HUGE = 2 << 20


def _madvise():
    """libc's madvise where transparent huge pages can be asked for (Linux), else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return None
    fn.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    fn.restype = ctypes.c_int
    return fn


_MADVISE = _madvise()
_MADV_HUGEPAGE = 14


def _huge_buffer(nbytes: int) -> torch.Tensor:
    """``nbytes`` of uninitialised uint8 memory, laid on 2 MB pages where the kernel grants them
    (Linux, transparent huge pages in "madvise" mode, the common default). A token streams every
    weight once; with 4 KB pages the page-table walks cost int4 tokens ~15% (v7 1.5B: 68-76 ms
    against 58-63 ms for the same bytes mapped from the page cache, which uses large pages). The
    buffer starts on a 2 MB boundary (at most 2 MB more address space, never touched) and only
    whole 2 MB pages are asked for, so nothing is committed beyond ``nbytes``."""
    if _MADVISE is None or nbytes < _HUGE:
        return torch.empty(nbytes, dtype=torch.uint8)
    raw = torch.empty(nbytes + _HUGE, dtype=torch.uint8)
    start = -raw.data_ptr() % _HUGE
    out = raw[start:start + nbytes]
    whole = nbytes // _HUGE * _HUGE
    _MADVISE(out.data_ptr(), whole, _MADV_HUGEPAGE)
    return out


def _empty_blocks(bits: int, rows: int, cols: int):
    """Uninitialised q, d, m (None for 8 bits) for a (rows, cols) weight: one buffer, values
    first (64-byte aligned rows), then the scales and offsets."""
    qbytes = rows * (cols if bits == 8 else cols // 2)
    sbytes = rows * (cols // QB) * 2
    buf = _huge_buffer(qbytes + sbytes * (2 if bits == 4 else 1))
    q = buf[:qbytes].view(torch.int8 if bits == 8 else torch.uint8).view(rows, -1)
    d = buf[qbytes:qbytes + sbytes].view(torch.float16).view(rows, -1)
    m = buf[qbytes + sbytes:].view(torch.float16).view(rows, -1) if bits == 4 else None
    return q, d, m


def _quantize(lib, bits: int, w: torch.Tensor, out=None):
    """``w`` in blocks, into ``out`` (q, d, m: contiguous, e.g. rows of larger ones) or new tensors."""
    rows, cols = w.shape
    if w.dtype not in _DTYPE_CODE:
        w = w.float()
    w = w.contiguous()
    q, d, m = out if out is not None else _empty_blocks(bits, rows, cols)
    lib.rn_quantize(bits, w.data_ptr(), _DTYPE_CODE[w.dtype], rows, cols, q.data_ptr(), d.data_ptr(), _ptr(m))
    return q, d, m


def _dequantize(lib, bits: int, q, d, m, cols: int, r0: int = 0, r1: int | None = None):
    r1 = q.shape[0] if r1 is None else r1
    out = torch.empty(r1 - r0, cols)
    lib.rn_dequantize(bits, q.data_ptr(), d.data_ptr(), _ptr(m), cols, r0, r1, out.data_ptr(), 0)
    return out


def quantize(bits: int, w: torch.Tensor):
    """A (rows, cols) weight (float32, bf16 or fp16; read, never written) as blocks of 32: the
    values (int8 rows x cols for 8 bits; 0..15 packed in uint8 rows x cols/2 for 4), the fp16
    scales (rows x cols/32) and, for 4 bits, the fp16 offsets (rows x cols/32; None for 8)."""
    return _quantize(_lib(), bits, w)


def reference_matmul(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """What the kernels compute, in torch: ``x`` quantised per 32 values to int8 (round half to
    even, scale max|x| / 127), times the dequantised weight ``w`` (rows, cols)."""
    xb = x.reshape(x.shape[0], -1, QB)
    scale = xb.abs().amax(-1, keepdim=True) / 127
    xq = torch.where(scale > 0, torch.round(xb / torch.where(scale > 0, scale, 1)), 0) * scale
    return xq.reshape(x.shape).double().matmul(w.double().t()).float()


class BlockLinear:
    """A CPU weight (out, in) in the compiled kernels' blocks: ``bits`` 8 ("q8") or 4 ("q4").

    Built from a float weight (:meth:`from_weight`, converted in C++ a block of rows at a time,
    the source never written) or from stored blocks (:meth:`from_blocks`: the converted-weights
    cache maps them, so a second load reads nothing twice and converts nothing). Products of up
    to a prompt chunk of rows run in the kernels; their output is float32 from 8-bit activations,
    so the output head's top logits are re-read in float32 (``precise_output`` False, :meth:`rows`).
    """

    precise_output = False

    def __init__(self, bits: int, q: torch.Tensor, d: torch.Tensor, shape: tuple[int, int],
                 m: torch.Tensor | None = None):
        if (bits == 4) != (m is not None):
            raise ValueError("4-bit blocks have offsets, 8-bit ones none")
        self.bits, self.q, self.d, self.m, self.shape = bits, q, d, m, tuple(shape)
        self.dtype = torch.int8 if bits == 8 else torch.uint8
        self.kind = f"q{bits}"

    @classmethod
    def from_weight(cls, bits: int, w: torch.Tensor, *, release=None, block: int = 1 << 22) -> "BlockLinear":
        """``release(rows)`` is called with each block of rows of ``w`` once converted (a mapped
        checkpoint's pages go as the conversion goes)."""
        rows, cols = w.shape
        q, d, m = _empty_blocks(bits, rows, cols)
        step = max(1, block // cols)
        lib = _lib()
        for r0 in range(0, rows, step):  # (written in place: a block of rows of q, d, m is contiguous)
            part = w[r0:r0 + step]
            rows_of = slice(r0, r0 + step)
            _quantize(lib, bits, part, (q[rows_of], d[rows_of], None if m is None else m[rows_of]))
            if release is not None:
                release(part)
        return cls(bits, q, d, (rows, cols), m)

    @classmethod
    def from_blocks(cls, bits: int, tensors: dict) -> "BlockLinear":
        """From the tensors :meth:`blocks` gives (the weight cache stores them)."""
        q = tensors["q"]
        cols = q.shape[1] * (1 if bits == 8 else 2)
        return cls(bits, q, tensors["d"], (q.shape[0], cols), tensors.get("m"))

    def blocks(self) -> dict[str, torch.Tensor]:
        return {"q": self.q, "d": self.d, **({"m": self.m} if self.m is not None else {})}

    @staticmethod
    def stored_shapes(bits: int, shape) -> dict[str, tuple]:
        rows, cols = shape
        out = {"q": (rows, cols if bits == 8 else cols // 2), "d": (rows, cols // QB)}
        if bits == 4:
            out["m"] = (rows, cols // QB)
        return out

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        lead, k = x.shape[:-1], x.shape[-1]
        x2 = x.reshape(-1, k)
        if x2.dtype != torch.float32:
            x2 = x2.float()
        if not x2.is_contiguous():
            x2 = x2.contiguous()
        m = x2.shape[0]
        if m > SMALL_BATCH:  # a prompt chunk: compute-bound, torch's matrix products do it best
            return self._chunk(x2).to(x.dtype).reshape(*lead, self.shape[0])
        y = torch.empty(m, self.shape[0])
        sync_threads()
        _lib().rn_matmul(self.bits, self.q.data_ptr(), self.d.data_ptr(), _ptr(self.m), self.shape[0], self.shape[1],
                         x2.data_ptr(), m, y.data_ptr())
        y = y if y.dtype == x.dtype else y.to(x.dtype)
        return y if x.dim() == 2 else y.reshape(*lead, self.shape[0])

    def _chunk(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (M, in) of many rows: the weight dequantised a few MB of rows at a time (small
        blocks come back from the allocator warm) and multiplied by torch, in bf16 where the CPU
        multiplies it natively (as engine.int8.Int8Linear does for prompts)."""
        from roost.engine.cpu import cpu_has_bf16

        dt = torch.bfloat16 if cpu_has_bf16() else torch.float32
        xd, cols = x.to(dt), self.shape[1]
        step = max(1, (1 << 21) // cols)
        buf = torch.empty(min(step, self.shape[0]), cols, dtype=dt)
        outs = []
        for r0 in range(0, self.shape[0], step):
            r1 = min(r0 + step, self.shape[0])
            part = buf[:r1 - r0]
            _lib().rn_dequantize(self.bits, self.q.data_ptr(), self.d.data_ptr(), _ptr(self.m), cols, r0, r1,
                                 part.data_ptr(), int(dt == torch.bfloat16))
            outs.append(F.linear(xd, part))
        return torch.cat(outs, dim=-1).float()

    def rows(self, idx: torch.Tensor) -> torch.Tensor:
        """Float32 rows ``idx`` of the weight the blocks stand for: shape ``idx.shape + (in,)``."""
        q, d = self.q[idx], self.d[idx].float()  # (..., cols or cols/2), (..., cols/32)
        if self.bits == 4:  # pairs of blocks: low nibbles the first 32 weights, high ones the next 32
            pairs = q.reshape(*q.shape[:-1], -1, 32)
            q = torch.stack([pairs & 0xF, pairs >> 4], dim=-2).reshape(*q.shape[:-1], -1)
        w = q.float().reshape(*d.shape, QB) * d.unsqueeze(-1)
        if self.m is not None:
            w = w + self.m[idx].float().unsqueeze(-1)
        return w.reshape(*idx.shape, self.shape[1])

    def dequantized(self) -> torch.Tensor:
        return _dequantize(_lib(), self.bits, self.q, self.d, self.m, self.shape[1])

    def nbytes(self) -> int:
        return self.q.numel() * self.q.element_size() + self.d.numel() * 2 * (2 if self.m is not None else 1)
