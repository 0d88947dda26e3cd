"""Roost's RWKV runtime: pure PyTorch, no GUI.

    from roost import engine
    model = engine.load_model("RWKV-x070-World-1.5B.pth", strategy="cpu fp32")
    logits, state = model.forward(model.tokenizer.encode("Hello"), None)

Names are imported lazily so that ``import engine`` is fast and does not load torch.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "load_model": ".model",
    "LoadOptions": ".options",
    "RWKV": ".model",
    "State": ".model",
    "ModelConfig": ".checkpoint",
    "parse_strategy": ".strategy",
    "SamplingParams": ".sampling",
    "StopFlag": ".generate",
    "RoostError": ".errors",
    "CheckpointError": ".errors",
    "NotACheckpointError": ".errors",
    "CorruptCheckpointError": ".errors",
    "UnsafeCheckpointError": ".errors",
    "UnsupportedModelError": ".errors",
    "StrategyError": ".errors",
    "TokenizerError": ".errors",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'roost.engine' has no attribute {name!r}")
