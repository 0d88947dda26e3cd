"""Roost's logits against the reference implementation (the rwkv pip package), per version."""

from __future__ import annotations

import pytest
import torch

from roost.engine import load_model
from tests.conftest import ARCHS, run_reference

TOKENS = [int(t) for t in torch.randint(0, 50277, (24,), generator=torch.Generator().manual_seed(7))]
SPLIT = 9
TOL = 1e-3  # max|a-b| / max|b| in fp32


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


CASES = [(a, {}) for a in ARCHS] + [("v6.0", {"time_state": True}), ("v5.2", {"time_state": True}),
                                     ("v7.0", {"time_state": True}), ("v4", {"vocab": 50277})]


@pytest.fixture(scope="module", params=CASES, ids=lambda c: c[0] + "".join(f"-{k}" for k in c[1]))
def case(request, make_checkpoint, tmp_path_factory):
    arch, kw = request.param
    path = make_checkpoint(arch, n_layer=3, n_embd=128, **kw)
    ref = run_reference(path, tmp_path_factory.mktemp("ref") / "ref.pt", TOKENS, SPLIT, v7=arch == "v7.0",
                        time_state=arch == "v7.0" and kw.get("time_state", False))
    return arch, path, ref


def test_sequence_mode_matches_reference(case):
    arch, path, ref = case
    model = load_model(path, "cpu fp32")
    logits, _ = model.forward_all(TOKENS)
    assert logits.shape == ref["seq"].shape
    assert rel_err(logits, ref["seq"]) <= TOL
    last, _ = model.forward(TOKENS)
    assert last.dtype == torch.float32 and last.shape == (model.vocab_size,)
    assert rel_err(last, ref["seq"][-1]) <= TOL


def test_token_by_token_matches_reference(case):
    arch, path, ref = case
    model = load_model(path, "cpu fp32")
    state, rows = None, []
    for t in TOKENS:
        logits, state = model.forward([t], state)
        rows.append(logits)
    assert rel_err(torch.stack(rows), ref["one"]) <= TOL
    assert state.n_tokens == len(TOKENS)


def test_resuming_from_a_saved_state_matches_reference(case):
    arch, path, ref = case
    model = load_model(path, "cpu fp32")
    _, mid = model.forward(TOKENS[:SPLIT])
    logits, _ = model.forward(TOKENS[SPLIT:], mid)
    assert rel_err(logits, ref["resume"]) <= TOL


def test_sequence_and_rnn_modes_give_the_same_state(case):
    arch, path, _ = case
    model = load_model(path, "cpu fp32", chunk_len=5)  # several chunks, one of them partial
    _, seq_state = model.forward(TOKENS)
    state = None
    for t in TOKENS:
        _, state = model.forward([t], state)
    for a_layer, b_layer in zip(seq_state.layers, state.layers):
        for a, b in zip(a_layer, b_layer):
            assert torch.allclose(a, b, rtol=1e-4, atol=1e-4)


def test_the_state_passed_in_is_not_modified(case):
    arch, path, _ = case
    model = load_model(path, "cpu fp32")
    _, state = model.forward(TOKENS[:5])
    before = [t.clone() for layer in state.layers for t in layer]
    first, _ = model.forward(TOKENS[5:], state)
    second, _ = model.forward(TOKENS[5:], state)
    after = [t for layer in state.layers for t in layer]
    assert all(torch.equal(a, b) for a, b in zip(before, after))
    assert torch.equal(first, second)
