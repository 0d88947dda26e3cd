"""Converted weights kept on disk: a second load of a model with int8 or int4 weights on the CPU
reads them instead of quantising the model file again.

    cache = WeightCache(folder, budget_bytes)     # a cache folder of the program's, never the models folder
    entry = cache.open(model_path, strategy)       # reads a complete, matching entry, else records a new one
    q = entry.get(key, "int8", shapes)             # None: convert it from the file (and entry.put it)
    entry.finish()                                 # after a good load (entry.abort() after a failed one)

One file per (model file, strategy), in a layout of its own so that it can be written as loading
goes, without a second copy of the weights in memory: the tensors' bytes one after another, then a
JSON index (names, types, shapes, offsets), then a 16-byte trailer (magic, index offset). A file is
written under a temporary name and renamed once complete. An entry belongs to one identity: the
model file's name, size and modification time (as saved states, engine.state_io.file_identity),
the strategy, this format's version, torch's version and the 4-bit parameters. A file that cannot
be read, or whose index, sizes or identity do not match, is ignored and replaced; when a model
file changes, its old entry goes. Entries beyond the budget go least recently used first.

A complete entry is mapped read-only and its tensors are views of the mapping: a second load copies
nothing (its pages come from the page cache, mapped ahead with MADV_POPULATE_READ where Linux has it)
and the weights of a 4-bit model are the file's pages, which the system can drop and read back
under memory pressure rather than fail. Tensors that are only read once (int8 rows that fbgemm
packs into its own form) give their pages back once used (:meth:`Entry.done`). Entries are only ever
written under another name and renamed, never changed in place, so a mapped one stays whole; on
Linux and macOS the cache can be cleared while a model runs (the mapping keeps its pages until the
model goes), on Windows the running model's entry stays until it is unloaded. Only the tensors'
structure is checked: a file whose bytes were altered on disk in place (same length, index intact)
is not detected; that would need a checksum of gigabytes per load.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import struct
import sys
import warnings
from pathlib import Path
from typing import NamedTuple

FORMAT, VERSION = "roost.weights", 2  # 2: tall int8 matrices in blocks of rows
MAGIC = b"RWCACHE1"
SUFFIX = ".rwc"
ALIGN = 64
_SIZES = {"int8": 1, "uint8": 1, "float32": 4, "bfloat16": 2, "float16": 2}  # the types an entry holds (torch is
# imported only to read or write one: the app's settings page lists and clears entries without it)
_MAX_INDEX = 64 << 20
# Linux 5.14+: MADV_POPULATE_READ maps a range's pages from the page cache (reading what is missing)
_POPULATE_READ = 22 if sys.platform.startswith("linux") else getattr(mmap, "MADV_WILLNEED", None)
_PAGE = mmap.PAGESIZE


class Usage(NamedTuple):
    files: int
    bytes: int


def _identity(model_path: Path, strategy: str) -> dict:
    import torch

    from roost.engine.int4 import INT4_GROUP, INT4_REFINE
    from roost.engine.state_io import file_identity

    return {"model": file_identity(model_path), "strategy": strategy, "torch": torch.__version__.split("+")[0],
            "int4": [INT4_GROUP, INT4_REFINE]}


class WeightCache:
    """The cache folder and its budget (bytes; 0 keeps nothing)."""

    def __init__(self, folder: str | os.PathLike, budget: int):
        self.folder, self.budget = Path(folder), int(budget)

    def open(self, model_path: str | os.PathLike, strategy: str) -> "Entry":
        path = Path(model_path).resolve()
        stem = hashlib.sha256(f"{path}|{strategy}".encode()).hexdigest()[:16]
        ident = _identity(path, strategy)
        tag = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]
        return Entry(self, self.folder / f"{stem}-{tag}{SUFFIX}", stem, ident)

    def files(self) -> list[Path]:
        try:
            return sorted(p for p in self.folder.iterdir() if p.suffix == SUFFIX and p.is_file())
        except OSError:
            return []

    def usage(self) -> Usage:
        sizes = [_size(p) for p in self.files()]
        return Usage(len(sizes), sum(sizes))

    def clear(self) -> int:
        """Remove every entry (and leftovers of interrupted writes); returns the bytes freed."""
        freed = 0
        try:
            leftovers = [p for p in self.folder.iterdir() if p.name.endswith(SUFFIX + ".tmp") or p.suffix == SUFFIX]
        except OSError:
            return 0
        for p in leftovers:
            size = _size(p)
            try:
                p.unlink()
                freed += size
            except OSError:
                pass  # in use by another program's write: it goes next time
        return freed

    def evict(self, keep: Path | None = None) -> None:
        """Least recently used entries go until the folder fits the budget (``keep`` last)."""
        entries = sorted(self.files(), key=lambda p: (p == keep, _mtime(p)))
        total = sum(_size(p) for p in entries)
        for p in entries:
            if total <= self.budget:
                break
            size = _size(p)
            try:
                p.unlink()
                total -= size
            except OSError:
                pass


class Entry:
    """One (model, strategy): read from a complete file when there is one, else recorded."""

    def __init__(self, cache: WeightCache, path: Path, stem: str, identity: dict):
        self.cache, self.path, self.stem, self.identity = cache, path, stem, identity
        self.index: dict | None = None
        self._map = self._writer = None
        self._written: dict[str, list] = {}
        self._offset = 0
        self.broken = False  # a tensor of the file did not fit: the entry is replaced next time
        self.hits = 0
        if cache.budget > 0:
            self._open_reader()
            if self._map is None:
                self._open_writer()

    def _open_reader(self) -> None:
        try:
            f = open(self.path, "rb")
        except OSError:
            return
        try:
            size = os.fstat(f.fileno()).st_size
            if size < len(MAGIC) + 8:
                raise ValueError("short")
            f.seek(size - 16)
            magic, at = f.read(8), struct.unpack("<Q", f.read(8))[0]
            if magic != MAGIC or not 0 <= at <= size - 16 or size - 16 - at > _MAX_INDEX:
                raise ValueError("trailer")
            f.seek(at)
            index = json.loads(f.read(size - 16 - at).decode())
            if not isinstance(index, dict) or index.get("format") != FORMAT or index.get("version") != VERSION \
                    or index.get("identity") != self.identity or not isinstance(index.get("tensors"), dict):
                raise ValueError("index")
            for entry in index["tensors"].values():
                dtype, shape, offset, nbytes = entry
                numel = 1
                for d in shape:
                    numel *= int(d)
                if dtype not in _SIZES or offset + nbytes > at or offset < 0 \
                        or nbytes != numel * _SIZES[dtype]:
                    raise ValueError("tensor")
            self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)  # (stays valid once f is closed)
        except (ValueError, TypeError, KeyError, OSError, UnicodeDecodeError, struct.error):
            _remove(self.path)  # damaged or of another version: replaced by this load
            return
        finally:
            f.close()
        self.index = index
        import torch

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # (a read-only buffer: never written through)
            self._base = torch.frombuffer(self._map, dtype=torch.uint8, count=1).data_ptr()
        try:
            os.utime(self.path)  # used: the last to be evicted
        except OSError:
            pass

    def _open_writer(self) -> None:
        try:
            self.cache.folder.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
            self._writer, self._tmp = open(tmp, "wb"), tmp
        except OSError:
            self._writer = None

    def get(self, key: str, kind: str, shapes: dict[str, tuple]) -> dict | None:
        """The tensors stored for ``key`` as ``kind`` with exactly ``shapes`` ({name: shape}), or None.
        They are read-only views of the mapped file: never write to them."""
        if self._map is None:
            return None
        import torch

        out = {}
        for name, shape in shapes.items():
            entry = self.index["tensors"].get(f"{key}/{kind}/{name}")
            if entry is None or tuple(entry[1]) != tuple(shape):
                self.broken = True
                return None
            dtype, _, offset, nbytes = entry
            if not nbytes:
                out[name] = torch.empty(tuple(shape), dtype=getattr(torch, dtype))
                continue
            self._advise(_POPULATE_READ, offset, nbytes, outward=True)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                t = torch.frombuffer(self._map, dtype=getattr(torch, dtype), count=nbytes // _SIZES[dtype],
                                     offset=offset)
            out[name] = t.view(tuple(shape))
        self.hits += 1
        return out

    def done(self, t) -> None:
        """``t`` (from :meth:`get`) will not be read again: its pages leave this process (they stay
        in the page cache). Safe to call from any thread, and with tensors not of this entry."""
        m = self._map
        if m is None or not t.numel():
            return
        offset = t.data_ptr() - self._base
        if 0 <= offset and offset + t.numel() * t.element_size() <= len(m):
            self._advise(getattr(mmap, "MADV_DONTNEED", None), offset, t.numel() * t.element_size(), outward=False)

    def _advise(self, advice, offset: int, nbytes: int, *, outward: bool) -> None:
        """madvise over the pages of a byte range (``outward``: every page it touches, else only the
        pages it covers whole); nothing where the system has no madvise."""
        m = self._map
        if advice is None or m is None or not hasattr(m, "madvise"):
            return
        if outward:
            a, b = offset // _PAGE * _PAGE, min(len(m), -(-(offset + nbytes) // _PAGE) * _PAGE)
        else:
            a, b = -(-offset // _PAGE) * _PAGE, (offset + nbytes) // _PAGE * _PAGE
        if b <= a:
            return
        try:
            m.madvise(advice, a, b - a)
        except (OSError, ValueError):
            global _POPULATE_READ
            if advice == _POPULATE_READ:  # before Linux 5.14: the pages are faulted in as they are used
                _POPULATE_READ = getattr(mmap, "MADV_WILLNEED", None)

    def put(self, key: str, kind: str, tensors: dict) -> None:
        """Append ``key``'s converted tensors (a full disk or any write error stops the recording,
        never the load)."""
        if self._writer is None:
            return
        import torch

        try:
            for name, t in tensors.items():
                t = t.detach().contiguous()
                dtype = str(t.dtype).removeprefix("torch.")
                if dtype not in _SIZES:
                    raise ValueError(dtype)
                pad = -self._offset % ALIGN
                if pad:
                    self._writer.write(b"\0" * pad)
                    self._offset += pad
                data = t.view(torch.uint8).reshape(-1).numpy() if t.numel() else b""
                self._writer.write(data)
                nbytes = t.numel() * t.element_size()
                self._written[f"{key}/{kind}/{name}"] = [dtype, list(t.shape), self._offset, nbytes]
                self._offset += nbytes
        except (OSError, ValueError):
            self._drop_writer()

    def finish(self) -> None:
        """After a load: a recorded entry is completed and kept (within the budget); an entry read
        with a damaged tensor is removed so the next load rebuilds it."""
        if self._map is not None:
            self._map = None  # (not closed: the model's tensors are views of it; it goes with them)
            if self.broken:
                _remove(self.path)
            else:
                self.cache.evict(keep=self.path)  # (the budget may have been lowered since)
            return
        if self._writer is None:
            return
        try:
            if not self._written:  # nothing of this strategy is converted on the CPU
                raise OSError("empty")
            index = json.dumps({"format": FORMAT, "version": VERSION, "identity": self.identity,
                                "tensors": self._written}).encode()
            self._writer.write(index)
            self._writer.write(MAGIC + struct.pack("<Q", self._offset))
            self._writer.close()
            self._writer = None
            os.replace(self._tmp, self.path)
        except OSError:
            self._drop_writer()
            return
        for p in self.cache.files():  # the entries of older versions of this model file go
            if p.name.startswith(self.stem + "-") and p != self.path:
                _remove(p)
        self.cache.evict(keep=self.path)
        if _size(self.path) > self.cache.budget:
            _remove(self.path)

    def abort(self) -> None:
        self._map = None
        self._drop_writer()

    def _drop_writer(self) -> None:
        if self._writer is not None:
            try:
                self._writer.close()
            except OSError:
                pass
            self._writer = None
            _remove(self._tmp)


def _size(p: Path) -> int:
    try:
        return p.stat().st_size
    except OSError:
        return 0


def _mtime(p: Path) -> float:
    try:
        return p.stat().st_mtime
    except OSError:
        return 0.0


def _remove(p: Path) -> None:
    try:
        p.unlink()
    except OSError:
        pass
