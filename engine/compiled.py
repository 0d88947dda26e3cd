"""Opt-in ``torch.compile`` of the one-token layer step (``load_model(..., compile=True)``; the
programs also take ``ROOST_COMPILE=1``, see roost.engine.options).

torch.compile generates C++ (CPU) or Triton (GPU) code and builds it with a compiler while the
program runs, so it is only used where that compiler exists. The default path compiles nothing:
the bundles must run on machines without a compiler. When compilation is asked for but cannot be
used, the model runs eagerly and says why in ``model.compile_note``.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys

def cxx_name() -> str:
    """The C++ compiler torch inductor calls: ``$CXX``, else cl / clang++ / g++ by platform."""
    return os.environ.get("CXX") or {"win32": "cl", "darwin": "clang++"}.get(sys.platform, "g++")


def unavailable_reason(devices: tuple[str, ...]) -> str | None:
    """Why torch.compile cannot be used for a model on ``devices``, in plain words; None if it can."""
    try:
        from torch._dynamo.eval_frame import check_if_dynamo_supported

        check_if_dynamo_supported()
    except Exception as e:  # noqa: BLE001 (any failure here means "not on this platform")
        return f"torch.compile does not work on this platform ({e})"
    if "mps" in devices:
        return "torch.compile is not used on Apple's MPS GPU"
    if "cuda" in devices and importlib.util.find_spec("triton") is None:
        return "Triton, which torch.compile needs for NVIDIA GPUs, is not installed"
    if shutil.which(cxx_name()) is None:
        return f"no C++ compiler was found (torch.compile builds code with '{cxx_name()}' at run time)"
    return None
