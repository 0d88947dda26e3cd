"""Memory: what a (model, strategy) pair needs, what the machine has, and releasing file pages.

The estimate is computed from the checkpoint's tensor shapes (no weights are read), so the app
and the loader can refuse a model that will not fit with a plain message instead of dying.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
from dataclasses import dataclass

import torch

from roost.engine.checkpoint import ModelConfig, TensorFile, model_shapes
from roost.engine.errors import OutOfMemoryError
from roost.engine.int4 import INT4_GROUP
from roost.engine.int8 import HAS_INT8PACK, Int8Linear
from roost.engine.linear import low_rank_in_blocks, packs_low_rank, packs_on_cpu
from roost.engine.strategy import Strategy, plan_layers

_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2}
GIB = 1024 ** 3
BIG_SUFFIXES = ("key.weight", "value.weight", "receptance.weight", "gate.weight", "output.weight")


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes a model needs per device kind ("cpu", "cuda:0", "mps") once loaded and running."""

    per_device: dict[str, int]

    def total(self) -> int:
        return sum(self.per_device.values())

    def describe(self) -> str:
        return ", ".join(f"{gib(b)} on {d}" for d, b in self.per_device.items())


def gib(n: float) -> str:
    return f"{n / GIB:.1f} GB"


def layer_numels(t: TensorFile, cfg: ModelConfig) -> list[tuple[int, int, int]]:
    """(big-matrix elements, other elements, low-rank elements an int8/int4 CPU stage keeps as
    int8 rows) for each block of a checkpoint, from its shapes alone."""
    return _per_layer(((key, t.shape(key)) for key in t), cfg)


def shape_numels(cfg: ModelConfig) -> list[tuple[int, int, int]]:
    """The same for an official model known only by its configuration (a catalog entry not
    downloaded yet): from the one description of the layout (checkpoint.model_shapes)."""
    return _per_layer(model_shapes(cfg, official_lora=True).items(), cfg)


def _per_layer(shapes, cfg: ModelConfig) -> list[tuple[int, int, int]]:
    from roost.engine.arch import arch_module

    low_rank = getattr(arch_module(cfg.arch), "PACKED_LOW_RANK", ())
    out = [[0, 0, 0] for _ in range(cfg.n_layer)]
    for key, shape in shapes:
        if not key.startswith("blocks."):
            continue
        n = 1
        for d in shape:
            n *= d
        _, block, name = key.split(".", 2)
        out[int(block)][0 if key.endswith(BIG_SUFFIXES) else 2 if name in low_rank else 1] += n
    return [tuple(x) for x in out]


def estimate(t: TensorFile | None, cfg: ModelConfig, strategy: Strategy, chunk_len: int = 128, *,
             pack: bool = True, blocks: bool = False) -> MemoryEstimate:
    """Bytes needed on each device by ``cfg`` run with ``strategy`` (weights, state, work space).

    From the checkpoint's tensor shapes when ``t`` is given, else from ``cfg`` alone; ``pack`` as
    LoadOptions.pack (a packed bf16 head also keeps its plain rows); ``blocks``: int8 / int4 CPU
    matrices in the compiled kernels' blocks of 32 (engine.native: an fp16 scale per block, and
    an fp16 offset for 4 bits) rather than the PyTorch path's forms."""
    eight = 1 + 2 / 32 if blocks else None  # bytes per weight of an 8-bit block (the head, int4's block 0)
    placements = plan_layers(strategy, cfg.n_layer)
    numels = layer_numels(t, cfg) if t is not None else shape_numels(cfg)
    need: dict[str, int] = {}

    def add(dev: str, n: int) -> None:
        need[dev] = need.get(dev, 0) + int(n)

    add("cpu", _embedding_bytes(t, cfg, placements[0].stage))  # on the CPU
    for i, ((big, small, low_rank), place) in enumerate(zip(numels, placements)):
        st = place.stage
        int8_bytes = eight if eight and st.torch_device == "cpu" and not place.stream else 1 + 4 / cfg.n_embd
        big_bytes = big * int8_bytes if st.int8 else big * _BYTES[st.dtype]
        if st.int4:  # 4 bits and a 16-bit scale and zero point per group of 32; block 0 in int8
            from roost.engine.model import int4_precision

            big_bytes = big * (0.5 + 4 / INT4_GROUP if int4_precision(i) == "int4" else int8_bytes)
        if st.int8 and st.torch_device == "cpu" and cfg.version == 7 and i == 0:
            big_bytes = big * 2  # RWKV-7's first block stays bf16 (engine.model.keeps_bf16)
        # low-rank matrices as int8 rows with their scales (engine.model's low_rank; RWKV-7's in 8-bit
        # blocks where its matrices are in blocks), else float32
        rank_bytes = (1.05 if HAS_INT8PACK else 2) if packs_low_rank(place, pack) else 4
        if low_rank_in_blocks(place, cfg.version, blocks):
            rank_bytes = eight
        small_bytes = small * 4 + low_rank * rank_bytes
        if place.stream:  # kept in (pinned) CPU memory, copied to the GPU per forward
            add("cpu", big_bytes)
            add(st.torch_device, big_bytes / cfg.n_layer)  # one layer's copy at a time
            add(st.torch_device, small_bytes)
        else:
            add(st.torch_device, big_bytes + small_bytes)
        add(st.torch_device, _state_bytes(cfg))
    head = placements[-1].stage
    head_n = cfg.vocab_size * cfg.n_embd
    head_int8 = eight if eight and head.torch_device == "cpu" else 1 + 4 / cfg.n_embd
    add(head.torch_device, head_n * head_int8 if head.int8 or head.int4 else head_n * _BYTES[head.dtype])
    if head.torch_device == "cpu" and head.dtype == "bf16" and not head.int8 and pack and packs_on_cpu(torch.bfloat16):
        add("cpu", head_n * 2)  # a packed bf16 head keeps its plain rows too (engine.linear.PackedLinear)
    # work space: a chunk of activations through the widest layer, plus the logits
    for dev in list(need):
        add(dev, chunk_len * (cfg.n_ffn + 8 * cfg.n_embd) * 4 + cfg.vocab_size * 8)
        if dev != "cpu":
            add(dev, 300 * 1024 ** 2)  # CUDA context and allocator slack
    add("cpu", 300 * 1024 ** 2)  # the interpreter and torch (0.23 GB measured), the tokenizer
    # loading peaks above what stays while int8 matrices wait to be packed (engine.int8.Packer: up
    # to 4 blocks of rows) or the head is converted a block at a time (the block's file pages, int8
    # rows and their quantised copy): measured 0.06 GB over the steady state for the 14B shape's
    # head (65536 x 4096) in int4
    add("cpu", 4 * Int8Linear.BLOCK)
    return MemoryEstimate(need)


TOUCHED_ROWS = 8192  # embedding rows a long session reads from a mapped file (distinct tokens)


def _embedding_bytes(t: TensorFile | None, cfg: ModelConfig, first) -> int:
    """Bytes of the embedding: the rows a session touches where they are read from the mapped
    file (a .pth: engine.embedding.MappedEmbedding; official files are .pth), else the whole table,
    whose entries RWKV-4/5/6 keep in a bf16 file's bf16, RWKV-7 in bf16 where the first stage
    ``first`` keeps its weights smaller on the CPU (engine.embedding.build_embedding)."""
    rows = cfg.vocab_size if t is not None and not t.mapped else min(cfg.vocab_size, TOUCHED_ROWS)
    return rows * cfg.n_embd * embedding_entry_bytes(t, cfg, first)


def embedding_entry_bytes(t: TensorFile | None, cfg: ModelConfig, first) -> int:
    """Bytes per embedding entry as the model reads it (see _embedding_bytes)."""
    from roost.engine.embedding import compact_embedding, embedding_is_native

    if cfg.version >= 7 and compact_embedding(first):
        return 2
    if t is None:
        return 2 if cfg.version < 7 else 4
    dtypes = [t.dtype(k) for k in ("emb.weight", "blocks.0.ln0.weight", "blocks.0.ln0.bias")]
    return 2 if embedding_is_native(cfg, *dtypes) and dtypes[0] == torch.bfloat16 else 4


def _state_bytes(cfg: ModelConfig) -> int:
    if cfg.version == 4:
        return (2 * cfg.n_embd + 3 * cfg.n_att) * 4
    return (2 * cfg.n_embd + cfg.n_head * cfg.head_size ** 2) * 4


def available() -> dict[str, int]:
    """Free memory per device: "cpu" (available RAM), "cuda:N" (free VRAM), "mps"."""
    import psutil

    free = {"cpu": psutil.virtual_memory().available}
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            free[f"cuda:{i}"] = torch.cuda.mem_get_info(i)[0]
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        free["mps"] = free["cpu"]  # unified memory
    return free


def check_fits(est: MemoryEstimate, free: dict[str, int], *, model_name: str, strategy: Strategy,
               alternatives: str = "") -> None:
    """Raise :class:`OutOfMemoryError` naming the device, the need and what is free."""
    for dev, need in est.per_device.items():
        key = "cuda:0" if dev == "cuda" else dev
        have = free.get(key, free.get(dev))
        if have is not None and need > have:
            what = "RAM" if dev == "cpu" else f"memory on {dev}"
            raise OutOfMemoryError(
                f"{model_name} with '{strategy}' needs about {gib(need)} of {what}, but only "
                f"{gib(have)} is free. Close other programs, or choose a smaller model or a "
                f"lighter strategy{(': ' + alternatives) if alternatives else ''}."
            )


def release_pages(tensor: torch.Tensor) -> None:
    """Drop a memory-mapped tensor's file pages from this process's resident memory (Linux).

    Called once a tensor read from the checkpoint has been converted into a new one, so that the
    mapped file and the converted copy are never resident together. Only for tensors backed by a
    private file mapping: the pages are read again from the file if touched later.
    """
    if not sys.platform.startswith("linux") or tensor.numel() == 0:
        return
    page = os.sysconf("SC_PAGE_SIZE")
    start = tensor.data_ptr()
    end = start + tensor.numel() * tensor.element_size()
    a, b = (start + page - 1) // page * page, end // page * page  # whole pages inside the tensor
    if b > a:
        _libc().madvise(ctypes.c_void_p(a), ctypes.c_size_t(b - a), 4)  # MADV_DONTNEED


@contextlib.contextmanager
def loading_allocator():
    """While a model loads, let big blocks come straight from the OS and go back when freed (glibc).

    Converting a layer makes a float32 copy of each matrix and then its packed form, and frees the
    copy. glibc's default serves such blocks (up to 32 MB) from its heap once it has seen one freed,
    and the heap keeps the holes: a 1.6B model loaded as cpu fp32 ended at 9.0 GB resident for 6.7
    GB of weights (peak 9.85 GB). With blocks over 1 MB mapped and unmapped one by one it ends at
    6.7 GB (peak 7.5 GB) and loads faster. Afterwards big work buffers come from the heap again
    and freed ones are kept (trim threshold 64 MB, as glibc's own adaptation would set it), so
    that prompts and generation reuse memory instead of faulting fresh pages in on every call
    (with the default 128 KB trim threshold a 128-token chunk of a 1.6B model took 730 ms, 580
    ms with it).
    """
    libc = _libc() if sys.platform.startswith("linux") else None
    mallopt = getattr(libc, "mallopt", None)
    if mallopt is None:
        yield
        return
    mallopt(_M_MMAP_THRESHOLD, 1 << 20)
    try:
        yield
    finally:
        mallopt(_M_MMAP_THRESHOLD, 32 << 20)
        mallopt(_M_TRIM_THRESHOLD, 64 << 20)  # as glibc's own adaptation would: keep freed work buffers
        trim = getattr(libc, "malloc_trim", None)
        if trim is not None:
            trim(0)


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters
_LIBC = None


def _libc():
    global _LIBC
    if _LIBC is None:
        _LIBC = ctypes.CDLL(None, use_errno=True)
        _LIBC.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    return _LIBC
