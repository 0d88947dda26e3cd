"""The int8 kernels: each gives the product with the dequantised weights, to its stated precision."""

import pytest
import torch

from roost.engine.cpu import cpu_has_vnni
from roost.engine.int8 import Int8Linear, _fbgemm_works, activation_levels, split_linear

needs_fbgemm = pytest.mark.skipif(not _fbgemm_works(), reason="no fbgemm on this CPU")
# 127 activation levels need AVX512-VNNI: without it fbgemm's u8 x s8 pairs saturate int16 there
LEVELS = [pytest.param(127, marks=pytest.mark.skipif(not cpu_has_vnni(), reason="needs AVX512-VNNI")), 63]


def _weight(out=96, k=80, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(out, k, generator=g)


def _rows(m, k=80, seed=1):
    """Rows of very different sizes, with an outlier each: per-row scaling must hold."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=g) * torch.logspace(-3, 2, m).unsqueeze(1)
    x[:, 7] *= 30
    return x


def _rel(got, want):
    return float((got.double() - want).norm(dim=-1).max() / want.norm(dim=-1).min())


@needs_fbgemm
@pytest.mark.parametrize("levels", LEVELS)
@pytest.mark.parametrize("m", [1, 3, 128])
def test_split_activations_give_weight_only_precision(levels, m):
    lin = Int8Linear(_weight(), kernel="fbgemm")
    x = _rows(m)
    exact = (x.double() @ lin.rows(torch.arange(96)).double().T)  # the dequantised weights, float64
    got = split_linear(x, lin.packed, levels)
    # per row: error relative to that row's own size, whatever the other rows' sizes
    err = ((got.double() - exact).norm(dim=-1) / exact.norm(dim=-1)).max()
    assert err < (2e-4 if levels == 127 else 8e-4)
    assert got.dtype == torch.float32 and got.shape == (m, 96)


@needs_fbgemm
def test_split_beats_one_8bit_row_and_bf16_activations():
    w = _weight()
    x = _rows(1)
    precise, dynamic = Int8Linear(w, kernel="fbgemm"), Int8Linear(w, kernel="fbgemm-dynamic")
    exact = x.double() @ precise.rows(torch.arange(96)).double().T
    bf16 = (x.bfloat16().double() @ precise.rows(torch.arange(96)).double().T)
    # the split's activation error goes as 1/L^2: 4x larger with 63 levels (CPUs without VNNI)
    margin = 10 if activation_levels() == 127 else 3
    assert _rel(precise(x), exact) * margin < _rel(dynamic(x), exact)
    assert _rel(precise(x), exact) * margin < _rel(bf16, exact)
    assert precise.precise_output and not dynamic.precise_output


@needs_fbgemm
def test_split_handles_zero_rows_and_non_finite_input():
    lin = Int8Linear(_weight(), kernel="fbgemm")
    x = torch.zeros(2, 80)
    x[1, 3] = 1.0
    y = lin(x)
    assert torch.equal(y[0], torch.zeros(96)) and torch.isfinite(y).all()
    x[1, 4] = float("inf")
    assert not torch.isfinite(lin(x)[1]).any() and torch.equal(lin(x)[0], torch.zeros(96))
    assert torch.isnan(lin(x[1:] * float("nan"))).all()


@pytest.mark.parametrize("kernel", ["fbgemm", "fbgemm-dynamic", "int8pack", "dequant"])
@pytest.mark.parametrize("m", [1, 16])
def test_every_kernel_multiplies_by_the_dequantised_weight(kernel, m):
    if kernel.startswith("fbgemm") and not _fbgemm_works():
        pytest.skip("no fbgemm on this CPU")
    if kernel == "int8pack" and not hasattr(torch, "_weight_int8pack_mm"):
        pytest.skip("no _weight_int8pack_mm in this torch")
    lin = Int8Linear(_weight(), kernel=kernel)
    assert lin.kernel == kernel
    x = torch.randn(m, 80, generator=torch.Generator().manual_seed(2))
    exact = x.double() @ lin.rows(torch.arange(96)).double().T
    tol = {"fbgemm": 1e-3, "fbgemm-dynamic": 0.03, "int8pack": 0.01, "dequant": 0.01}[kernel]
    assert _rel(lin(x), exact) < tol
    assert lin(x.unsqueeze(0)).shape == (1, m, 96)  # leading dimensions kept


def _packing_threads() -> list:
    import threading

    return [t for t in threading.enumerate() if t.name.startswith("roost-pack")]


@pytest.mark.skipif(not _fbgemm_works(), reason="packing is fbgemm's (x86)")
def test_packing_beside_the_load_gives_the_same_model_and_leaves_no_thread(make_checkpoint, monkeypatch):
    """fbgemm's packing runs on packer threads while the load goes on (a second load of a 1.5B
    int8 model from the cache: 6.9 -> 4.4 s); the model is the same as packed on the loading
    thread, the head (packed first, in blocks) included, and the threads end with the load."""
    import roost.engine.model as em
    from roost.engine import load_model

    path = make_checkpoint("v6.0", n_layer=2, n_embd=256, seed=9)
    monkeypatch.setattr(Int8Linear, "BLOCK", 1 << 22)  # the head (65536 x 256) in 4 blocks
    packed = load_model(path, "cpu int8", native=False)  # (fbgemm's packing: the PyTorch path)
    assert not _packing_threads()
    head = packed._w["head.weight"]
    assert isinstance(head.packed, list) and len(head.packed) == 4
    monkeypatch.setattr(em, "Packer", lambda: None)
    serial = load_model(path, "cpu int8", native=False)
    tokens = [5, 400, 3, 9000]
    assert torch.equal(packed.forward(tokens)[0], serial.forward(tokens)[0])


@pytest.mark.skipif(not _fbgemm_works(), reason="packing is fbgemm's (x86)")
def test_a_packing_failure_fails_the_load_and_leaves_no_thread(make_checkpoint, monkeypatch):
    import roost.engine.int8 as el
    from roost.engine import load_model

    calls = []
    real = el._prepack

    def failing(q, scale, done=None):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("out of memory while packing")
        return real(q, scale, done)

    monkeypatch.setattr(el, "_prepack", failing)
    with pytest.raises(RuntimeError, match="out of memory while packing"):
        load_model(make_checkpoint("v6.0", n_layer=2, n_embd=256, seed=9), "cpu int8", native=False)
    assert not _packing_threads()



def _blocked(out, seed):
    """An fbgemm weight packed as two blocks of rows (as a big head is)."""
    from roost.engine.int8 import quantize_rows

    w = _weight(out, seed=seed)
    half = out // 2
    return Int8Linear.from_row_blocks([quantize_rows(w[:half], "cpu"), quantize_rows(w[half:], "cpu")], (out, 80),
                                      kernel="fbgemm")


@needs_fbgemm
@pytest.mark.parametrize("m", [1, 5])
@pytest.mark.parametrize("stacked", [True, False])
def test_linear_many_gives_each_product(m, stacked):
    """Several products of one layer at once: the same values as one at a time, whatever the mix
    of kernels and output widths (blocks of rows, a dynamic kernel, a float weight)."""
    from roost.engine.linear import linear, linear_many

    ws = [Int8Linear(_weight(96, seed=2), kernel="fbgemm"), _blocked(64, 3),
          Int8Linear(_weight(96, seed=4), kernel="fbgemm-dynamic"), _weight(96, seed=5),
          Int8Linear(_weight(96, seed=6), kernel="fbgemm")]
    assert isinstance(ws[1].packed, list)
    xs = torch.stack([_rows(m, seed=10 + i) for i in range(len(ws))])
    got = linear_many(xs if stacked else list(xs), ws)
    for x, w, y in zip(xs, ws, got):
        want = linear(x, w)
        assert y.shape == want.shape == (m, w.shape[0])
        torch.testing.assert_close(y, want, rtol=1e-5, atol=1e-5 * float(want.abs().max()))


@needs_fbgemm
def test_linear_many_splits_activations_once():
    """The point of linear_many: four weight-only products of one token take one set of small
    operations around the four kernel calls, not four (each costs ~5-10 us on one token)."""
    from roost.engine.linear import linear, linear_many

    ws = [Int8Linear(_weight(96, seed=s), kernel="fbgemm") for s in range(4)]
    xs = torch.stack([_rows(1, seed=s) for s in range(4)])

    one_by_one = _torch_calls(lambda: [linear(x, w) for x, w in zip(xs, ws)])
    together = _torch_calls(lambda: linear_many(xs, ws))
    assert together < 0.6 * one_by_one, (together, one_by_one)


@needs_fbgemm
@pytest.mark.parametrize("arch, budget", [("v4", 625), ("v5.2", 610), ("v6.0", 725), ("v7.0", 735)])
def test_a_token_keeps_to_its_small_operations(make_checkpoint, monkeypatch, arch, budget):
    """Beyond reading the weights, what a `cpu int8` token costs is mostly the dispatch of its
    small operations (thousands a token, ~2-5 us each): one token of a 4-layer model keeps to a
    budget of torch calls, ~8% above what it makes now (every matrix at weight-only precision, as
    on CPUs without VNNI; before the last trims: v4 683, v5.2 687, v6 811, v7 829)."""
    import roost.engine.model as em
    from roost.engine import load_model

    monkeypatch.setattr(em, "cpu_has_vnni", lambda: False)  # the same kernels on every x86 CPU
    model = load_model(make_checkpoint(arch, n_layer=4, n_embd=256, seed=3), "cpu int8")
    _, state = model.forward([1, 2])
    assert _torch_calls(lambda: model.forward([3], state)) <= budget


def _torch_calls(f) -> int:
    """How many torch functions and methods ``f()`` calls (attribute reads such as shape aside)."""
    from torch.overrides import TorchFunctionMode

    class Count(TorchFunctionMode):
        n = 0

        def __torch_function__(self, func, types, args=(), kwargs=None):
            Count.n += getattr(func, "__name__", "") != "__get__"
            return func(*args, **(kwargs or {}))

    with Count():
        f()
    return Count.n
