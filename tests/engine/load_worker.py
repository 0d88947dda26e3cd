"""A child process that loads models for tests/engine/test_load_matrix.py, so that a load that
crashes the process (a segmentation fault in a conversion) fails one test, by its name, instead
of ending the whole test run.

Requests come one JSON object a line on standard input: ``{"path", "strategy", "tokens", "one",
"out", "cache", "pack", "native"}``. Each is loaded, its logits (``tokens`` read at once, then ``one`` more
tokens one at a time) saved with torch.save to ``out``, and one JSON line answered:
``{"ok": true, "cached": N}`` or ``{"ok": false, "error": "..."}`` for a Python exception. A crash
answers nothing: the parent sees the process end, and faulthandler's trace on standard error.
"""

from __future__ import annotations

import faulthandler
import json
import sys

faulthandler.enable()


def serve() -> None:
    import torch

    from roost.engine import load_model

    for line in sys.stdin:
        req = json.loads(line)
        try:
            model = load_model(req["path"], req["strategy"], weight_cache=req.get("cache"),
                               pack=req.get("pack", True), native=req.get("native", True))
            seq, state = model.forward_all(req["tokens"])
            one = []
            for t in req["one"]:
                logits, state = model.forward([t], state)
                one.append(logits)
            torch.save({"seq": seq, "one": torch.stack(one)}, req["out"])
            answer = {"ok": True, "cached": getattr(model, "cached_matrices", 0)}
        except Exception as e:  # noqa: BLE001 (said to the parent, which fails the test with it)
            answer = {"ok": False, "error": f"{type(e).__name__}: {e}"}
        print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    serve()
