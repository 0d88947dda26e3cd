"""A model state on disk: written exactly as it is in memory, read back only where it fits.

    save_state(path, state, {"what": ...})          # safetensors: no code in the file, ever
    state, meta = load_state(path, model)            # StateFileError when it is damaged or does not fit

A state is one tuple of tensors per layer (:class:`~roost.engine.states.State`); each tensor is
stored in its own precision (float32 on the CPU), so a state read back is bit-identical to the one
saved. The file's metadata carries what the caller needs to know what the state belongs to (the
model's :func:`identity`, the tokens it saw); :func:`load_state` checks every tensor's shape and
type against the loaded model's fresh state, and never applies a state that does not fit.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from roost.engine.errors import RoostError

FORMAT = "roost.state"
VERSION = 1


class StateFileError(RoostError):
    """A saved state that is damaged, of another format, or of another model."""


def identity(model) -> str:
    """What a state depends on: the model file (name, size, modification time) and how each layer's
    state is kept (device and precision, from the strategy). A state saved under another identity
    is never used."""
    file = file_identity(Path(model.path))
    kinds = ",".join(sorted({f"{t.device.type}/{str(t.dtype).removeprefix('torch.')}"
                             for layer in model.zero_state().layers for t in layer}))
    return f"{file}|v{model.version}|{model.n_layer}x{model.n_embd}|{kinds}"


def file_identity(path: Path) -> str:
    """A model file as far as what is derived from it is concerned: its name, size and modification
    time (a changed or replaced file gets a new identity; reading gigabytes to hash them is not
    worth it)."""
    try:
        st = path.stat()
        return f"{path.name}:{st.st_size}:{st.st_mtime_ns}"
    except OSError:
        return f"{path.name}:?"


def state_tensors(state) -> dict[str, torch.Tensor]:
    return {f"{i}.{j}": t.detach().to("cpu").contiguous()
            for i, layer in enumerate(state.layers) for j, t in enumerate(layer)}


def save_state(path: str | os.PathLike, state, meta: dict) -> int:
    """Write `state` with `meta` (JSON-able) to `path` atomically; returns the file's size."""
    from safetensors.torch import save_file

    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    info = {"format": FORMAT, "version": VERSION, "n_tokens": getattr(state, "n_tokens", 0), "meta": meta}
    save_file(state_tensors(state), str(tmp), metadata={"roost": json.dumps(info, ensure_ascii=False)})
    os.replace(tmp, path)
    return path.stat().st_size


def read_meta(path: str | os.PathLike) -> dict:
    """The metadata of a saved state without reading its tensors."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get("roost")
        info = json.loads(raw) if raw else None
    except Exception as e:  # noqa: BLE001 -- safetensors raises several kinds for a damaged file
        raise StateFileError(f"The saved state {Path(path).name} cannot be read ({type(e).__name__}).") from None
    if not isinstance(info, dict) or info.get("format") != FORMAT or info.get("version") != VERSION:
        raise StateFileError(f"{Path(path).name} is not a state saved by this version of Roost.")
    return info


def load_state(path: str | os.PathLike, model):
    """(State, meta) from `path`, placed as the model keeps its state; StateFileError when the file
    is damaged or any tensor's shape or type differs from the model's."""
    from safetensors.torch import load_file

    from roost.engine.model import State

    info = read_meta(path)
    try:
        tensors = load_file(str(path))
    except Exception as e:  # noqa: BLE001
        raise StateFileError(f"The saved state {Path(path).name} is damaged ({type(e).__name__}).") from None
    fresh = model.zero_state().layers
    expected = {f"{i}.{j}" for i, layer in enumerate(fresh) for j in range(len(layer))}
    if set(tensors) != expected:
        raise StateFileError(f"The saved state {Path(path).name} belongs to another model (its layers differ).")
    layers = []
    for i, layer in enumerate(fresh):
        out = []
        for j, want in enumerate(layer):
            t = tensors[f"{i}.{j}"]
            if t.shape != want.shape or t.dtype != want.dtype:
                raise StateFileError(f"The saved state {Path(path).name} belongs to another model "
                                     f"(layer {i}: {tuple(t.shape)} {t.dtype}, the model has "
                                     f"{tuple(want.shape)} {want.dtype}).")
            if not bool(torch.isfinite(t).all()):
                raise StateFileError(f"The saved state {Path(path).name} is damaged (not finite numbers).")
            out.append(t.to(want.device))
        layers.append(tuple(out))
    n_tokens = info.get("n_tokens", 0)
    return State(tuple(layers), int(n_tokens) if isinstance(n_tokens, int) else 0), info.get("meta") or {}
