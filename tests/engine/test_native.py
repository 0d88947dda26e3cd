"""Roost's compiled CPU kernels (engine/csrc/native.cpp through roost.engine.native) against the same
arithmetic in torch, on every instruction set this CPU can run; and the PyTorch path when they are
missing."""

from __future__ import annotations

import pytest
import torch

from roost.engine import load_model, native

needs_kernels = pytest.mark.skipif(not native.available(), reason=f"no compiled kernels: {native.unavailable_reason()}")


def isas() -> list[int]:
    """The instruction sets this CPU runs (the portable C++ one always)."""
    if not native.available():
        return []
    best = native.use_isa(-1)
    found = sorted({native.use_isa(code) for code in (0, 1, 2, 3, 4)})
    native.use_isa(-1)
    assert best == max(found)
    return found


@pytest.fixture
def each_isa(request):
    code = request.param
    assert native.use_isa(code) == code
    yield code
    native.use_isa(-1)


@pytest.fixture
def threads():
    yield native.set_threads
    native.set_threads(None)


@needs_kernels
@pytest.mark.parametrize("each_isa", isas(), indirect=True, ids=lambda c: native.ISAS[c])
@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("rows, cols, m", [(37, 64, 1), (64, 192, 3), (130, 256, 8), (5, 128, 2), (70, 128, 7), (9, 64, 6)])
def test_products_compute_what_the_blocks_stand_for(each_isa, bits, rows, cols, m):
    gen = torch.Generator().manual_seed(rows + cols)
    w = torch.randn(rows, cols, generator=gen) * 0.05
    x = torch.randn(m, cols, generator=gen)
    x[0, :32] = 0.0  # a block of zeros has scale 0
    lin = native.BlockLinear.from_weight(bits, w)
    want = native.reference_matmul(x, lin.dequantized())
    torch.testing.assert_close(lin(x), want, rtol=1e-4, atol=1e-4)
    # and the blocks stand for the weight: q8 within half a step of each block's scale, q4 (a fitted
    # scale and offset, the block's range not always inside its 16 levels) within a step and a half
    step = lin.d.float().abs().repeat_interleave(32, dim=1)
    err = (lin.dequantized() - w).abs()
    assert bool((err <= step * (0.5 if bits == 8 else 1.5) * (1 + 1e-3) + 1e-7).all())


@needs_kernels
@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_every_instruction_set_makes_the_same_blocks_and_products(bits, dtype):
    # 320 columns: 10 blocks a row (the vectorised 4-bit fit takes 8 at once, the last 2 one by one);
    # constant blocks and a block of zeros (no spread to fit)
    w = torch.randn(48, 320) * 0.1
    w[3, :32], w[5, 64:96], w[7, 288:] = 0.25, 0.0, -1e-3
    w = w.to(dtype)
    x = torch.randn(4, 320)
    x[1, 32:64] = 0.0  # (activations: a block of zeros, one whose values are halves of its steps)
    x[2, :32] = torch.arange(32) * (2.0 / 127) - 0.5 / 127
    got = {}
    for code in isas():
        native.use_isa(code)
        lin = native.BlockLinear.from_weight(bits, w)
        got[code] = (lin.q.clone(), lin.d.clone(), None if lin.m is None else lin.m.clone(), lin(x))
    native.use_isa(-1)
    first = got[min(got)]
    for q, d, m, y in got.values():
        assert torch.equal(q, first[0]) and torch.equal(d, first[1])
        assert (m is None and first[2] is None) or torch.equal(m, first[2])
        torch.testing.assert_close(y, first[3], rtol=1e-5, atol=1e-5)


@needs_kernels
@pytest.mark.parametrize("n", [2, 3, 5])
def test_the_kernels_threads_compute_the_same_with_more_threads_than_cores(n):
    """Products on more threads than cores, many short jobs back to back (the layer step's own
    pool: tests/engine/test_fused.py)."""
    w = torch.randn(301, 256) * 0.05
    xs = [torch.randn(m, 256) for m in (1, 3, 8)]
    lins = [native.BlockLinear.from_weight(b, w) for b in (8, 4)]
    want = [[native.reference_matmul(x, lin.dequantized()) for x in xs] for lin in lins]
    try:
        native.set_threads(n)
        for _ in range(200):  # many short jobs back to back
            for lin, ys in zip(lins, want):
                for x, y in zip(xs, ys):
                    torch.testing.assert_close(lin(x), y, rtol=1e-4, atol=1e-4)
    finally:
        native.set_threads(None)


@needs_kernels
@pytest.mark.parametrize("bits", [8, 4])
def test_a_source_in_any_float_type_is_read_and_never_written(bits):
    w = torch.randn(16, 128) * 0.2
    before = w.clone()
    blocks = native.quantize(bits, w)
    assert torch.equal(w, before)
    for dtype in (torch.bfloat16, torch.float16):
        low = w.to(dtype)
        got, want = native.quantize(bits, low), native.quantize(bits, low.float())
        assert all((a is None and b is None) or torch.equal(a, b) for a, b in zip(got, want))
    assert blocks[0].shape == ((16, 128) if bits == 8 else (16, 64)) and blocks[1].shape == (16, 4)
    assert (blocks[2] is None) == (bits == 8) and (bits == 8 or blocks[2].shape == (16, 4))


@needs_kernels
@pytest.mark.parametrize("bits", [8, 4])
def test_converted_weights_ask_for_huge_pages_on_whole_2mb_pages_only(monkeypatch, bits):
    # a token streams every weight once: on 4 KB pages the page-table walks cost int4 ~15%
    calls = []
    monkeypatch.setattr(native, "_MADVISE", lambda addr, n, advice: calls.append((addr, n, advice)) or 0)
    w = torch.randn(1024, 4096) * 0.05
    lin = native.BlockLinear.from_weight(bits, w)
    assert len(calls) == 1
    addr, n, advice = calls[0]
    assert advice == native._MADV_HUGEPAGE and addr % (2 << 20) == 0 and n % (2 << 20) == 0 and n > 0
    parts = [t for t in (lin.q, lin.d, lin.m) if t is not None]
    assert lin.q.data_ptr() == addr  # (the values first, then the scales and offsets, one buffer)
    end = parts[-1].data_ptr() + parts[-1].nbytes
    assert addr + n <= end < addr + n + (2 << 20)
    x = torch.randn(2, 4096)
    torch.testing.assert_close(lin(x), native.BlockLinear(bits, *native.quantize(bits, w)[:2], (1024, 4096),
                                                          native.quantize(bits, w)[2])(x))
    calls.clear()
    native.BlockLinear.from_weight(bits, torch.randn(64, 128))  # (smaller than a huge page: nothing asked)
    assert calls == []


@needs_kernels
def test_more_threads_compute_the_same(threads):
    w = torch.randn(203, 512) * 0.05
    x = torch.randn(3, 512)
    threads(1)
    one = [native.BlockLinear.from_weight(b, w) for b in (8, 4)]
    y1 = [lin(x) for lin in one]
    threads(2)
    two = [native.BlockLinear.from_weight(b, w) for b in (8, 4)]
    for a, b, y in zip(one, two, y1):
        assert torch.equal(a.q, b.q) and torch.equal(a.d, b.d) and torch.equal(b(x), y)


@needs_kernels
@pytest.mark.parametrize("bits", [8, 4])
def test_prompt_chunks_and_the_heads_rows_use_the_same_weights(bits):
    """More rows than a kernel call takes go through torch on the dequantised weight (bf16 where the
    CPU multiplies it natively); the head's top rows are read back in float32."""
    w = torch.randn(100, 256) * 0.05
    lin = native.BlockLinear.from_weight(bits, w)
    x = torch.randn(40, 256)
    full = lin.dequantized()
    torch.testing.assert_close(lin(x), x @ full.t(), rtol=0.02, atol=0.02)
    idx = torch.tensor([[3, 99], [0, 50]])
    assert torch.equal(lin.rows(idx), full[idx])
    three = lin(x.reshape(4, 10, 256))  # any leading shape
    assert three.shape == (4, 10, 100)


@needs_kernels
@pytest.mark.parametrize("strategy", ["cpu int8", "cpu int4"])
def test_a_model_runs_on_the_kernels_and_a_second_load_converts_nothing(make_checkpoint, tmp_path, monkeypatch, strategy):
    path = make_checkpoint("v6.0", n_layer=2, n_embd=128)
    first = load_model(path, strategy, weight_cache=str(tmp_path))
    from roost.engine.arch.v6 import PACKED_LOW_RANK

    mats = [w for lw in first._layers for k, w in lw.items() if isinstance(w, native.BlockLinear)
            and k not in PACKED_LOW_RANK]
    assert len(mats) == 2 * 8 and isinstance(first._w["head.weight"], native.BlockLinear)
    # the low-rank matrices in q8 blocks too (converted at each load: they are small), for the layer step
    assert all(isinstance(lw[k], native.BlockLinear) and lw[k].bits == 8 for lw in first._layers for k in PACKED_LOW_RANK)
    assert {m.bits for m in mats} == ({8} if strategy == "cpu int8" else {4, 8})  # int4: block 0 in 8 bits

    def no_conversion(*a, **k):
        raise AssertionError("a matrix was converted again")

    monkeypatch.setattr(native, "quantize", no_conversion)
    second = load_model(path, strategy, weight_cache=str(tmp_path))
    assert second.cached_matrices == 2 * 8 + 1
    tokens = [1, 500, 7000]
    assert torch.equal(first.forward(tokens)[0], second.forward(tokens)[0])
    plain = load_model(path, strategy, native=False)  # the PyTorch path, kept apart in the cache too
    assert not any(isinstance(w, native.BlockLinear) for lw in plain._layers for w in lw.values())


def test_without_the_kernels_the_pytorch_path_runs_and_says_why(make_checkpoint, monkeypatch):
    from roost.engine.int8 import Int8Linear

    monkeypatch.setattr(native, "_load", lambda: (None, "the compiled kernels are not installed (test)"))
    assert not native.available() and native.unavailable_reason() == "the compiled kernels are not installed (test)"
    model = load_model(make_checkpoint("v7.0", n_layer=2, n_embd=128), "cpu int8")
    assert isinstance(model._w["head.weight"], Int8Linear)
    assert torch.isfinite(model.forward([1, 2, 3])[0]).all()


def test_a_damaged_or_foreign_library_is_not_used(monkeypatch, tmp_path):
    """A file that is no library, or one of another version, is refused with a sentence."""
    import importlib.util
    from types import SimpleNamespace

    fake = tmp_path / "_native.so"
    fake.write_bytes(b"not a library")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: SimpleNamespace(origin=str(fake)))
    native._load.cache_clear()
    try:
        lib, why = native._load()
        assert lib is None and why.startswith("the compiled kernels could not be loaded")
    finally:
        monkeypatch.undo()
        native._load.cache_clear()


@needs_kernels
def test_the_instruction_set_can_be_forced_for_benchmarks_and_a_wrong_one_is_refused(monkeypatch):
    import subprocess
    import sys

    code = "from roost.engine import native; print(native.available(), native.isa(), native.unavailable_reason())"
    env = dict(__import__("os").environ, ROOST_NATIVE_ISA="portable-c++")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.startswith("True portable C++")
    env["ROOST_NATIVE_ISA"] = "sse9"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.startswith("False") and "ROOST_NATIVE_ISA=sse9: not an instruction set this CPU runs (portable-c++" in out


def test_torchs_capability_cap_also_caps_what_the_engine_assumes_of_the_cpu():
    import subprocess
    import sys

    code = "from roost.engine.cpu import cpu_has_bf16, cpu_has_vnni; print(cpu_has_bf16(), cpu_has_vnni())"
    env = dict(__import__("os").environ, ATEN_CPU_CAPABILITY="avx2")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
