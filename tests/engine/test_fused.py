"""RWKV-7's and RWKV-6's whole-layer steps in the compiled kernels (roost.engine.fused) against
the reference layers in PyTorch (roost.engine.arch.v7.layer, v6.layer) on the same weights: one
token, several streams at once, whole generations; and where they are not used."""

from __future__ import annotations

import pytest
import torch

from roost.engine import load_model, native
from roost.engine.arch import v6, v7
from roost.engine.fused import V6Step, V7Step

needs_kernels = pytest.mark.skipif(not native.available(), reason=f"no compiled kernels: {native.unavailable_reason()}")


def _random_state(model, gen, batch: int | None = None):
    """A state as after some tokens (random, of the right scale), per layer."""
    out = []
    for att_x, s, ffn_x in model.zero_state().layers:
        lead = () if batch is None else (batch,)
        out.append((torch.randn(*lead, *att_x.shape, generator=gen), torch.randn(*lead, *s.shape, generator=gen) * 0.3,
                    torch.randn(*lead, *ffn_x.shape, generator=gen)))
    return out


def _close(got, want, what: str, tol: float = 2e-4):
    torch.testing.assert_close(got, want, rtol=tol, atol=tol, msg=lambda m: f"{what}: {m}")


@needs_kernels
@pytest.mark.parametrize("strategy", ["cpu int8", "cpu int4"])
@pytest.mark.parametrize("batch", [None, 3])
def test_each_layer_step_computes_what_the_reference_layer_does(make_checkpoint, monkeypatch, strategy, batch):
    # (the reference's batched low-rank products have more rows than the kernels take by default;
    # in the kernels too, the arithmetic is the same)
    monkeypatch.setattr(native, "SMALL_BATCH", 64)
    # 128 wide: layer 0's three low-rank pairs are 96 columns, padded to 128 for the blocks
    model = load_model(make_checkpoint("v7.0", n_layer=3, n_embd=128), strategy)
    steps = [lw.get("native.step") for lw in model._layers]
    # cpu int8 keeps RWKV-7's block 0 in bf16 (engine.model.keeps_bf16): that layer stays in PyTorch
    assert [s is not None for s in steps] == ([False, True, True] if strategy == "cpu int8" else [True] * 3)
    gen = torch.Generator().manual_seed(1)
    states = _random_state(model, gen, batch)
    x = torch.randn(batch or 1, model.n_embd, generator=gen)
    v_first = None
    for i, (lw, st) in enumerate(zip(model._layers, states)):
        want_x, want_st, want_v = v7.layer(x, lw, st, model.config, v_first)
        if steps[i] is not None:
            got_x, got_st, got_v = steps[i](x, st, v_first)
            _close(got_x, want_x, f"layer {i} output")
            for name, g, w in zip(("att_x", "state", "ffn_x"), got_st, want_st):
                assert g.shape == w.shape
                _close(g, w, f"layer {i} {name}")
            _close(got_v, want_v.reshape(got_v.shape), f"layer {i} v_first")
        x, v_first = want_x, want_v


@needs_kernels
@pytest.mark.parametrize("strategy", ["cpu int8", "cpu int4"])
@pytest.mark.parametrize("batch", [None, 3])
def test_each_rwkv6_layer_step_computes_what_the_reference_layer_does(make_checkpoint, monkeypatch, strategy, batch):
    monkeypatch.setattr(native, "SMALL_BATCH", 64)  # (as above: the reference's low-rank rows in the kernels)
    model = load_model(make_checkpoint("v6.0", n_layer=3, n_embd=128), strategy)
    steps = [lw.get("native.step") for lw in model._layers]
    assert all(isinstance(s, V6Step) for s in steps)
    gen = torch.Generator().manual_seed(3)
    states = _random_state(model, gen, batch)
    x = torch.randn(batch or 1, model.n_embd, generator=gen)
    for i, (lw, st) in enumerate(zip(model._layers, states)):
        want_x, want_st, _ = v6.layer(x, lw, st, model.config, None)
        got_x, got_st, carry = steps[i](x, st, None)
        assert carry is None
        _close(got_x, want_x, f"layer {i} output")
        for name, g, w in zip(("att_x", "state", "ffn_x"), got_st, want_st):
            assert g.shape == w.shape
            _close(g, w, f"layer {i} {name}")
        x = want_x


@needs_kernels
@pytest.mark.parametrize("version, strategy", [("v7.0", "cpu int8"), ("v7.0", "cpu int4"), ("v6.0", "cpu int4")])
def test_generation_and_batches_agree_with_and_without_the_step(make_checkpoint, version, strategy):
    path = make_checkpoint(version, n_layer=4, n_embd=256)
    fast, slow = load_model(path, strategy), load_model(path, strategy)
    for lw in slow._layers:
        lw.pop("native.step", None)
    assert any("native.step" in lw for lw in fast._layers)
    prompt = [11, 500, 7, 3000, 42]
    lf, sf = fast.forward(prompt)
    ls, ss = slow.forward(prompt)
    greedy_f, greedy_s = [], []
    for _ in range(12):  # greedy generation: the same tokens, the same states
        greedy_f.append(int(lf.argmax()))
        greedy_s.append(int(ls.argmax()))
        lf, sf = fast.forward([greedy_f[-1]], sf)
        ls, ss = slow.forward([greedy_s[-1]], ss)
    assert greedy_f == greedy_s
    # (rounding differences of ~1e-6 a step move an activation's 8-bit rounding now and then, and
    # a few values drift by some hundredths over 17 tokens: the states as a whole stay together)
    for layer_f, layer_s in zip(sf.layers, ss.layers):
        for a, b in zip(layer_f, layer_s):
            assert float((a - b).norm() / b.norm()) < 0.01
    if version == "v7.0" and strategy == "cpu int8":  # (its block 0 runs in PyTorch's bf16, whose batched rounding differs)
        return
    # three streams decoded together through the step give what each gives alone
    from roost.engine.model import BatchState

    starts = [fast.forward(p)[1] for p in ([1, 2], [3000], [9, 9, 9])]
    logits, batch = fast.forward_batch([5, 6, 7], BatchState.stack(starts))
    for b, (tok, st) in enumerate(zip([5, 6, 7], starts)):
        alone, after = fast.forward([tok], st)
        top = alone.topk(5).indices
        _close(logits[b][top], alone[top], f"stream {b} logits")
        for a, c in zip(batch.state(b).layers[-1], after.layers[-1]):
            _close(a, c, f"stream {b} state")


@needs_kernels
def test_no_step_without_the_kernels_or_for_other_versions(make_checkpoint):
    v5 = load_model(make_checkpoint("v5.2", n_layer=2, n_embd=128), "cpu int8")
    assert not any("native.step" in lw for lw in v5._layers)
    off6 = load_model(make_checkpoint("v6.0", n_layer=2, n_embd=128), "cpu int8", native=False)
    assert not any("native.step" in lw for lw in off6._layers)
    off = load_model(make_checkpoint("v7.0", n_layer=2, n_embd=128), "cpu int4", native=False)
    assert not any("native.step" in lw for lw in off._layers)
    fp32 = load_model(make_checkpoint("v7.0", n_layer=2, n_embd=128), "cpu fp32")
    assert not any("native.step" in lw for lw in fp32._layers)


@needs_kernels
@pytest.mark.parametrize("version, step, key", [("v7.0", V7Step, "att.output.weight"), ("v6.0", V6Step, "att.gate.weight")])
def test_a_layer_whose_matrices_are_not_all_in_blocks_gets_no_step(make_checkpoint, version, step, key):
    model = load_model(make_checkpoint(version, n_layer=2, n_embd=128), "cpu int8")
    lw = dict(model._layers[1])
    assert step.fits(lw, model.config)
    lw[key] = lw[key].dequantized()
    assert not step.fits(lw, model.config)


@needs_kernels
@pytest.mark.parametrize("on_openmp", [False, True], ids=["own-pool", "openmp"])
def test_the_step_computes_the_same_on_any_number_of_threads(make_checkpoint, on_openmp):
    """The step's products run on the kernels' own pool, whose threads claim chunks of each job: a
    thread that turns up late (more threads than cores here) must neither miss a chunk nor run one
    of a job that has ended; each output row is one thread's, so the results are exactly equal."""
    model = load_model(make_checkpoint("v7.0", n_layer=2, n_embd=256), "cpu int4")
    step = model._layers[1]["native.step"]
    gen = torch.Generator().manual_seed(2)
    st = _random_state(model, gen, 3)[1]
    x, v_first = torch.randn(3, model.n_embd, generator=gen), torch.randn(3, model.n_embd, generator=gen)
    try:
        native.share_torch_threads(on_openmp)
        native.set_threads(1)
        want = step(x, st, v_first)
        for n in (2, 3, 5):
            native.set_threads(n)
            for _ in range(100):  # many short jobs back to back
                got = step(x, st, v_first)
                assert torch.equal(got[0], want[0]) and all(torch.equal(a, b) for a, b in zip(got[1], want[1]))
    finally:
        native.set_threads(None)
        native.share_torch_threads(False)


@needs_kernels
@pytest.mark.parametrize("version", ["v7.0", "v6.0"])
def test_a_batch_updated_in_place_gives_what_a_new_one_gives(make_checkpoint, version):
    """forward_batch(..., in_place=True) (the API server's running batch): the steps write the new
    state over the batch's own tensors; logits and states are those of the functional call."""
    from roost.engine.model import BatchState

    model = load_model(make_checkpoint(version, n_layer=3, n_embd=128), "cpu int4")
    starts = [model.forward(p)[1] for p in ([1, 2], [3000], [9, 9, 9])]
    want_logits, want = model.forward_batch([5, 6, 7], BatchState.stack(starts))
    given = BatchState.stack(starts)
    tensors = [t for layer in given.layers for t in layer]
    got_logits, got = model.forward_batch([5, 6, 7], given, in_place=True)
    assert torch.equal(got_logits, want_logits)
    for lg, lw in zip(got.layers, want.layers):
        for a, b in zip(lg, lw):
            assert torch.equal(a, b)
    assert all(any(a is t for t in tensors) for layer in got.layers for a in layer)  # the same tensors, written over
    copies = [got.state(b) for b in range(3)]  # (copies: what the streams hold before the next step)
    again, _ = model.forward_batch([8, 8, 8], got, in_place=True)  # and it goes on
    for b, st in enumerate(copies):
        alone = model.forward([8], st)[0]
        top = alone.topk(5).indices
        _close(again[b][top], alone[top], f"stream {b} after two steps in place")
