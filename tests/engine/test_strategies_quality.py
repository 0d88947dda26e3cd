"""Lower-precision strategies against Roost cpu fp32: top-1 agreement and logit error.

The reference package has no int8 or bf16 path for RWKV-7 and its CPU int8 differs from ours, so
Roost's own float32 (itself checked against the reference in test_parity.py) is the yardstick.
"""

from __future__ import annotations

import pytest
import torch

from roost.engine import load_model
from tests.conftest import ARCHS, top1_agreement

TOKENS = torch.randint(0, 65536, (256,), generator=torch.Generator().manual_seed(5)).tolist()


def agreement(a: torch.Tensor, b: torch.Tensor, tie: float = 0.0) -> float:
    return top1_agreement(a, b, tie)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().amax(-1) / b.abs().amax(-1)).median().item()


def token_by_token(model, tokens):
    rows, state = [], None
    for t in tokens:
        logits, state = model.forward([t], state)
        rows.append(logits)
    return torch.stack(rows)


@pytest.fixture(scope="module")
def fp32_logits(make_checkpoint):
    cache = {}

    def get(arch, n_layer, n_embd, mode):
        key = (arch, n_layer, n_embd, mode)
        if key not in cache:
            path = make_checkpoint(arch, n_layer=n_layer, n_embd=n_embd, seed=11)
            model = load_model(path, "cpu fp32")
            cache[key] = (path, model.forward_all(TOKENS)[0] if mode == "seq" else token_by_token(model, TOKENS))
        return cache[key]

    return get


@pytest.mark.parametrize("arch", ARCHS)
# bf16: every pick is fp32's top token or a near-tie (within 0.1 logit; random models have a few
# positions whose top two differ by less than bf16's rounding). int8 and int4: strict top-1
# agreement (int4 measured 86-96% on these 4x256 models, v5.0 lowest; relative error 0.04-0.10).
# The compiled kernels' 4-bit blocks agree as well on average (18 models of v5.0, v6.0, v7.0, seeds
# 11-16: mean 0.893 against the PyTorch path's 0.896) but not model by model: this v5.0 one reads
# 0.836 with them, 0.863 without, within the spread of single models (-0.027..+0.016).
@pytest.mark.parametrize("strategy, min_agree, tie, max_err",
                         [("cpu bf16", 0.99, 0.1, 0.02), ("cpu int8", 0.95, 0.0, 0.05),
                          ("cpu int4", 0.83, 0.0, 0.12)])
@pytest.mark.parametrize("mode", ["seq", "one"])
def test_low_precision_agrees_with_fp32(fp32_logits, arch, strategy, min_agree, tie, max_err, mode):
    path, ref = fp32_logits(arch, 4, 256, mode)
    model = load_model(path, strategy)
    got = model.forward_all(TOKENS)[0] if mode == "seq" else token_by_token(model, TOKENS)
    assert got.dtype == torch.float32
    assert agreement(got, ref, tie) >= min_agree
    assert rel_err(got, ref) <= max_err


@pytest.mark.parametrize("arch", ARCHS)
def test_an_int8_prompt_read_at_once_lands_no_further_than_quantisation_itself(fp32_logits, arch):
    """Prompts go through the int8 products in chunks (several rows per product, each row scaled on
    its own), tokens one by one: the difference between the two stays within the difference int8
    makes to the tokens (measured 0.05-0.81 of it, RWKV-7 lowest; int4: 0.03-0.04)."""
    path, ref = fp32_logits(arch, 4, 256, "one")
    model = load_model(path, "cpu int8")
    one = token_by_token(model, TOKENS)
    seq = model.forward_all(TOKENS)[0]
    assert rel_err(seq, one) <= rel_err(one, ref)


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["v6.0", "v7.0"])
def test_int8_on_a_real_shape(fp32_logits, arch):
    """24 layers x 1024, the shape of the 0.4B models."""
    path, ref = fp32_logits(arch, 24, 1024, "one")
    got = token_by_token(load_model(path, "cpu int8"), TOKENS)
    assert agreement(got, ref) >= 0.95
    assert rel_err(got, ref) <= 0.05


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["v6.0", "v7.0"])
def test_int4_on_a_real_shape(fp32_logits, arch):
    """24 x 1024 with 4-bit weights: measured 86-87% strict top-1 agreement, relative error 0.11-0.13
    (random weights: the issue's 90% target is not reached, see int4_precision)."""
    path, ref = fp32_logits(arch, 24, 1024, "one")
    got = token_by_token(load_model(path, "cpu int4"), TOKENS)
    assert agreement(got, ref) >= 0.83
    assert rel_err(got, ref) <= 0.15


@pytest.mark.parametrize("native", [False, True], ids=["pytorch-path", "compiled-kernels"])
def test_int8_weights_take_a_quarter_of_fp32(make_checkpoint, native):
    from roost.engine import native as kernels
    from roost.engine.int8 import Int8Linear

    if native and not kernels.available():
        pytest.skip(f"no compiled kernels: {kernels.unavailable_reason()}")
    model = load_model(make_checkpoint("v6.0", n_layer=2, n_embd=256), "cpu int8", native=native)
    w = model._layers[0]["att.output.weight"]
    kind = kernels.BlockLinear if native else Int8Linear
    assert isinstance(w, kind) and w.dtype == torch.int8 and w.shape == (256, 256)
    assert w.rows(torch.tensor([3])).shape == (1, 256)
    # a scale per row (float32), or an fp16 one per block of 32
    assert w.nbytes() == 256 * 256 + (256 * 8 * 2 if native else 256 * 4)
    assert isinstance(model._w["head.weight"], kind)
    # the low-rank matrices as int8 rows on CPUs with native bf16 (a quarter of their bytes),
    # time_maa_w2 in float32
    from roost.engine.linear import packs_on_cpu

    lw = model._layers[0]
    assert lw["att.time_maa_w2"].dtype == torch.float32
    assert all(lw[k].dtype == (torch.int8 if packs_on_cpu(torch.bfloat16) else torch.float32)
               for k in ("att.time_maa_w1", "att.time_decay_w1", "att.time_decay_w2"))


def test_int8_kernel_choice_follows_the_measured_errors(monkeypatch):
    import roost.engine.model as em

    k = "blocks.3.att.key.weight"
    monkeypatch.setattr(em, "cpu_has_vnni", lambda: False)  # 7-bit activations: weight-only precision
    assert not em.quantizes_activations(k, 6)
    assert not em.quantizes_activations("blocks.3.ffn.value.weight", 4)  # the FFN too
    monkeypatch.setattr(em, "cpu_has_vnni", lambda: True)
    assert em.quantizes_activations(k, 6) and em.quantizes_activations("blocks.3.att.gate.weight", 5)
    assert not em.quantizes_activations("blocks.3.att.receptance.weight", 6)
    assert not em.quantizes_activations("blocks.3.att.output.weight", 6)
    assert em.quantizes_activations("blocks.3.ffn.value.weight", 4)
    assert not em.quantizes_activations("head.weight", 6)
    assert not em.quantizes_activations(k, 7) and not em.quantizes_activations("blocks.3.ffn.key.weight", 7)


@pytest.mark.parametrize("kernels", [False, True], ids=["pytorch", "kernels"])
def test_rwkv7_low_rank_products_run_as_int8_rows_with_quantized_weights(make_checkpoint, kernels):
    """int8 / int4 strategies keep RWKV-7's 8 small low-rank matrices per layer as int8 rows where
    the CPU multiplies bf16 natively (torch's weight-only kernel, bf16 activations), or, with the
    compiled kernels, as 8-bit blocks (padded to whole pairs of blocks) that the compiled layer step
    multiplies: the logits stay within 2% of the float32 products."""
    from roost.engine import native
    from roost.engine.checkpoint import open_checkpoint
    from roost.engine.int8 import Int8Linear
    from roost.engine.linear import packs_on_cpu

    if kernels and not native.available():
        pytest.skip(f"no compiled kernels: {native.unavailable_reason()}")
    path = make_checkpoint("v7.0", n_layer=4, n_embd=256)
    model = load_model(path, "cpu int8", native=kernels)
    first, second = model._layers[1].get("att.lr1"), model._layers[1].get("att.lr2")
    if kernels:
        assert isinstance(first, native.BlockLinear) and first.bits == 8 and first.sizes == (32, 32, 64, 32)
        assert first.shape == (192, 256) and second.shape == (256, 192)  # 160 ranks padded to 192
        assert model._layers[0]["att.lr1"].shape == (128, 256)  # no value pair in layer 0: 128 already
    elif not packs_on_cpu(torch.bfloat16):
        w1 = model._layers[1]["att.w1"]
        assert isinstance(w1, torch.Tensor) and w1.dtype == torch.float32
        return
    else:  # each layer's four pairs in two packed products: the first matrices side by side, the second stacked
        assert isinstance(first, Int8Linear) and first.kernel == "int8pack" and first.sizes == (32, 32, 64, 32)
        assert first.shape == (160, 256) and second.shape == (256, 160)  # (out, in)
    assert model._layers[0]["att.lr1"].sizes == (32, 32, 64)  # layer 0 has no value pair
    assert "att.w1" not in model._layers[1]
    assert isinstance(load_model(path, "cpu fp32")._layers[1]["att.w1"], torch.Tensor)  # fp32 keeps them exact
    for tokens in (TOKENS[:32], TOKENS[:1]):  # a prompt chunk and one token
        packed, _ = model.forward(tokens)
        t, _ = open_checkpoint(path)
        saved = [dict(lw) for lw in model._layers]
        for i, lw in enumerate(model._layers):  # the plain float32 pairs, one product each
            del lw["att.lr1"], lw["att.lr2"]
            lw.pop("native.step", None)
            for k in [f"att.{m}{j}" for m in "wagv"[:3 if i == 0 else 4] for j in "12"]:
                lw[k] = t[f"blocks.{i}.{k}"].float().contiguous()
        plain, _ = model.forward(tokens)
        t.close()
        model._layers[:] = saved
        assert float((packed - plain).abs().max() / plain.abs().max()) < 0.02
