"""Open an RWKV checkpoint safely and read what model it holds from its keys and shapes.

Official BlinkDL checkpoints are ``torch.save`` zip archives of a plain dict of bf16 tensors;
``.safetensors`` files with the same keys are accepted too. Nothing here unpickles code:
PyTorch's weights-only unpickler (as ``torch.load(weights_only=True)``) refuses any object that is
not a tensor or a plain container, and the file is memory-mapped read-only so that opening it
costs no RAM (see :func:`_map_zip`).
"""

from __future__ import annotations

import io
import logging
import mmap
import os
import pickle
import re
import struct
import sys
import warnings
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from roost.engine.errors import (
    CheckpointError,
    CorruptCheckpointError,
    NotACheckpointError,
    UnsafeCheckpointError,
    UnsupportedModelError,
)

log = logging.getLogger("roost.engine")

# variant name -> (major version, what users call it)
ARCHS = {
    "v4": (4, "RWKV-4"),
    "v5.0": (5, "RWKV-5.0"),
    "v5.1": (5, "RWKV-5.1"),
    "v5.2": (5, "RWKV-5.2 Eagle (x052)"),
    "v6.0": (6, "RWKV-6 Finch (x060)"),
    "v7.0": (7, "RWKV-7 Goose (x070)"),
}


@dataclass(frozen=True)
class ModelConfig:
    """The shape of a model, read from its tensors."""

    arch: str  # a key of ARCHS
    n_layer: int
    n_embd: int
    vocab_size: int
    n_att: int  # width of the time-mixing projections (n_embd in every official model)
    n_ffn: int  # hidden width of the channel mixing
    n_head: int  # 0 for RWKV-4, which has no heads
    head_size: int
    has_time_state: bool = False  # a state-tuned checkpoint carrying its initial state

    @property
    def version(self) -> int:
        return ARCHS[self.arch][0]

    @property
    def label(self) -> str:
        return f"{ARCHS[self.arch][1]} {self.n_layer}x{self.n_embd}"


_ST_DTYPES = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32, "F64": torch.float64,
              "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
              "BOOL": torch.bool}


class TensorFile(Mapping):
    """Read-only ``name -> tensor`` view of a checkpoint; tensors are memory-mapped views."""

    def __init__(self, path: Path, tensors: Mapping[str, torch.Tensor] | None, st_file=None,
                 *, mapping: mmap.mmap | None = None):
        self.path = path
        self._tensors = tensors
        self._st = st_file  # safetensors handle: tensors are read on demand (as copies)
        self._mapping = mapping
        self.mapped = mapping is not None  # tensors are views of a read-only file mapping (torch zip format)

    def drop_pages(self) -> None:
        """Drop every page of the file mapping from this process's resident memory (Linux; the
        pages are read again from the file if touched). A loader calls it after each layer: the
        small tensors it copied (7.5 MB a layer of a 14B model: ~0.45 GB) would
        otherwise stay resident as file pages until the mapping goes."""
        if self._mapping is not None and sys.platform.startswith("linux") and len(self._mapping):
            self._mapping.madvise(mmap.MADV_DONTNEED)

    def release(self, source: torch.Tensor, converted) -> None:
        """Drop ``source``'s file pages once ``converted`` (a new copy) replaces it."""
        if not self.mapped or not isinstance(source, torch.Tensor):
            return
        data = converted.q if hasattr(converted, "q") else converted
        if isinstance(data, torch.Tensor) and data.device.type == "cpu" and \
                data.untyped_storage().data_ptr() == source.untyped_storage().data_ptr():
            return  # not a copy: the model runs on the mapped pages themselves
        from roost.engine.memory import release_pages

        release_pages(source)

    def __getitem__(self, key: str) -> torch.Tensor:
        if self._st is not None:
            if key not in self._st_keys:
                raise KeyError(key)
            return self._st.get_tensor(key)
        return self._tensors[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._st_keys if self._st is not None else self._tensors)

    def __len__(self) -> int:
        return len(self._st_keys if self._st is not None else self._tensors)

    @property
    def _st_keys(self) -> list[str]:
        if not hasattr(self, "_keys_cache"):
            self._keys_cache = list(self._st.keys())
        return self._keys_cache

    def shape(self, key: str) -> tuple[int, ...]:
        if self._st is not None:
            return tuple(self._st.get_slice(key).get_shape())
        return tuple(self._tensors[key].shape)

    def dtype(self, key: str) -> torch.dtype:
        """The tensor's type, without reading its data (safetensors tensors are read as copies)."""
        if self._st is not None:
            return _ST_DTYPES.get(self._st.get_slice(key).get_dtype(), torch.float32)
        return self._tensors[key].dtype

    def close(self) -> None:
        self.drop_pages()
        self._tensors = {}
        self._st = None
        self._mapping = None


def open_checkpoint(path: str | os.PathLike) -> tuple[TensorFile, ModelConfig]:
    """Open ``path`` and return its tensors and the model configuration read from them."""
    tensors = read_tensors(path)
    return tensors, detect_config(tensors)


def read_tensors(path: str | os.PathLike) -> TensorFile:
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"There is no file at {path}.", path=str(path))
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder; choose the model's .pth file.", path=str(path))
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(16)
    if size == 0:
        raise CorruptCheckpointError(
            f"{path.name} is empty (0 bytes). The download probably failed; download it again.",
            path=str(path),
        )
    if head.startswith(b"PK\x03\x04"):
        mapped = []
        tensors = _checked_weights(path, lambda p: _map_zip(p, mapped), code_only_errors=True)
        return TensorFile(path, tensors, mapping=mapped[0])
    if head[:1] == b"\x80":  # a pickle: the legacy (pre-zip) torch format, which cannot be mmap'd
        return TensorFile(path, _checked_weights(path, _torch_load))
    if len(head) >= 9 and head[8:9] == b"{":
        return _open_safetensors(path)
    kind = "a GGUF file (llama.cpp format)" if head.startswith(b"GGUF") else "not a PyTorch file"
    raise NotACheckpointError(
        f"{path.name} is {kind}. Roost runs the official RWKV checkpoints (.pth or .safetensors).",
        path=str(path),
    )


def _torch_load(path: Path) -> object:
    return torch.load(path, map_location="cpu", weights_only=True)


def _map_zip(path: Path, mapped: list) -> object:
    """``torch.load(path, weights_only=True, mmap=True)`` but with the file mapped read-only.

    torch.load maps the file privately with write access, which the OS counts against the RAM it
    may promise (Linux refuses such a mapping larger than RAM and swap: a 14B file on a 24 GB
    machine would not open, though a 4-bit strategy needs 10 GB of it; Windows reserves the whole
    file in its page file). A read-only mapping costs nothing until pages are read, and the model
    file cannot be changed through it. The pickled index is read by PyTorch's weights-only
    unpickler; each tensor's bytes are a stored (uncompressed) record of the zip archive. The
    mapping is appended to ``mapped``."""
    with open(path, "rb") as f:
        archive = zipfile.ZipFile(f)
        records = {info.filename: info for info in archive.infolist()}
        index = next((n for n in records if n.endswith("/data.pkl") and n.count("/") == 1), None)
        if index is None:
            raise ValueError("no data.pkl record")
        prefix = index[: -len("data.pkl")]
        order = records.get(prefix + "byteorder")
        if order is not None and archive.read(order).decode() != sys.byteorder:
            raise ValueError("written on a machine of the other byte order")
        mapping = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)  # (a zip is never empty)
        mapped.append(mapping)
        storages: dict[str, torch.TypedStorage] = {}

        def storage(pid):
            _, storage_type, key, _location, numel = pid
            key = key.decode() if isinstance(key, bytes) else str(key)
            if key not in storages:
                dtype = torch.uint8 if storage_type is torch.UntypedStorage else storage_type.dtype
                info, nbytes = records[f"{prefix}data/{key}"], numel * torch._utils._element_size(dtype)
                if info.compress_type != zipfile.ZIP_STORED or info.file_size != nbytes:
                    raise ValueError(f"record {key} is not {nbytes} stored bytes")
                f.seek(info.header_offset)
                local = f.read(30)  # the record's local header, then its name and extra field
                if len(local) != 30 or local[:4] != b"PK\x03\x04":
                    raise ValueError(f"record {key} has no header")
                start = info.header_offset + 30 + sum(struct.unpack("<HH", local[26:30]))
                if start + nbytes > len(mapping):
                    raise ValueError(f"record {key} runs past the end of the file")
                with warnings.catch_warnings():  # "not writable": nothing writes into a checkpoint
                    warnings.simplefilter("ignore")
                    data = torch.frombuffer(mapping, dtype=torch.uint8, count=nbytes, offset=start) \
                        if nbytes else torch.empty(0, dtype=torch.uint8)
                storages[key] = torch.TypedStorage(wrap_storage=data.untyped_storage(), dtype=dtype, _internal=True)
            return storages[key]

        from torch import _weights_only_unpickler

        unpickler = _weights_only_unpickler.Unpickler(io.BytesIO(archive.read(index)), encoding="utf-8")
        unpickler.persistent_load = storage
        return unpickler.load()


def _checked_weights(path: Path, read, *, code_only_errors: bool = False) -> Mapping[str, torch.Tensor]:
    """The dict of tensors ``read(path)`` returns, or a plain error for what it cannot be
    (``code_only_errors``: ``read`` raises UnpicklingError only for what is not plain data)."""
    try:
        obj = read(path)
    except pickle.UnpicklingError as e:
        if code_only_errors or "weights only" in str(e).lower():
            raise UnsafeCheckpointError(
                f"{path.name} contains program code, not just model weights. Roost refused to "
                "run it: an official RWKV checkpoint never does this. Delete the file and "
                "download the model from its official page.",
                path=str(path),
            ) from None
        raise _damaged(path, e) from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, IndexError, TypeError,
            zipfile.BadZipFile, struct.error) as e:
        raise _damaged(path, e) from None
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if isinstance(obj, Mapping) and "_strategy" in obj:
        raise UnsupportedModelError(
            f"{path.name} was converted by ChatRWKV's convert_model.py for one strategy. Roost "
            "loads the original checkpoint: use the .pth file published by BlinkDL.",
            path=str(path),
        )
    if not isinstance(obj, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    ):
        raise NotACheckpointError(
            f"{path.name} is a PyTorch file but not a dictionary of weights, so it is not an "
            "RWKV checkpoint.",
            path=str(path),
        )
    return obj


def _open_safetensors(path: Path) -> TensorFile:
    from safetensors import SafetensorError, safe_open

    try:
        handle = safe_open(str(path), framework="pt", device="cpu")
        handle.keys()
    except (SafetensorError, OSError, ValueError) as e:
        raise _damaged(path, e) from None
    return TensorFile(path, None, handle)


def _damaged(path: Path, error: BaseException) -> CorruptCheckpointError:
    """One plain sentence for the person; the reading library's own words go to the log."""
    log.warning("cannot read %s: %s: %s", path, type(error).__name__, error)
    return CorruptCheckpointError(
        f"{path.name} is damaged or incomplete and cannot be read (often an interrupted download). "
        "Download it again.", path=str(path))


_BLOCK_RE = re.compile(r"^blocks\.(\d+)\.")


def detect_config(t: TensorFile) -> ModelConfig:
    """Find the RWKV version and shape from the tensor names and shapes."""
    from roost.engine.tuned_state import as_model_error

    keys = set(t)
    name = t.path.name
    if (error := as_model_error(t)) is not None:  # a persona's starting states, not a model
        raise error
    if "emb.weight" not in keys or not any(k.startswith("blocks.") for k in keys):
        hf = any(k.startswith(("rwkv.", "model.")) for k in keys)
        raise NotACheckpointError(
            f"{name} holds model weights, but not an RWKV model in BlinkDL's layout"
            + (" (it looks like a Hugging Face transformers conversion; use the original .pth "
               "file)" if hf else " (no 'emb.weight' and 'blocks.*' tensors)")
            + ".",
            path=str(t.path),
        )
    layer_ids = {int(m.group(1)) for k in keys if (m := _BLOCK_RE.match(k))}
    n_layer = max(layer_ids) + 1
    if layer_ids != set(range(n_layer)):
        missing = sorted(set(range(n_layer)) - layer_ids)
        raise CorruptCheckpointError(
            f"{name} is incomplete: layers {missing[:5]} are missing.", path=str(t.path)
        )
    vocab, n_embd = t.shape("emb.weight")
    b0 = "blocks.0."
    has = lambda suffix: b0 + suffix in keys  # noqa: E731

    if has("ffn.s_emb.weight"):
        raise UnsupportedModelError(
            f"{name} is an experimental RWKV-7 DeepEmbed model, which Roost does not run yet.",
            path=str(t.path),
        )
    if has("att.r_k") or has("att.x_r"):
        arch = "v7.0"
    elif has("att.time_maa_x"):
        arch = "v6.0"
    elif has("att.ln_x.weight"):
        arch = "v5.0"
        if has("att.gate.weight"):
            td = [d for d in t.shape(b0 + "att.time_decay")]
            arch = "v5.2" if len(td) > 1 and td[1] > 1 else "v5.1"
    elif has("att.time_mix_k") and has("att.time_decay"):
        arch = "v4"
    else:
        raise UnsupportedModelError(
            f"{name} looks like an RWKV model of a kind Roost does not know (its first layer has "
            f"{', '.join(sorted(k[len(b0):] for k in keys if k.startswith(b0))[:8])}, ...). "
            "Roost runs RWKV-4, -5, -6 and -7.",
            path=str(t.path),
        )

    n_att = t.shape(b0 + "att.key.weight")[0]
    n_ffn = t.shape(b0 + "ffn.key.weight")[0]
    if arch == "v7.0":
        n_head, head_size = t.shape(b0 + "att.r_k")
    elif arch == "v4":
        n_head, head_size = 0, 0
    else:
        n_head = t.shape(b0 + ("att.time_faaaa" if has("att.time_faaaa") else "att.time_decay"))[0]
        head_size = n_att // n_head
    cfg = ModelConfig(
        arch=arch, n_layer=n_layer, n_embd=n_embd, vocab_size=vocab, n_att=n_att, n_ffn=n_ffn,
        n_head=n_head, head_size=head_size, has_time_state=has("att.time_state"),
    )
    _check_shapes(t, cfg)
    return cfg


def official_config(arch: str, n_layer: int, n_embd: int, vocab_size: int = 65536,
                    head_size: int = 64) -> ModelConfig:
    """The configuration of an official model of this architecture and size (widths as BlinkDL
    trains them), for models known only by their catalog facts and for the test checkpoints."""
    ffn = int(n_embd * 3.5) // 32 * 32 if arch in ("v5.2", "v6.0") else 4 * n_embd
    heads = 0 if arch == "v4" else n_embd // head_size
    return ModelConfig(arch=arch, n_layer=n_layer, n_embd=n_embd, vocab_size=vocab_size, n_att=n_embd,
                       n_ffn=ffn, n_head=heads, head_size=0 if arch == "v4" else head_size)


def model_shapes(cfg: ModelConfig, keys=(), *, official_lora: bool = False) -> dict[str, tuple[int, ...] | None]:
    """Every tensor a model of ``cfg`` is read from, with its shape (size-1 dimensions aside): the
    one description of the layout, used to check a file, to estimate memory without one and to make
    test checkpoints. ``keys``: the file's, where a variant is told by which keys it has. Low-rank
    (LoRA) matrices are None (their rank varies between sizes) unless ``official_lora`` asks for
    the ranks BlinkDL's training code gives a model of this width."""
    from roost.engine.arch import arch_module

    arch = arch_module(cfg.arch)
    shapes = {
        "emb.weight": (cfg.vocab_size, cfg.n_embd),
        "blocks.0.ln0.weight": (cfg.n_embd,), "blocks.0.ln0.bias": (cfg.n_embd,),
        "ln_out.weight": (cfg.n_embd,), "ln_out.bias": (cfg.n_embd,),
        "head.weight": (cfg.vocab_size, cfg.n_embd),
    }
    shapes.update(arch.expected_shapes(cfg, set(keys)))
    if official_lora:
        ranks = arch.lora_shapes(cfg)
        for key, shape in shapes.items():
            if shape is None:
                shapes[key] = ranks[key.split(".", 2)[2]]
    return shapes


def _check_shapes(t: TensorFile, cfg: ModelConfig) -> None:
    """Every tensor the model uses exists with the right shape, so loading cannot fail midway."""
    expected = model_shapes(cfg, set(t))
    for key, shape in expected.items():
        if key not in t:
            raise CorruptCheckpointError(
                f"{t.path.name} is incomplete or damaged: the tensor '{key}' of a "
                f"{cfg.label} model is missing.",
                path=str(t.path),
            )
        if shape is None:  # any shape (low-rank matrices whose rank varies between sizes)
            continue
        got = tuple(d for d in t.shape(key) if d != 1)
        want = tuple(d for d in shape if d != 1)
        if got != want:
            raise CorruptCheckpointError(
                f"{t.path.name} is damaged: '{key}' has shape {t.shape(key)}, a {cfg.label} "
                f"model needs {shape}.",
                path=str(t.path),
            )
