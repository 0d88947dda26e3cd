"""Every RWKV version x checkpoint dtype x CPU strategy loads, and computes what `cpu fp32` computes.

Strategies that convert weights (int8, int4, the mixed ones) run on both CPU paths: Roost's compiled
kernels (engine.native) and the PyTorch path. Each load runs in a child process
(tests/engine/load_worker.py): a load that crashes the process
(a float32 checkpoint once did, in cpu int8 / int4: the int8 conversion divided the rows in place,
and for float32 rows those were the checkpoint's read-only mapping) fails its own test, named,
with the child's faulthandler trace, and the next case gets a fresh child.

The yardstick is `cpu fp32` on plain (unpacked) weights of the same file; tolerances are the
median over positions of the largest logit difference relative to the largest logit, as in
test_strategies_quality.py (the largest measured on these 2 x 128 models, every version and dtype:
fp32 packed 3e-7, bf16 0.0054, int8 0.015, int4 0.075). With the converted-weights cache each case loads twice: the first load fills the
cache, the second maps it, and both compute the same logits.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from roost.engine.int4 import int4_works
from tests.conftest import ARCHS

WORKER = Path(__file__).with_name("load_worker.py")
TOKENS = torch.randint(0, 256, (24,), generator=torch.Generator().manual_seed(3)).tolist()
ONE = [5, 200, 17, 99]  # then one token at a time
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# strategy, the most relative logit error allowed against cpu fp32, whether it converts weights
# that the cache keeps (then the case is run with and without the cache)
STRATEGIES = [
    ("cpu fp32", 1e-5, False),
    ("cpu bf16", 0.02, False),
    ("cpu int8", 0.04, True),
    ("cpu int4", 0.12, True),
    ("cpu fp32i8 *2 -> cpu bf16", 0.04, True),  # mixed stages: the blocks in int8, the head in bf16
    ("cpu int4 *2 -> cpu fp32", 0.12, True),  # both blocks in 4 bits, the head in float32
]
# strategies that convert weights run on both CPU paths: Roost's compiled kernels (where this
# install has them) and the PyTorch path, the reference
CASES = [pytest.param(arch, dt, s, tol, cache, native,
                      id=f"{arch}-{dt}-{s.replace(' ', '')}{'-cache' if cache else ''}{'' if native else '-pytorch'}")
         for arch in ARCHS for dt in DTYPES for s, tol, caches in STRATEGIES
         for cache in ([False, True] if caches else [False]) for native in ([True, False] if caches else [True])]


class Loader:
    """The child process, started again after a crash."""

    def __init__(self):
        self.proc: subprocess.Popen | None = None

    def load(self, what: str, **req) -> dict:
        if self.proc is None or self.proc.poll() is not None:
            self.proc = subprocess.Popen([sys.executable, str(WORKER)], stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if line:
            answer = json.loads(line)
            assert answer["ok"], f"{what}: {answer['error']}"
            return {**answer, **torch.load(req["out"])}
        code = self.proc.wait(timeout=60)
        err = self.proc.stderr.read()
        self.proc = None
        how = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
        pytest.fail(f"{what} crashed the loading process ({how}):\n{err[-3000:]}", pytrace=False)

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(timeout=60)


@pytest.fixture(scope="module")
def loader():
    lo = Loader()
    yield lo
    lo.close()


@pytest.fixture(scope="module")
def reference(loader, make_checkpoint, tmp_path_factory):
    """cpu fp32 logits of each checkpoint, on plain weights (no oneDNN packing)."""
    done: dict = {}
    folder = tmp_path_factory.mktemp("reference")

    def get(path: Path) -> dict:
        if path not in done:
            done[path] = loader.load(f"{path.name} as cpu fp32 (plain weights)", path=str(path), strategy="cpu fp32",
                                     tokens=TOKENS, one=ONE, out=str(folder / f"{len(done)}.pt"), pack=False)
        return done[path]

    return get


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().amax(-1) / b.abs().amax(-1)).median().item()


@pytest.mark.parametrize("arch, dtype, strategy, tol, cache, native", CASES)
def test_every_checkpoint_dtype_loads_in_every_cpu_strategy(loader, reference, make_checkpoint, tmp_path,
                                                            arch, dtype, strategy, tol, cache, native):
    from roost.engine import native as kernels

    if "int4" in strategy and not native and not int4_works():
        pytest.skip("this PyTorch has no working 4-bit CPU kernel")
    if native and "int" in strategy and not kernels.available():
        pytest.skip(f"no compiled kernels: {kernels.unavailable_reason()}")
    path = make_checkpoint(arch, n_layer=2, n_embd=128, vocab=256, dtype=DTYPES[dtype], seed=7)
    ref = reference(path)
    what = (f"{arch} {dtype} checkpoint as '{strategy}'" + (" with the weight cache" if cache else "")
            + ("" if native else " on the PyTorch path"))
    req = dict(path=str(path), strategy=strategy, tokens=TOKENS, one=ONE, native=native)
    loads = [loader.load(what, **req, out=str(tmp_path / "a.pt"),
                         cache=str(tmp_path / "cache") if cache else None)]
    if cache:
        loads.append(loader.load(what + " (second load)", **req, out=str(tmp_path / "b.pt"), cache=str(tmp_path / "cache")))
        assert loads[0]["cached"] == 0 and loads[1]["cached"] > 0  # the second load read what the first kept
        for k in ("seq", "one"):
            assert torch.equal(loads[0][k], loads[1][k])
    for got in loads:
        for k in ("seq", "one"):
            assert got[k].shape == ref[k].shape and got[k].dtype == torch.float32
            assert torch.isfinite(got[k]).all(), f"{what}: non-finite logits"
            assert rel_err(got[k], ref[k]) <= tol, f"{what}: {k} logits differ from cpu fp32 by {rel_err(got[k], ref[k]):.4f}"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds each mapping's file through /proc")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("arch", ARCHS)
def test_no_load_writes_into_the_files_it_maps(monkeypatch, make_checkpoint, tmp_path, arch, dtype):
    """The checkpoint and the converted-weights cache are mapped read-only, where a write is a
    crash. Here they are mapped privately instead (a write lands in this process's copy of the
    page), their pages never dropped (a dropped private page forgets what was written), and after
    every strategy has loaded and run, twice with the cache, each mapping still holds its file's
    bytes. Fails on any conversion that works in place on a view of a file."""
    import mmap
    import os
    import types

    from roost.engine import checkpoint, load_model, memory, weight_cache

    mappings = []

    def private(fileno, length, access=None, **kw):
        m = mmap.mmap(fileno, length, access=mmap.ACCESS_COPY)
        mappings.append((m, Path(os.readlink(f"/proc/self/fd/{fileno}"))))
        return m

    proxy = types.SimpleNamespace(**{k: getattr(mmap, k) for k in dir(mmap) if not k.startswith("_")})
    proxy.mmap = private
    for module in (checkpoint, weight_cache):
        monkeypatch.setattr(module, "mmap", proxy)
    monkeypatch.setattr(checkpoint.TensorFile, "drop_pages", lambda self: None)
    monkeypatch.setattr(memory, "release_pages", lambda tensor: None)
    monkeypatch.setattr(weight_cache.Entry, "_advise", lambda self, *a, **k: None)
    # with a state-tuned starting state where the version has one (converted at load as well)
    path = make_checkpoint(arch, n_layer=2, n_embd=128, vocab=256, dtype=DTYPES[dtype], seed=7, time_state=True)
    for strategy, _, caches in STRATEGIES:
        for native in ([True, False] if caches else [True]):  # the compiled kernels, the PyTorch path
            if "int4" in strategy and not native and not int4_works():
                continue
            for cache in ([None, tmp_path / "cache", tmp_path / "cache"] if caches else [None]):
                model = load_model(path, strategy, weight_cache=str(cache) if cache else None, native=native)
                model.forward(TOKENS[:8], model.start_state())
                del model
    files = {p.name for _, p in mappings}
    assert path.name in files and (not int4_works() or any(p.suffix != path.suffix for _, p in mappings))
    for m, p in mappings:
        assert m[:] == p.read_bytes(), f"loading wrote into {p.name} through its mapping"
