"""Generation speed with and without the opt-in torch.compile, on a random 24 x 1024 RWKV-6 checkpoint.

    python benchmarks/compile_bench.py                        # cpu fp32
    python benchmarks/compile_bench.py --strategy "cpu int8"

Loads the model twice in one process (eager, then compile=True; the compile time is part of the
second load), then alternates eager and compiled runs of 64 tokens, one at a time from a short
prompt's state, each feeding back the greedy token, after one warm-up run each. Prints the median
tok/s of 3 runs for both and their ratio.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path



def run(model, state, n: int) -> float:
    """tok/s of ``n`` one-token forwards from ``state``."""
    token = 0
    started = time.perf_counter()
    for _ in range(n):
        logits, state = model.forward([token], state)
        token = int(logits.argmax())
    return n / (time.perf_counter() - started)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--strategy", default="cpu fp32")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "roost-bench"))
    args = ap.parse_args()

    import torch

    from roost import engine
    from roost.engine.synthetic import save_checkpoint

    path = Path(args.cache) / "compile-v6-24x1024.pth"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        print(f"building {path} ...", flush=True)
        save_checkpoint(path, "v6.0", n_layer=24, n_embd=1024)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, strategy '{args.strategy}'")

    eager = engine.load_model(path, args.strategy)
    print(f"eager load {eager.load_seconds:.1f} s")
    comp = engine.load_model(path, args.strategy, compile=True)
    print(f"compile=True load {comp.load_seconds:.1f} s (compile included); compiled: {comp.compiled}"
          + (f"; {comp.compile_note}" if comp.compile_note else ""))

    prompt = list(range(100, 116))
    speeds: dict[str, list[float]] = {"eager": [], "compiled": []}
    for i in range(args.runs + 1):  # run 0 is the warm-up
        for name, model in (("eager", eager), ("compiled", comp)):
            _, state = model.forward(prompt, None)
            tps = run(model, state, args.tokens)
            if i:
                speeds[name].append(tps)
    e, c = (statistics.median(speeds[k]) for k in ("eager", "compiled"))
    for name, v in speeds.items():
        print(f"{name:9s} median {statistics.median(v):6.2f} tok/s  runs: {', '.join(f'{x:.2f}' for x in v)}")
    print(f"compiled / eager: {c / e:.2f}x" + ("" if comp.compiled else " (compile fell back to eager)"))


if __name__ == "__main__":
    main()
