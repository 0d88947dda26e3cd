"""Roost's RWKV runtime: pure PyTorch, no GUI.

    import engine
    model = engine.load_model("RWKV-x070-World-1.5B.pth", strategy="cpu fp32")
    logits, state = model.forward(model.tokenizer.encode("Hello"), None)

Names are imported lazily so that ``import engine`` is fast and does not load torch.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "load_model": "engine.model",
    "RWKV": "engine.model",
    "State": "engine.model",
    "ModelConfig": "engine.checkpoint",
    "parse_strategy": "engine.strategy",
    "SamplingParams": "engine.sampling",
    "StopFlag": "engine.generate",
    "RoostError": "engine.errors",
    "CheckpointError": "engine.errors",
    "NotACheckpointError": "engine.errors",
    "CorruptCheckpointError": "engine.errors",
    "UnsafeCheckpointError": "engine.errors",
    "UnsupportedModelError": "engine.errors",
    "StrategyError": "engine.errors",
    "TokenizerError": "engine.errors",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'engine' has no attribute {name!r}")
