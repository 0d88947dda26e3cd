"""Strategies across devices. GPU cases run where a GPU is present and skip cleanly elsewhere;
a split between two CPU precisions exercises the same layer placement on any machine."""

from __future__ import annotations

import pytest
import torch

from roost.engine import load_model
from roost.engine.int8 import Int8Linear
from roost.engine.native import BlockLinear

TOKENS = torch.randint(0, 65536, (64,), generator=torch.Generator().manual_seed(3)).tolist()
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")
MPS = pytest.mark.skipif(not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()),
                         reason="needs Apple MPS")


def agreement(a, b) -> float:
    return (a.argmax(-1) == b.argmax(-1)).float().mean().item()


def run_both(path, strategy):
    ref, _ = load_model(path, "cpu fp32").forward_all(TOKENS)
    model = load_model(path, strategy)
    got, state = model.forward_all(TOKENS)
    return model, ref, got, state


@pytest.mark.parametrize("arch", ["v5.2", "v7.0"])
def test_a_split_between_two_cpu_stages_places_layers_and_head(make_checkpoint, arch):
    path = make_checkpoint(arch, n_layer=4, n_embd=128, seed=6)
    model, ref, got, _ = run_both(path, "cpu fp32 *2 -> cpu int8")
    eight = (Int8Linear, BlockLinear)  # the PyTorch path's or the compiled kernels' (engine.native)
    assert [isinstance(lw["att.key.weight"], eight) for lw in model._layers] == [False, False, True, True]
    assert isinstance(model._w["head.weight"], eight)
    assert agreement(got, ref) >= 0.95


@CUDA
@pytest.mark.parametrize("arch", ["v4", "v5.2", "v6.0", "v7.0"])
@pytest.mark.parametrize("strategy", ["cuda fp16", "cuda bf16", "cuda int8", "cuda fp16 *2 -> cpu fp32",
                                      "cuda fp16 *1+"])
def test_cuda_strategies_agree_with_cpu_fp32(make_checkpoint, arch, strategy):
    path = make_checkpoint(arch, n_layer=4, n_embd=256, seed=6)
    model, ref, got, state = run_both(path, strategy)
    assert agreement(got, ref) >= 0.95
    # the state of each layer lives on that layer's device
    assert state.layers[0][1].device.type == "cuda"


@MPS
@pytest.mark.parametrize("arch", ["v6.0", "v7.0"])
def test_mps_agrees_with_cpu_fp32(make_checkpoint, arch):
    path = make_checkpoint(arch, n_layer=4, n_embd=256, seed=6)
    _, ref, got, _ = run_both(path, "mps fp32")
    assert agreement(got, ref) >= 0.99


def test_streamed_int8_layers_stay_movable(make_checkpoint):
    """Streamed layers ("cuda fp16i8 *1+") live in CPU memory and are copied to the GPU for each
    forward: their int8 weights must be plain tensors, not fbgemm's CPU-only packing."""
    from roost.engine.checkpoint import open_checkpoint
    from roost.engine.model import _matrix_loader
    from roost.engine.strategy import Placement, Stage

    tensors, _ = open_checkpoint(make_checkpoint("v6.0", n_layer=2, n_embd=128))
    place = Placement(Stage("cuda", None, "fp16", True, 1, True), stream=True)
    w = _matrix_loader(place, 1, version=6, block=1)(tensors, "blocks.1.ffn.key.weight")
    assert isinstance(w, Int8Linear) and w.kernel == "dequant" and w.q.device.type == "cpu"
    moved = w.to("meta")  # any other device: what _to_device does with a streamed layer
    assert moved.q.device.type == "meta" and moved.kernel == "dequant"
    x = torch.randn(2, 128)
    torch.testing.assert_close(w(x), x @ w.rows(torch.arange(w.shape[0])).T, atol=2e-2, rtol=2e-2)
