"""CPU weights packed for oneDNN (engine.linear.PackedLinear): same products, same logits."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import roost.engine.linear as lin
from roost.engine import load_model
from roost.engine.int8 import Int8Linear
from roost.engine.linear import PackedLinear, pack_for_cpu, packs_on_cpu

needs_packing = pytest.mark.skipif(not packs_on_cpu(torch.float32), reason="oneDNN packing unavailable")
TOKENS = list(range(300, 340))


@needs_packing
@pytest.mark.parametrize("rows", [1, 3, 128])
def test_packed_float32_product_matches_plain(rows):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(96, 64, generator=g)
    x = torch.randn(rows, 64, generator=g)
    p = pack_for_cpu(w)
    assert isinstance(p, PackedLinear) and p.shape == (96, 64)
    torch.testing.assert_close(p(x), F.linear(x, w), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(p(x.view(1, rows, 64)), F.linear(x, w).view(1, rows, 96), atol=1e-5, rtol=1e-5)


@pytest.mark.skipif(not packs_on_cpu(torch.bfloat16), reason="no native bf16 packing on this CPU")
def test_packed_bf16_rounds_like_a_plain_bf16_product_and_keeps_rows():
    g = torch.Generator().manual_seed(1)
    w = torch.randn(80, 64, generator=g).bfloat16()
    x = torch.randn(2, 64, generator=g)
    p = pack_for_cpu(w, keep_rows=True)
    assert p(x).dtype == torch.float32  # the activations' type comes back
    torch.testing.assert_close(p(x), F.linear(x.bfloat16(), w).float(), atol=0.02, rtol=0.01)
    idx = torch.tensor([[3, 7]])
    assert torch.equal(p.rows(idx), w[idx].float())
    assert p.nbytes() == 2 * 80 * 64 * 2
    with pytest.raises(ValueError):
        pack_for_cpu(w).rows(idx)


def test_packing_is_skipped_where_it_does_not_pay(monkeypatch):
    w = torch.randn(8, 16)
    monkeypatch.setattr(lin, "cpu_has_bf16", lambda: False)
    assert pack_for_cpu(w.bfloat16()).dtype == torch.bfloat16  # a plain tensor: no native bf16
    assert isinstance(pack_for_cpu(w.half()), torch.Tensor)
    assert isinstance(pack_for_cpu(w, enabled=False), torch.Tensor)


@needs_packing
@pytest.mark.parametrize("arch", ["v5.2", "v6.0", "v7.0"])
def test_packed_model_gives_the_plain_models_logits(make_checkpoint, monkeypatch, arch):
    path = make_checkpoint(arch, n_layer=2, n_embd=128)
    packed = load_model(path, "cpu fp32")
    assert isinstance(packed._layers[0]["att.key.weight"], PackedLinear)
    assert isinstance(packed._w["head.weight"], PackedLinear)
    plain = load_model(path, "cpu fp32", pack=False)
    assert isinstance(plain._layers[0]["att.key.weight"], torch.Tensor)
    for tokens in (TOKENS, TOKENS[:1]):  # a chunk, and one token
        got, want = packed.forward(tokens)[0], plain.forward(tokens)[0]
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


@pytest.mark.skipif(not packs_on_cpu(torch.bfloat16), reason="no native bf16 packing on this CPU")
def test_bf16_model_packs_and_refines_its_head(make_checkpoint):
    path = make_checkpoint("v6.0", n_layer=2, n_embd=128)
    model = load_model(path, "cpu bf16")
    head = model._w["head.weight"]
    assert isinstance(head, PackedLinear) and head.plain is not None
    fp32 = load_model(path, "cpu fp32").forward(TOKENS)[0]
    got = model.forward(TOKENS)[0]
    top = fp32.topk(5).indices
    torch.testing.assert_close(got[top], fp32[top], atol=0.05, rtol=0.02)
    # RWKV-7 int8 keeps its first block in bf16: packed too
    v7 = load_model(make_checkpoint("v7.0", n_layer=2, n_embd=128), "cpu int8", native=False)
    assert isinstance(v7._layers[0]["att.key.weight"], PackedLinear)
    assert isinstance(v7._layers[1]["att.key.weight"], Int8Linear)


@needs_packing
def test_tall_weights_pack_in_blocks_of_rows_and_release_the_file_as_they_go(monkeypatch):
    monkeypatch.setattr(PackedLinear, "BLOCK", 40 * 64)  # 40 rows of 64 per block
    w = torch.randn(100, 64, generator=torch.Generator().manual_seed(2))
    released = []
    p = PackedLinear(w, release=lambda rows: released.append(rows.shape[0]))
    assert len(p.blocks) == 3 and released == [40, 40, 20]
    x = torch.randn(5, 64)
    torch.testing.assert_close(p(x), F.linear(x, w), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("arch, down, up", [("v6.0", "att.time_decay_w1", "att.time_decay_w2"),
                                            ("v7.0", "att.w1", "att.w2")])
def test_unpacked_low_rank_projections_down_are_stored_column_major(make_checkpoint, arch, down, up):
    """Plain (unpacked) low-rank matrices (in, out): a projection down is kept column-major, which
    the BLAS multiplies one token at a time about twice as fast; a projection up row-major. Same
    values, same products."""
    from roost.engine.arch.common import low_rank_mat

    model = load_model(make_checkpoint(arch, n_layer=2, n_embd=128), "cpu fp32")
    d, u = model._layers[1][down], model._layers[1][up]
    assert d.shape[0] > d.shape[1] and d.stride() == (1, d.shape[0])  # (in, out), column-major
    assert u.shape[0] < u.shape[1] and u.is_contiguous()
    w = torch.randn(64, 8, dtype=torch.bfloat16)
    x = torch.randn(3, 64)
    assert torch.allclose(x @ low_rank_mat(w, torch.float32), x @ w.float(), atol=1e-5)
    assert low_rank_mat(w.t(), torch.float32).is_contiguous()
