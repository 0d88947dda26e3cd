"""4-bit weights (``cpu int4``): the packed products, the rounding, and what a model keeps in int8."""

from __future__ import annotations

import pytest
import torch

from roost.engine import load_model
from roost.engine.checkpoint import open_checkpoint
from roost.engine.int4 import INT4_GROUP, Int4Linear, int4_works, quantize_groups
from roost.engine.int8 import Int8Linear
from roost.engine.memory import estimate
from roost.engine.strategy import parse_strategy

pytestmark = pytest.mark.skipif(not int4_works(), reason="this torch has no packed 4-bit CPU kernel")


def dequantize(q, scale, zero, group):
    rows, cols = q.shape
    w = (q.float().reshape(rows, cols // group, group) - 8) * scale.float().unsqueeze(-1)
    return (w + zero.float().unsqueeze(-1)).reshape(rows, cols)


@pytest.mark.parametrize("rows, cols", [(16, 64), (96, 256), (160, 512), (2048, 128)])
def test_products_are_the_dequantised_weights_times_x(rows, cols):
    w = torch.randn(rows, cols, generator=torch.Generator().manual_seed(rows))
    lin = Int4Linear(w, block=64 * cols)  # packed in blocks of 64 rows, as a big matrix is
    q, scale, zero = quantize_groups(w, INT4_GROUP)
    exact = dequantize(q, scale, zero, INT4_GROUP)
    assert torch.allclose(lin.dequantized(), exact, rtol=1e-2, atol=1e-2)  # bf16 output of the kernel
    x = torch.randn(5, cols)
    want = x.double() @ exact.double().t()
    got = lin(x)
    assert got.dtype == torch.float32 and got.shape == (5, rows)
    # bf16 activations and output: ~3 significant digits
    assert float((got - want).norm() / want.norm()) < 6e-3
    assert torch.equal(lin.packed, Int4Linear(w, block=1 << 30).packed)  # blocks pack as the whole


def test_rounding_fits_each_group_better_than_its_range():
    w = torch.randn(256, 512, generator=torch.Generator().manual_seed(0))
    err = {r: float((dequantize(*quantize_groups(w, 32, r), 32) - w).norm() / w.norm()) for r in (0, 2)}
    assert err[2] < 0.96 * err[0] and err[0] < 0.085  # 7.8% -> 7.3% for Gaussian weights
    flat = torch.full((16, 64), 0.25)  # a constant group comes back exactly
    assert torch.allclose(dequantize(*quantize_groups(flat, 32), 32), flat)


def test_shapes_the_kernel_cannot_take_are_refused():
    assert not Int4Linear.fits((24, 64)) and not Int4Linear.fits((32, 48)) and Int4Linear.fits((32, 64))
    with pytest.raises(ValueError, match="cannot be packed"):
        Int4Linear(torch.zeros(24, 64))


def test_a_model_keeps_its_head_and_first_block_in_int8(make_checkpoint):
    model = load_model(make_checkpoint("v6.0", n_layer=3, n_embd=256), "cpu int4", native=False)  # PyTorch path
    assert isinstance(model._w["head.weight"], Int8Linear)
    assert isinstance(model._layers[0]["ffn.key.weight"], Int8Linear)
    for i in (1, 2):
        assert all(isinstance(model._layers[i][k], Int4Linear)
                   for k in ("att.receptance.weight", "att.output.weight", "ffn.key.weight", "ffn.value.weight"))
    # the low-rank matrices as int8 rows on CPUs with native bf16, time_maa_w2 in float32
    from roost.engine.linear import packs_on_cpu

    lw = model._layers[1]
    assert lw["att.time_maa_w2"].dtype == torch.float32
    assert all(lw[k].dtype == (torch.int8 if packs_on_cpu(torch.bfloat16) else torch.float32)
               for k in ("att.time_maa_w1", "att.time_decay_w1", "att.time_decay_w2"))
    lin = model._layers[1]["ffn.key.weight"]
    assert lin.shape == (896, 256)  # 3.5 x 256
    assert lin.nbytes() == 896 * 256 // 2 + 896 * (256 // INT4_GROUP) * 2 * 2  # 4 bits + bf16 scale, zero


def test_shapes_that_do_not_pack_fall_back_to_int8(make_checkpoint):
    model = load_model(make_checkpoint("v4", n_layer=2, n_embd=48), "cpu int4")  # 48 columns: no 32-groups
    assert isinstance(model._layers[1]["att.key.weight"], Int8Linear)
    logits, _ = model.forward([1, 2, 3])
    assert torch.isfinite(logits).all()


def test_int4_mixes_with_other_stages(make_checkpoint):
    path = make_checkpoint("v7.0", n_layer=4, n_embd=256)
    mixed = load_model(path, "cpu fp32 *2 -> cpu int4", native=False)  # (the kernels' side: test_load_matrix.py)
    assert isinstance(mixed._layers[3]["att.key.weight"], Int4Linear)
    assert not isinstance(mixed._layers[1]["att.key.weight"], (Int4Linear, Int8Linear))
    ref, _ = load_model(path, "cpu fp32").forward([5, 6, 7])
    got, _ = mixed.forward([5, 6, 7])
    assert float((got - ref).abs().max() / ref.abs().max()) < 0.15


def test_the_estimate_counts_four_bits(make_checkpoint):
    path = make_checkpoint("v7.0", n_layer=4, n_embd=256)
    t, cfg = open_checkpoint(path)
    int8 = estimate(t, cfg, parse_strategy("cpu int8")).per_device["cpu"]
    int4 = estimate(t, cfg, parse_strategy("cpu int4")).per_device["cpu"]
    t.close()
    assert int4 < int8
    model = load_model(path, "cpu int4", native=False)  # the PyTorch path (the kernels' blocks: below)
    big_mats = [w for lw in model._layers for k, w in lw.items() if k not in ("att.lr1", "att.lr2")]  # (not low-rank)
    kept = sum(w.nbytes() for w in big_mats if isinstance(w, (Int4Linear, Int8Linear)))
    four = sum(w.nbytes() for w in big_mats if isinstance(w, Int4Linear))
    assert four > 0.5 * kept  # 3 of 4 blocks in 4 bits
    # the estimate's big-matrix bytes for the blocks: what the loaded model holds, within 1%
    t, cfg = open_checkpoint(path)
    from roost.engine.memory import layer_numels

    big = [b for b, *_ in layer_numels(t, cfg)]
    t.close()
    want = big[0] * (1 + 4 / 256) + sum(big[1:]) * (0.5 + 4 / INT4_GROUP)
    assert kept == pytest.approx(want, rel=0.01)


def test_the_estimate_counts_the_compiled_kernels_blocks(make_checkpoint):
    """With the compiled kernels (engine.native) a 4-bit block of 32 keeps an fp16 scale and offset,
    an 8-bit one (block 0 in int4, the head) an fp16 scale: what the loaded model holds, within 1%."""
    from roost.engine import native
    from roost.engine.memory import layer_numels

    if not native.available():
        pytest.skip(f"no compiled kernels: {native.unavailable_reason()}")
    path = make_checkpoint("v7.0", n_layer=4, n_embd=256)
    model = load_model(path, "cpu int4")
    big_mats = [w for lw in model._layers for k, w in lw.items()
                if isinstance(w, native.BlockLinear) and k not in ("att.lr1", "att.lr2")]  # (the low-rank pairs)
    kept = sum(w.nbytes() for w in big_mats)
    t, cfg = open_checkpoint(path)
    big = [b for b, *_ in layer_numels(t, cfg)]
    with_blocks = estimate(t, cfg, parse_strategy("cpu int4"), blocks=True).per_device["cpu"]
    without = estimate(t, cfg, parse_strategy("cpu int4")).per_device["cpu"]
    t.close()
    assert kept == pytest.approx(big[0] * (1 + 2 / 32) + sum(big[1:]) * (0.5 + 4 / 32), rel=0.01)
    assert with_blocks > without  # the head's and block 0's scales per 32
    assert model._w["head.weight"].nbytes() == cfg.vocab_size * cfg.n_embd * (1 + 2 / 32)
