"""The opt-in torch.compile of the one-token step: off by default, same logits when on, and a
plain-English note (with the eager path kept) when this machine cannot compile."""

from __future__ import annotations

import logging

import pytest
import torch

from roost import engine
from roost.engine import compiled

TOKENS = [11, 4000, 300, 65535, 7]


@pytest.fixture
def ckpt(make_checkpoint):
    return make_checkpoint("v6.0", n_layer=2, n_embd=128)


@pytest.fixture
def no_env(monkeypatch):
    monkeypatch.delenv("ROOST_COMPILE", raising=False)


def _steps(model, prompt=(1, 2, 3)):
    """Logits of a prompt (sequence mode) and then of TOKENS one at a time."""
    logits, state = model.forward(list(prompt), None)
    out = [logits]
    for t in TOKENS:
        logits, state = model.forward([t], state)
        out.append(logits)
    return torch.stack(out)


def test_default_load_does_not_compile(ckpt, no_env, monkeypatch):
    def boom(*a, **k):
        raise AssertionError("torch.compile was called on the default path")

    monkeypatch.setattr(torch, "compile", boom)
    monkeypatch.setattr(compiled, "unavailable_reason", boom)  # not even the compiler check
    model = engine.load_model(ckpt, "cpu fp32")
    _steps(model)
    assert model.compiled is False
    assert model.compile_note is None


@pytest.mark.parametrize("via_env", [False, True])
def test_without_compiler_runs_eagerly_and_says_why(ckpt, no_env, monkeypatch, via_env):
    monkeypatch.setattr(compiled, "unavailable_reason", lambda devices: "no C++ compiler was found (test)")
    monkeypatch.setattr(torch, "compile", lambda *a, **k: pytest.fail("compiled without a compiler"))
    from roost.engine.options import COMPILE_ENV, LoadOptions

    options = LoadOptions.from_env({COMPILE_ENV: "1"}) if via_env else LoadOptions(compile=True)
    model = engine.load_model(ckpt, "cpu fp32", options=options)
    assert model.compiled is False
    assert model.compile_note == "running without compilation because no C++ compiler was found (test)"
    monkeypatch.setenv(COMPILE_ENV, "1")  # the engine itself reads no environment variable
    eager = engine.load_model(ckpt, "cpu fp32")
    assert eager.compile_note is None
    torch.testing.assert_close(_steps(model), _steps(eager), atol=0, rtol=0)


def test_compile_failing_at_first_call_falls_back(ckpt, no_env, monkeypatch):
    def broken_compile(fn, **kw):
        def run(*a, **k):
            raise RuntimeError("InductorError: C++ compile error\nmore lines")
        return run

    monkeypatch.setattr(compiled, "unavailable_reason", lambda devices: None)
    monkeypatch.setattr(torch, "compile", broken_compile)
    model = engine.load_model(ckpt, "cpu fp32", compile=True)
    assert model.compiled is False
    assert model.compile_note.startswith("running without compilation because torch.compile failed")
    assert "C++ compile error" in model.compile_note and "more lines" not in model.compile_note
    eager = engine.load_model(ckpt, "cpu fp32", pack=False)  # the model meant for compiling kept plain weights
    torch.testing.assert_close(_steps(model), _steps(eager), atol=0, rtol=0)


@pytest.mark.parametrize("strategy, vnni", [("cpu fp32", None), ("cpu int8", None), ("cpu int8", False)])
def test_compiled_logits_match_eager(ckpt, no_env, monkeypatch, strategy, vnni):
    """``vnni=False``: int8 as on CPUs without AVX512-VNNI (most AVX2 desktops), whatever this one
    has: every matrix then keeps weight-only precision (split activations, 63 levels), which puts
    more graph breaks in a layer than on a VNNI CPU. What must hold everywhere is that none of them
    is compiled again for later tokens."""
    if vnni is not None:
        import roost.engine.int8 as int8
        import roost.engine.model as model_module

        monkeypatch.setattr(int8, "cpu_has_vnni", lambda: vnni)
        monkeypatch.setattr(model_module, "cpu_has_vnni", lambda: vnni)
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    limits = []  # dynamo's warning that a function was compiled too many times (then runs eagerly)
    handler = logging.Handler()
    handler.emit = lambda record: limits.append(record.getMessage()) if "hit config." in record.getMessage() else None
    dynamo_log = logging.getLogger("torch._dynamo")
    monkeypatch.setattr(dynamo_log, "handlers", [*dynamo_log.handlers, handler])  # (restored after the test)
    reason = compiled.unavailable_reason(("cpu",))
    if reason:
        pytest.skip(f"torch.compile is not available here: {reason}")
    # (torch.compile compiles the PyTorch layers: the compiled kernels' layer step, which an int8
    # RWKV-6 would otherwise run for one token, stays out of it here)
    model = engine.load_model(ckpt, strategy, compile=True, native=False)
    assert model.compiled is True, model.compile_note
    assert model.compile_note is None
    eager = engine.load_model(ckpt, strategy, pack=False, native=False)  # the plain weights a compiled model runs
    # int8: the split activations' rounding may differ by one step, whose size goes as 1/levels^2
    # (63 levels on CPUs without VNNI: 4x larger)
    from roost.engine.int8 import activation_levels

    atol = 1e-3 * (127 / activation_levels()) ** 2 if "int8" in strategy else 1e-4
    torch.testing.assert_close(_steps(model), _steps(eager), atol=atol, rtol=0)
    # no piece recompiled for later tokens (a Python number in the graph would do that, up to
    # dynamo's limit of 8 and a warning): what the first tokens compiled is all there is. (How many
    # pieces a layer has depends on the CPU: 2 for a product's resume on a VNNI CPU, 4 without.)
    counters = torch._dynamo.utils.counters
    compiled_once = dict(counters["resumes"]), counters["stats"]["unique_graphs"]
    _steps(model, prompt=(9, 8))
    compiled_again = dict(counters["resumes"]), counters["stats"]["unique_graphs"]
    torch._dynamo.reset()  # drop the compiled frames (they hold the model's weights) before later tests
    assert compiled_once[1] > 0 and compiled_again == compiled_once, (compiled_once, compiled_again)
    assert not limits, limits[0]
    assert model.compiled is True, model.compile_note  # no fallback happened while running
