"""The loaded model beyond reference parity: bf16, input checks, strategies, isolation."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from roost.engine import load_model
from roost.engine.errors import StrategyError
from tests.conftest import ARCHS, ROOT, top1_agreement


@pytest.mark.parametrize("arch", ARCHS)
def test_bf16_picks_the_same_top_token_as_fp32(make_checkpoint, arch):
    path = make_checkpoint(arch, n_layer=3, n_embd=256, seed=11)
    tokens = torch.randint(0, 65536, (256,), generator=torch.Generator().manual_seed(5)).tolist()
    ref, _ = load_model(path, "cpu fp32").forward_all(tokens)
    got, _ = load_model(path, "cpu bf16").forward_all(tokens)
    strict = top1_agreement(got, ref)
    agree = top1_agreement(got, ref, tie=0.1)  # a flip is allowed only where fp32's top two nearly tie
    assert got.dtype == torch.float32
    assert agree >= 0.99 and strict >= 0.97, f"top-1 agreement {agree:.3f} (strict {strict:.3f})"


def test_model_attributes(make_checkpoint):
    model = load_model(make_checkpoint("v7.0", n_layer=3, n_embd=128))
    assert (model.version, model.n_layer, model.n_embd, model.vocab_size) == (7, 3, 128, 65536)
    assert "RWKV-7" in repr(model)
    assert model.tokenizer.decode(model.tokenizer.encode("Hello 你好")) == "Hello 你好"


def test_bad_token_ids_and_empty_input_are_refused(make_checkpoint):
    model = load_model(make_checkpoint("v5.2"))
    with pytest.raises(ValueError, match="out of range"):
        model.forward([70000])
    with pytest.raises(ValueError, match="at least one token"):
        model.forward([])


@pytest.mark.parametrize("strategy, words", [
    ("cuda fp16", "no usable NVIDIA GPU"),
    ("gpu fp16", "Unknown device"),
])
def test_strategies_this_machine_cannot_run_are_refused_before_loading(make_checkpoint, strategy, words):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(StrategyError, match=words):
        load_model(make_checkpoint("v6.0"), strategy)


def test_importing_and_running_the_engine_pulls_in_no_gui_and_no_reference_code(make_checkpoint):
    code = (
        "import sys, engine\n"
        f"m = engine.load_model({str(make_checkpoint('v6.0'))!r}, 'cpu fp32')\n"
        "m.forward(m.tokenizer.encode('hi'))\n"
        "bad = [n for n in sys.modules if n.split('.')[0] in ('PySide6', 'app') or n.startswith('rwkv.model')]\n"
        "print(bad)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_import_engine_is_light():
    out = subprocess.run([sys.executable, "-c", "import sys, engine; print('torch' in sys.modules)"],
                         cwd=ROOT, capture_output=True, text=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("arch", ["v4", "v5.2", "v6.0", "v7.0"])
def test_a_state_is_never_changed_by_forwards_that_start_from_it(make_checkpoint, arch):
    """States are shared (per conversation, the API's prefix cache): updates must make new tensors."""
    model = load_model(make_checkpoint(arch, n_layer=2, n_embd=128), "cpu fp32")
    _, state = model.forward([11, 12, 13], None)
    before = [t.clone() for layer in state.layers for t in layer]
    first, _ = model.forward([14], state)
    model.forward([15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32], state)
    model.forward([15], state)
    assert all(torch.equal(a, b) for a, b in zip(before, (t for layer in state.layers for t in layer)))
    again, _ = model.forward([14], state)
    assert torch.equal(first, again)


def test_the_engine_takes_its_options_as_arguments_not_from_the_environment(make_checkpoint, monkeypatch):
    from roost.engine.int8 import Int8Linear
    from roost.engine.linear import PackedLinear, packs_on_cpu
    from roost.engine.options import LoadOptions

    path = make_checkpoint("v6.0", n_layer=2, n_embd=128)
    for var, value in (("ROOST_PACK", "0"), ("ROOST_INT8_KERNEL", "dequant"), ("ROOST_COMPILE", "1"),
                       ("ROOST_NATIVE", "0")):
        monkeypatch.setenv(var, value)
    model = load_model(path, "cpu int8")
    assert model.compiled is False and model.compile_note is None  # ROOST_COMPILE ignored
    assert getattr(model._layers[1]["att.key.weight"], "kernel", None) != "dequant"  # ROOST_INT8_KERNEL ignored
    from roost.engine import native

    if native.available():  # ROOST_NATIVE=0 ignored: the compiled kernels' blocks
        assert isinstance(model._layers[1]["att.key.weight"], native.BlockLinear)
        assert LoadOptions.from_env().native is False
    forced = load_model(path, "cpu int8", options=LoadOptions.from_env())  # an entry point reads them
    assert all(w.kernel == "dequant" for w in forced._layers[1].values() if isinstance(w, Int8Linear))
    if packs_on_cpu(torch.float32):
        assert isinstance(load_model(path, "cpu fp32")._w["head.weight"], PackedLinear)
        assert not isinstance(load_model(path, "cpu fp32", pack=False)._w["head.weight"], PackedLinear)
    with pytest.raises(TypeError, match="unknown load option"):
        load_model(path, "cpu fp32", turbo=True)


def test_loading_leaves_the_process_allocator_alone_unless_asked(make_checkpoint, monkeypatch):
    from roost.engine import memory

    entered = []

    class Spy:
        def __enter__(self):
            entered.append(True)

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(memory, "loading_allocator", Spy)
    path = make_checkpoint("v5.2", n_layer=2, n_embd=128)
    load_model(path, "cpu fp32")
    assert entered == []
    load_model(path, "cpu fp32", tune_allocator=True)
    assert entered == [True]
