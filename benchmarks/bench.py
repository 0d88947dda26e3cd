"""Roost against the reference `rwkv` pip package, side by side, on random checkpoints of real shapes.

    python benchmarks/bench.py                          # v6 1.6B shape, the default strategies
    python benchmarks/bench.py --shape v7-1.5b --strategies "cpu fp32,cpu bf16"
    python benchmarks/bench.py --shape v6-7b --strategies "cpu int8" --no-reference --gen 8
    python benchmarks/bench.py --strategies "cpu bf16,cpu int8" --repeat 3   # medians of 3 alternating runs
    python benchmarks/bench.py --shape v6-14b --strategies "cpu int4" --no-reference --gen 3 --prefill 16
                                                        # peak RSS of a 14B load (a sparse file of zeros)

Each (implementation, strategy) runs in a fresh process so that load time and peak RSS (the
high-water mark, mapped file pages included) are its own. Prints generation tok/s (median of the
per-token times), 512-token prefill tok/s, load time and peak RSS, with Roost/reference ratios.
The reference runs with RWKV_JIT_ON=1 and the same thread count. This is a development tool: the
reference package is not part of the product.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SHAPES = {  # name: (arch, n_layer, n_embd)
    "v6-0.4b": ("v6.0", 24, 1024),
    "v6-1.6b": ("v6.0", 24, 2048),
    "v7-0.4b": ("v7.0", 24, 1024),
    "v7-1.5b": ("v7.0", 24, 2048),
    "v5-1.5b": ("v5.2", 24, 2048),
    "v4-1.5b": ("v4", 24, 2048),
    "v6-7b": ("v6.0", 32, 4096),
    "v7-7b": ("v7.0", 32, 4096),
    # the 14B shapes are written with zero matrices as holes in a sparse file (memory and load
    # figures only: 28 GB that take no disk; generation speed on zeros means nothing)
    "v6-14b": ("v6.0", 61, 4096),
    "v7-14b": ("v7.0", 61, 4096),
}


def checkpoint(shape: str, cache: Path) -> Path:
    arch, n_layer, n_embd = SHAPES[shape]
    path = cache / f"bench-{shape}.pth"
    if not path.exists():
        from roost.engine.synthetic import save_checkpoint

        print(f"building {path} ...", file=sys.stderr, flush=True)
        tmp = path.with_suffix(".tmp.pth")
        if shape.endswith("14b"):
            sparse_checkpoint(tmp, arch, n_layer, n_embd)
        else:
            save_checkpoint(tmp, arch, n_layer=n_layer, n_embd=n_embd, seed=1)
        tmp.rename(path)
    return path


def sparse_checkpoint(path: Path, arch: str, n_layer: int, n_embd: int) -> None:
    """An official-layout checkpoint whose embedding, head and big matrices are all zeros, written
    as holes in a sparse file (small vectors random): a 14B model's file on a small disk, for
    memory and load-time figures. Each matrix is its own storage, as in official files."""
    import numpy as np
    import torch

    from roost.engine.checkpoint import model_shapes, official_config
    from roost.engine.memory import BIG_SUFFIXES
    from roost.engine.synthetic import WORLD_VOCAB

    cfg = official_config(arch, n_layer, n_embd, WORLD_VOCAB, 64)
    scratch = path.with_suffix(".zeros")
    biggest = max(cfg.vocab_size, cfg.n_ffn) * n_embd
    with open(scratch, "wb") as f:
        f.truncate(biggest * 2)  # a hole every zero matrix maps
    g = torch.Generator().manual_seed(1)
    weights = {}
    for key, shape in model_shapes(cfg, official_lora=True).items():
        if shape is None:
            continue
        n = int(np.prod(shape))
        if key in ("emb.weight", "head.weight") or key.endswith(BIG_SUFFIXES):
            weights[key] = torch.from_file(str(scratch), shared=True, size=n, dtype=torch.bfloat16).view(shape)
        else:
            weights[key] = (torch.rand(shape, generator=g) * 0.5).to(torch.bfloat16)

    class HoleWriter:  # torch.save's file: runs of zeros become holes
        def __init__(self, f):
            self.f = f

        def write(self, b) -> int:
            view = memoryview(b)
            if view.nbytes >= 1 << 20 and not np.frombuffer(view, np.uint8).any():
                self.f.seek(view.nbytes, 1)
            else:
                self.f.write(view)
            return view.nbytes

        def flush(self) -> None:
            self.f.flush()

    try:
        with open(path, "wb") as f:
            torch.save(weights, HoleWriter(f))
            f.truncate()  # a file that ends in a hole
    finally:
        scratch.unlink()


def worker(args: argparse.Namespace) -> None:
    """Runs inside the child process: load, prefill, generate; print one JSON line."""
    import torch

    _reset_peak_rss()
    torch.set_num_threads(args.threads)
    tokens = torch.randint(0, 65536, (args.prefill,), generator=torch.Generator().manual_seed(0)).tolist()
    t0 = time.perf_counter()
    if args.impl == "roost":
        from roost import engine
        options = engine.LoadOptions.from_env(weight_cache=args.weight_cache or None)
        model = engine.load_model(args.model, args.strategy, options=options)
        if args.load_only:  # a load with the weight cache: its time and how many matrices it read
            print(json.dumps({"load_s": time.perf_counter() - t0, "cached": model.cached_matrices,
                              "peak_rss": _peak_rss()}))
            return

        def forward(toks, state):
            return model.forward(toks, state)
    else:
        from rwkv.model import RWKV

        name = args.model[:-4]
        model = RWKV(name, args.strategy) if os.environ.get("RWKV_V7_ON") == "1" else \
            RWKV(name, args.strategy, verbose=False)

        def forward(toks, state):
            return model.forward(toks, state)
    load_s = time.perf_counter() - t0
    rss_after_load = _peak_rss()

    forward(tokens[:16], None)  # warm-up
    t0 = time.perf_counter()
    state = None
    for c in range(0, len(tokens), args.chunk):  # the reference wants bounded chunks too
        _, state = forward(tokens[c:c + args.chunk], state)
    prefill_s = time.perf_counter() - t0

    times = []
    token = tokens[-1]
    for _ in range(args.gen):
        t0 = time.perf_counter()
        logits, state = forward([token], state)
        token = int(logits.argmax())
        times.append(time.perf_counter() - t0)
    print(json.dumps({
        "load_s": load_s, "prefill_tps": len(tokens) / prefill_s,
        "gen_tps": 1 / statistics.median(times[1:] or times),
        "peak_rss": _peak_rss(),
        "rss_after_load": rss_after_load,
    }))


def _reset_peak_rss() -> None:
    """A child process starts with its parent's RSS high-water mark (Linux): reset it."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _peak_rss() -> int:
    """This process's RSS high-water mark in bytes (VmHWM; ru_maxrss where /proc is missing)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def run(impl: str, strategy: str, model: Path, args, weight_cache: str = "") -> dict | None:
    env = dict(os.environ, RWKV_JIT_ON="1", RWKV_CUDA_ON="0", OMP_NUM_THREADS=str(args.threads))
    if impl == "reference" and SHAPES[args.shape][0] == "v7.0":
        env["RWKV_V7_ON"] = "1"
    cmd = [sys.executable, __file__, "--worker", "--impl", impl, "--strategy", strategy,
           "--model", str(model), "--gen", str(args.gen), "--prefill", str(args.prefill),
           "--threads", str(args.threads), "--chunk", str(args.chunk), "--shape", args.shape]
    cmd += ["--weight-cache", weight_cache] + (["--load-only"] if weight_cache else [])
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        print(f"{impl} '{strategy}' failed: {r.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
        return None
    return json.loads(r.stdout.strip().splitlines()[-1])


def read_bandwidth_gbs() -> float:
    """The machine's memory read bandwidth: the median of 7 passes of ``torch.sum`` over 1 GiB of
    float32 (with the benchmark's thread count), as the RWKV-7 speed issue defines it."""
    import torch

    x = torch.ones(256 * 1024 * 1024)
    times = []
    for _ in range(7):
        t0 = time.perf_counter()
        x.sum()
        times.append(time.perf_counter() - t0)
    return x.numel() * 4 / statistics.median(times) / 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="v6-1.6b", choices=sorted(SHAPES))
    ap.add_argument("--strategies", default="cpu fp32,cpu bf16,cpu int8")
    ap.add_argument("--reference-strategies", default=None,
                    help="the reference's strategies (default: the same; int8 maps to cpu fp32i8)")
    ap.add_argument("--no-reference", action="store_true")
    ap.add_argument("--gen", type=int, default=32)
    ap.add_argument("--prefill", type=int, default=512)
    ap.add_argument("--chunk", type=int, default=128)
    ap.add_argument("--repeat", type=int, default=1, help="runs per side, alternating; medians are printed")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "roost-bench"))
    ap.add_argument("--second-load", action="store_true",
                    help="also time loads with the converted-weights cache (int8/int4): the one that fills "
                         "it and the second, against reading the model file once")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--load-only", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--weight-cache", default="", help=argparse.SUPPRESS)
    ap.add_argument("--impl", help=argparse.SUPPRESS)
    ap.add_argument("--strategy", help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args)

    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    model = checkpoint(args.shape, cache)
    bw = read_bandwidth_gbs()
    print(f"shape {args.shape} ({model.stat().st_size / 1e9:.2f} GB file), {args.threads} threads, "
          f"read bandwidth {bw:.1f} GB/s")
    header = f"{'strategy':<14} {'impl':<10} {'gen tok/s':>9} {'prefill tok/s':>13} {'load s':>7} {'peak RSS GB':>11}"
    print(header)
    print("-" * len(header))
    results: dict[str, dict] = {}
    for strategy in [s.strip() for s in args.strategies.split(",")]:
        ref_strategy = {"cpu int8": "cpu bf16", "cpu fp32i8": "cpu bf16"}.get(strategy, strategy)
        ours_runs, ref_runs = [], []
        for _ in range(args.repeat):  # alternate, so that a noisy neighbour hits both sides alike
            ours_runs.append(run("roost", strategy, model, args))
            if not args.no_reference:
                ref_runs.append(run("reference", ref_strategy, model, args))
        ours, ref = _median_run(ours_runs), _median_run(ref_runs)
        for name, r in (("roost", ours), ("reference", ref)):
            if r:
                print(f"{strategy:<14} {name:<10} {r['gen_tps']:9.2f} {r['prefill_tps']:13.1f} "
                      f"{r['load_s']:7.1f} {r['peak_rss'] / 1e9:11.2f}")
        if args.repeat > 1:  # the spread behind the medians
            for name, runs in (("roost", ours_runs), ("reference", ref_runs)):
                gens = sorted(r["gen_tps"] for r in runs if r)
                if gens:
                    print(f"{'':<14} {name:<10} gen tok/s per run: " + ", ".join(f"{g:.2f}" for g in gens))
        if ours and ref:
            print(f"{'':<14} {'ratio':<10} {ours['gen_tps'] / ref['gen_tps']:8.2f}x "
                  f"{ours['prefill_tps'] / ref['prefill_tps']:12.2f}x {ref['load_s'] / ours['load_s']:6.2f}x "
                  f"{ours['peak_rss'] / ref['peak_rss']:10.2f}x  (reference: '{ref_strategy}')")
        if ours:
            results[strategy] = ours
        if ours and args.second_load and ("int" in strategy or "i8" in strategy or "i4" in strategy):
            with tempfile.TemporaryDirectory(dir=cache) as folder:
                read_s = _read_seconds(model)
                fill = run("roost", strategy, model, args, weight_cache=folder)
                second = run("roost", strategy, model, args, weight_cache=folder)
                if fill and second:
                    print(f"{'':<14} loads: reading the file {read_s:.1f} s; first load {ours['load_s']:.1f} s, "
                          f"filling the weight cache {fill['load_s']:.1f} s, second load {second['load_s']:.1f} s "
                          f"({second['cached']} matrices from the cache) = {second['load_s'] / read_s:.2f}x "
                          f"the file read; peak RSS {second['peak_rss'] / 1e9:.2f} GB")
        quant = "i4" if "int4" in strategy or "i4" in strategy else "i8" if "int8" in strategy or "i8" in strategy else ""
        if ours and quant:
            # the bound: every matrix but the embedding read once per token at the read bandwidth,
            # the higher of the medians taken before the runs and after this one
            bw_after = read_bandwidth_gbs()
            high = max(bw, bw_after)
            per_weight = 1.0 if quant == "i8" else _int4_bytes_per_weight(model)
            bound = high * 1e9 / _weight_bytes_per_token(model, per_weight)
            print(f"{'':<14} bandwidth bound {bound:.2f} tok/s ({per_weight:.3f} bytes per weight; read "
                  f"{bw:.1f} / {bw_after:.1f} GB/s before / after): Roost reaches {ours['gen_tps'] / bound:.2f} of it")
            base = next((r for k, r in results.items() if "int8" in k or k.endswith("i8")), None)
            if quant == "i4" and base:
                print(f"{'':<14} int4 / int8: generation {ours['gen_tps'] / base['gen_tps']:.2f}x, prefill "
                      f"{ours['prefill_tps'] / base['prefill_tps']:.2f}x, load {ours['load_s'] / base['load_s']:.2f}x, "
                      f"peak RSS {ours['peak_rss'] / base['peak_rss']:.2f}x")


def _read_seconds(path: Path) -> float:
    """Seconds to read the model file once, 16 MB at a time (from the disk or the page cache, as
    the load after it will find it)."""
    t0 = time.perf_counter()
    with open(path, "rb", buffering=0) as f:
        buf = bytearray(16 << 20)
        while f.readinto(buf):
            pass
    return time.perf_counter() - t0


def _median_run(runs: list) -> dict | None:
    """Each figure's median over the runs that finished (None if none did)."""
    runs = [r for r in runs if r]
    if not runs:
        return None
    return {key: statistics.median(r[key] for r in runs) for key in runs[0]}


def _matrices(model: Path) -> list[tuple[str, int]]:
    """(key, number of weights) of every matrix but the embedding: what a token reads."""
    import math

    from roost.engine.checkpoint import open_checkpoint

    t, _ = open_checkpoint(model)
    try:
        return [(key, math.prod(t.shape(key))) for key in t if key != "emb.weight" and len(t.shape(key)) >= 2]
    finally:
        t.close()


def _int4_bytes_per_weight(model: Path) -> float:
    """Average bytes per matrix weight of ``cpu int4``: 4-bit groups with a bf16 scale and zero
    point, block 0 and the head in int8 (engine.model.int4_precision)."""
    from roost.engine.int4 import INT4_GROUP
    from roost.engine.memory import BIG_SUFFIXES
    from roost.engine.model import int4_precision

    def four(key: str) -> bool:
        return key.startswith("blocks.") and key.endswith(BIG_SUFFIXES) \
            and int4_precision(int(key.split(".")[1])) == "int4"

    mats = _matrices(model)
    weighted = sum(n * (0.5 + 4 / INT4_GROUP if four(key) else 1.0) for key, n in mats)
    return weighted / sum(n for _, n in mats)


def _weight_bytes_per_token(model: Path, bytes_per_weight: float) -> float:
    """Bytes of weights read per generated token: every matrix but the embedding."""
    return sum(n for _, n in _matrices(model)) * bytes_per_weight


if __name__ == "__main__":
    main()
