"""One module per RWKV architecture. Each exposes the same small set of pure functions:

- ``expected_shapes(cfg, keys) -> {key: shape}``: every per-layer tensor it reads (low-rank matrices
  None); ``lora_shapes(cfg) -> {name: shape}``: those low-rank matrices in an official model of
  that width. Use them through ``checkpoint.model_shapes``;
- ``prepare_layer(tensors, i, cfg, dtype, big) -> dict``: layer ``i``'s weights in run-time form,
  its big matrices through ``big(tensors, key)`` (engine.model's ``_matrix_loader``), its low-rank
  ones through ``big.low_rank(w)`` where ``big.packs_low_rank`` (int8 rows in int8/int4 CPU
  stages);
- ``init_state(cfg, w, dtype) -> tuple``: a layer's fresh recurrent state: zeros, or the starting
  state ``w["att.time_state"]`` where the layer has one;
- ``time_state(stored, cfg) -> tensor`` (RWKV-5/6/7 only): a state-tuned starting state as files
  store it (``blocks.N.att.time_state``) in the form ``init_state`` reads from ``w``;
- ``layer(x, w, state, cfg, carry) -> (x, state, carry)``: one block over ``x`` of shape (T, C).
  ``carry`` passes values between layers within a forward pass (RWKV-7's first-layer values).
"""

from __future__ import annotations

import importlib
from types import ModuleType

_MODULES = {"v4": "v4", "v5.0": "v5", "v5.1": "v5", "v5.2": "v5", "v6.0": "v6", "v7.0": "v7"}


def arch_module(arch: str) -> ModuleType:
    return importlib.import_module(f".{_MODULES[arch]}", __name__)
