"""How a model is loaded, as arguments: the engine reads no environment variable of its own.

    model = load_model(path, "cpu int8", options=LoadOptions(compile=True))
    model = load_model(path, "cpu int8", compile=True)           # the same, one field at a time

The programs built on the engine (the app, the command line, the API server, the benchmarks) read
the ``ROOST_*`` switches once, at their start, with :meth:`LoadOptions.from_env`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace

KERNEL_ENV, PACK_ENV, COMPILE_ENV, MALLOC_ENV = "ROOST_INT8_KERNEL", "ROOST_PACK", "ROOST_COMPILE", "ROOST_TUNE_MALLOC"
NATIVE_ENV = "ROOST_NATIVE"
_YES, _NO = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


@dataclass(frozen=True)
class LoadOptions:
    chunk_len: int = 128  # prompt tokens per sequence-mode chunk
    check_memory: bool = True  # refuse a model that would not fit, before loading it
    compile: bool = False  # torch.compile the one-token step where a compiler exists (roost.engine.compiled)
    # cpu int8 / int4 matrices in the compiled kernels' blocks where they are installed
    # (roost.engine.native); False: the PyTorch path, the reference
    native: bool = True
    pack: bool = True  # float CPU weights reordered for oneDNN where that is faster (linear.pack_for_cpu)
    int8_kernel: str | None = None  # force one of linear.KERNELS for every CPU int8 matrix (tests, benchmarks)
    # glibc malloc tuned while loading and kept for the work buffers afterwards (memory.loading_allocator):
    # process-wide, so off unless a program that owns its process asks for it
    tune_allocator: bool = False
    # a folder where converted int8 / int4 CPU weights are kept between loads (engine.weight_cache;
    # the program's cache folder, never the models folder), and the most bytes it may hold
    weight_cache: str | None = None
    weight_cache_bytes: int = 16 << 30

    def __post_init__(self):
        from roost.engine.int8 import KERNELS

        if self.int8_kernel is not None and self.int8_kernel not in KERNELS:
            raise ValueError(f"int8_kernel must be one of {', '.join(KERNELS)}, not {self.int8_kernel!r}")
        if self.chunk_len < 1:
            raise ValueError("chunk_len must be 1 or more")

    def replace(self, **changes) -> LoadOptions:
        names = {f.name for f in fields(self)}
        unknown = set(changes) - names
        if unknown:
            raise TypeError(f"unknown load option(s): {', '.join(sorted(unknown))}; options: {', '.join(sorted(names))}")
        return replace(self, **changes)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides) -> LoadOptions:
        """The options of a program that owns its process: allocator tuning on, and the switches
        ``ROOST_COMPILE=1``, ``ROOST_PACK=0``, ``ROOST_INT8_KERNEL=<kernel>``, ``ROOST_TUNE_MALLOC=0``,
        ``ROOST_NATIVE=0`` (the PyTorch path instead of the compiled kernels)."""
        env = os.environ if environ is None else environ

        def flag(name: str, default: bool) -> bool:
            value = env.get(name, "").strip().lower()
            return True if value in _YES else False if value in _NO else default

        kernel = env.get(KERNEL_ENV, "").strip() or None
        from roost.engine.int8 import KERNELS

        return cls(compile=flag(COMPILE_ENV, False), pack=flag(PACK_ENV, True), native=flag(NATIVE_ENV, True),
                   int8_kernel=kernel if kernel in KERNELS else None,
                   tune_allocator=flag(MALLOC_ENV, True)).replace(**overrides)
