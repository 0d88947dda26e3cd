"""State-tuning files ("personas"): the starting state of each layer's time mixing, trained for one
model and published without it.

    tuned = load_tuned_state("rwkv-x060-eng_single_round_qa-1B6-20240516-ctx2048.pth")
    state = model.start_state(tuned)          # TunedStateMismatchError where it does not fit
    logits, state = model.forward(tokens, state)

RWKV state tuning (RWKV-PEFT, BlinkDL's releases) trains one tensor per layer of an RWKV-5, -6 or -7
model, ``blocks.N.att.time_state``, of shape (H, N, N) (heads, head size, head size; some files
hold (H*N, N)), and saves only those, as a ``.pth`` (or ``.safetensors``) file of a few MB. A
state-tuned *checkpoint* carries the same tensors beside the model's weights, and Roost already
starts such a model from them; a separate file gives the same start to the base model.

The layout is the same for every version: each head's matrix is stored (V, K) (RWKV-PEFT hands
``time_state.transpose(1, 2)`` to its kernels, which keep the state (K, V)). RWKV-5 and -6 run
their state (K, V), so the file's is transposed (as the rwkv package does with a checkpoint's and
ChatRWKV's API_DEMO_CHAT.py with a state file's); RWKV-7 runs it (V, K), so it is used as stored.
That conversion lives in one place, each architecture's ``time_state`` (engine.arch), used for
checkpoints and state files alike. The tensors alone cannot tell the version: an RWKV-6 and an
RWKV-7 model of the same size take states of the same shape, so the version is read from the
file's name where it says (``x060``, ``rwkv7``, ...), else left open.

Nothing here unpickles code (``torch.load(weights_only=True)``, or safetensors), and what is read
is bounded: files over :data:`MAX_BYTES` are only looked at where their format lets the keys be
read without the data.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from roost.engine.checkpoint import ModelConfig, TensorFile, read_tensors
from roost.engine.errors import (
    CorruptCheckpointError,
    CorruptTunedStateError,
    IsATunedStateError,
    NotACheckpointError,
    NotATunedStateError,
    RoostError,
    TunedStateMismatchError,
)

# The largest official model (RWKV-6/7 14B: 61 layers of 64 heads of 64) has a 64 MiB state in
# float32; four times that is more than any state file and little enough to read.
MAX_BYTES = 256 << 20
SUFFIXES = (".pth", ".safetensors")

_KEY = re.compile(r"^blocks\.(\d+)\.att\.time_state$")
# x052 / x060 / x070 (BlinkDL's names), rwkv7 / rwkv-6 / rwkv_v5 (RWKV-PEFT's and users' names)
_NAME_VERSION = re.compile(r"x0([567])\d|rwkv[-_ ]?v?([567])(?!\d)")


@dataclass(frozen=True, eq=False)
class TunedState:
    """A state-tuning file: its shape and, once loaded, the starting state of each layer."""

    path: Path
    n_layer: int
    n_head: int
    head_size: int
    dtype: torch.dtype  # as stored
    version: int | None  # the RWKV version its name says it was made for; None where it does not say
    tensors: tuple[torch.Tensor, ...] = ()  # per layer, (H, N, N) as stored; empty when only described

    @property
    def name(self) -> str:
        return self.path.stem

    @property
    def n_embd(self) -> int:
        """The width of the model it was made for (its heads times their size)."""
        return self.n_head * self.head_size

    @property
    def versions(self) -> tuple[int, ...]:
        """The RWKV versions whose models it may be for."""
        return (self.version,) if self.version else (5, 6, 7)

    @property
    def label(self) -> str:
        return _shape(self.n_layer, self.n_head, self.head_size)

    def mismatch(self, cfg: ModelConfig) -> str | None:
        """Why this state cannot start a model of ``cfg``, in a sentence for the person; None if it fits."""
        file = self.path.name
        if cfg.version < 5:
            return (f"{file} is a state (persona) file for a model of {self.label}, but this model, "
                    f"{cfg.label}, has no starting state to replace: personas are for RWKV-5, -6 and -7 models.")
        need = (cfg.n_layer, cfg.n_head, cfg.head_size)
        if (self.n_layer, self.n_head, self.head_size) != need:
            return (f"{file} is a state (persona) file for a model of {self.label}, but this model, "
                    f"{cfg.label}, needs one of {_shape(cfg.n_layer, cfg.n_head, cfg.head_size)}. "
                    "Choose the model it was trained on.")
        if self.version is not None and self.version != cfg.version:
            return (f"{file} is a state (persona) file made for an RWKV-{self.version} model (its name "
                    f"says so), but this model, {cfg.label}, is RWKV-{cfg.version}: the state would not mean "
                    "the same. Choose the model it was trained on (or rename the file if its name is wrong).")
        return None

    def check(self, cfg: ModelConfig) -> None:
        """Raise :class:`TunedStateMismatchError` unless this state fits a model of ``cfg``."""
        problem = self.mismatch(cfg)
        if problem:
            raise TunedStateMismatchError(problem, path=str(self.path))

    def runtime_states(self, cfg: ModelConfig) -> list[torch.Tensor]:
        """Each layer's starting state converted for a model of ``cfg`` exactly as its architecture
        converts a checkpoint's own ``time_state`` (float32, on the CPU)."""
        self.check(cfg)
        from roost.engine.arch import arch_module

        tuned = self if self.tensors else load_tuned_state(self.path)
        convert = arch_module(cfg.arch).time_state
        return [convert(t, cfg) for t in tuned.tensors]


def _layers(n: int) -> str:
    return f"{n} layer" + ("" if n == 1 else "s")


def _shape(n_layer: int, n_head: int, head_size: int) -> str:
    heads = f"{n_head} head" + ("" if n_head == 1 else "s")
    return f"{_layers(n_layer)}, {n_head * head_size} wide ({heads} of {head_size})"


def version_from_name(name: str) -> int | None:
    """The RWKV version a file's name says (x060 -> 6, rwkv7-g1 -> 7, RWKV-5-World -> 5), or None."""
    m = _NAME_VERSION.search(name.lower())
    return int(m.group(1) or m.group(2)) if m else None


def is_state_key(key: str) -> bool:
    return _KEY.match(key) is not None


def _open(path: str | os.PathLike) -> TensorFile:
    """The file's tensors, read lazily (mapped, or read on demand), with errors about state files."""
    path = Path(path)
    try:
        if path.is_file() and path.stat().st_size > MAX_BYTES:
            with open(path, "rb") as f:
                head = f.read(16)
            lazy = head.startswith(b"PK\x03\x04") or (len(head) >= 9 and head[8:9] == b"{")
            if not lazy:  # the legacy pickle format would be read whole
                raise NotATunedStateError(
                    f"{path.name} is too large to be a state (persona) file "
                    f"({path.stat().st_size >> 20} MB; state files are a few MB).", path=str(path))
        return read_tensors(path)
    except (NotATunedStateError, CorruptTunedStateError):
        raise
    except CorruptCheckpointError as e:
        raise CorruptTunedStateError(str(e), path=e.path) from None
    except NotACheckpointError as e:
        raise NotATunedStateError(
            f"{path.name} is not a state (persona) file: those are .pth or .safetensors files of the "
            "tensors blocks.N.att.time_state.", path=e.path) from None


def head_shape(shape: tuple[int, ...]) -> tuple[int, int] | None:
    """(heads, head size) of a stored time_state of ``shape``: (H, N, N), (1, H, N, N) or (H*N, N)."""
    shape = tuple(shape)
    while len(shape) > 3 and shape[0] == 1:
        shape = shape[1:]
    if not shape or min(shape) <= 0:
        return None
    if len(shape) == 3 and shape[1] == shape[2]:
        return shape[0], shape[1]
    if len(shape) == 2 and shape[0] % shape[1] == 0:
        return shape[0] // shape[1], shape[1]
    return None


def _layout(t: TensorFile) -> tuple[int, int, int, torch.dtype]:
    """(n_layer, n_head, head_size, dtype) of a state file, from its keys, shapes and types only."""
    name, keys = t.path.name, list(t)
    if not keys:
        raise NotATunedStateError(f"{name} holds no tensors, so it is not a state (persona) file.",
                                  path=str(t.path))
    layers, other = {}, []
    for k in keys:
        m = _KEY.match(k)
        if m:
            layers[int(m.group(1))] = k
        else:
            other.append(k)
    if other:
        if "emb.weight" in keys:
            raise NotATunedStateError(
                f"{name} is a model, not a state (persona) file: load it as a model.", path=str(t.path))
        listed = ", ".join(sorted(other)[:3]) + (", ..." if len(other) > 3 else "")
        raise NotATunedStateError(
            f"{name} is not a state (persona) file: besides starting states (blocks.N.att.time_state) "
            f"it holds other tensors ({listed}).", path=str(t.path))
    n_layer = max(layers) + 1
    missing = sorted(set(range(n_layer)) - set(layers))
    if missing:
        raise CorruptTunedStateError(
            f"{name} is incomplete: the starting states of layers {missing[:5]} are missing.",
            path=str(t.path))
    heads = {}
    for i in range(n_layer):
        shape = t.shape(layers[i])
        heads[i] = head_shape(shape)
        if heads[i] is None:
            raise CorruptTunedStateError(
                f"{name} is damaged: '{layers[i]}' has shape {tuple(shape)}, not a state's "
                "(heads, head size, head size).", path=str(t.path))
    if len(set(heads.values())) > 1:
        raise CorruptTunedStateError(
            f"{name} is damaged: its layers' states have different shapes "
            f"({', '.join(f'{h}x{n}x{n}' for h, n in sorted(set(heads.values())))}).", path=str(t.path))
    dtypes = {t.dtype(k) for k in layers.values()}
    for dt in dtypes:
        if not dt.is_floating_point:
            raise CorruptTunedStateError(
                f"{name} is damaged or not a state file: its states hold {str(dt).removeprefix('torch.')} "
                "values, not floating-point numbers.", path=str(t.path))
    h, n = heads[0]
    dtype = max(dtypes, key=lambda d: d.itemsize)
    if n_layer * h * n * n * dtype.itemsize > MAX_BYTES:
        raise NotATunedStateError(
            f"{name} is too large to be a state (persona) file ({_layers(n_layer)} of {h}x{n}x{n}).",
            path=str(t.path))
    return n_layer, h, n, dtype


def describe_tuned_state(path: str | os.PathLike) -> TunedState:
    """What model a state file is for, from its keys and shapes, without reading its data."""
    t = _open(path)
    try:
        n_layer, h, n, dtype = _layout(t)
    finally:
        t.close()
    return TunedState(Path(path), n_layer, h, n, dtype, version_from_name(Path(path).name))


def load_tuned_state(path: str | os.PathLike) -> TunedState:
    """Read a state-tuning file: every layer's starting state, checked (all layers, one shape,
    floating-point numbers, finite). Raises :class:`~roost.engine.errors.TunedStateError`
    subclasses (and :class:`~roost.engine.errors.UnsafeCheckpointError` for a file with code)."""
    path = Path(path)
    t = _open(path)
    try:
        n_layer, h, n, dtype = _layout(t)
        tensors = []
        for i in range(n_layer):
            key = f"blocks.{i}.att.time_state"
            x = t[key]
            if not x.is_floating_point():
                raise CorruptTunedStateError(
                    f"{path.name} is damaged or not a state file: '{key}' holds "
                    f"{str(x.dtype).removeprefix('torch.')} values, not floating-point numbers.", path=str(path))
            x = x.detach().reshape(h, n, n).clone()  # own memory: the file is not kept open
            if not bool(torch.isfinite(x).all()):
                raise CorruptTunedStateError(
                    f"{path.name} is damaged: '{key}' holds values that are not numbers (NaN or infinity).",
                    path=str(path))
            tensors.append(x)
    finally:
        t.close()
    return TunedState(path, n_layer, h, n, dtype, version_from_name(path.name), tuple(tensors))


def is_tuned_state_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a state-tuning file by its keys (all ``blocks.N.att.time_state``), read
    cheaply: only files up to :data:`MAX_BYTES` with a model file's suffix are opened, and only their
    keys are read. A damaged or unreadable file is not one (whatever else it is)."""
    p = Path(path)
    try:
        if p.suffix.lower() not in SUFFIXES or not p.is_file() or p.stat().st_size > MAX_BYTES:
            return False
        t = read_tensors(p)
    except (RoostError, OSError):
        return False
    try:
        keys = list(t)
        return bool(keys) and all(_KEY.match(k) for k in keys)
    finally:
        t.close()


def as_model_error(t: TensorFile) -> IsATunedStateError | None:
    """The error for a state file opened as a model (None where ``t`` is not one): it says what
    model the state is for."""
    keys = list(t)
    if not keys or not all(_KEY.match(k) for k in keys):
        return None
    name = t.path.name
    try:
        n_layer, h, n, _ = _layout(t)
    except RoostError:
        n_layers = max(int(_KEY.match(k).group(1)) for k in keys) + 1
        return IsATunedStateError(
            f"{name} is a state (persona) file for an RWKV model of {_layers(n_layers)} (and it looks "
            "damaged), not a model. Load the model it was made for.", path=str(t.path), n_layer=n_layers)
    return IsATunedStateError(
        f"{name} is a state (persona) file for an RWKV model of {_layers(n_layer)}, {h * n} wide, "
        "not a model. Load the model it was made for, then choose this file as its persona.",
        path=str(t.path), n_layer=n_layer, n_embd=h * n)


def initial_state(model, tuned: TunedState | str | os.PathLike | None):
    """The state ``model`` starts from with the persona ``tuned`` (a :class:`TunedState` or its
    file; None: the model's own start). Same as ``model.start_state(tuned)``."""
    return model.start_state(tuned)

