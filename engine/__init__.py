"""Roost's RWKV runtime: pure PyTorch, no GUI.

    from roost import engine
    model = engine.load_model("RWKV-x070-World-1.5B.pth", strategy="cpu fp32")
    logits, state = model.forward(model.tokenizer.encode("Hello"), None)
    persona = engine.load_tuned_state("rwkv7-g1-...-state.pth")  # a state-tuning file
    logits, state = model.forward(model.tokenizer.encode("Hello"), model.start_state(persona))

Names are imported lazily so that ``import engine`` is fast and does not load torch.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "load_model": ".model",
    "check_loadable": ".model",
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
    "TunedState": ".tuned_state",
    "load_tuned_state": ".tuned_state",
    "describe_tuned_state": ".tuned_state",
    "is_tuned_state_file": ".tuned_state",
    "initial_state": ".tuned_state",
    "IsATunedStateError": ".errors",
    "TunedStateError": ".errors",
    "NotATunedStateError": ".errors",
    "CorruptTunedStateError": ".errors",
    "TunedStateMismatchError": ".errors",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'roost.engine' has no attribute {name!r}")
