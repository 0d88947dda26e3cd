"""The chunked RWKV-5/6 recurrence against the plain token-by-token one, in float64."""

from __future__ import annotations

import pytest
import torch

from roost.engine.arch import common
from roost.engine.arch.common import FACTOR_LIMIT, wkv_chunked


def recurrence(r, k, v, logw, u, s):
    outs = []
    for t in range(r.shape[0]):
        kv = k[t].unsqueeze(2) * v[t].unsqueeze(1)  # (H, N, N)
        outs.append((r[t].unsqueeze(1) @ (u.unsqueeze(2) * kv + s)).squeeze(1))
        s = logw[t].exp().unsqueeze(2) * s + kv
    return torch.stack(outs), s


def inputs(T, logw_scale, seed=0, H=3, N=8):
    g = torch.Generator().manual_seed(seed)
    r, k, v = (torch.randn(T, H, N, generator=g) for _ in range(3))
    logw = -torch.rand(T, H, N, generator=g) * logw_scale
    return r, k, v, logw, torch.randn(H, N, generator=g), torch.randn(H, N, N, generator=g)


@pytest.mark.parametrize("T", [2, 16, 37])
# mild, strong, strong enough to need the centred factors (a chunk's total ~ -110), to need halves
# of 8 or 4 tokens, to need the exact form (forgets within a token)
@pytest.mark.parametrize("logw_scale", [0.5, 3.0, 11.0, 25.0, 50.0, 200.0])
def test_chunks_match_the_recurrence(T, logw_scale):
    x = inputs(T, logw_scale)
    want_out, want_s = recurrence(*(z.double() for z in x))
    out, s = wkv_chunked(*x)
    assert torch.isfinite(out).all() and torch.isfinite(s).all()
    torch.testing.assert_close(out.double(), want_out, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(s.double(), want_s, atol=1e-4, rtol=1e-4)


def test_factors_centred_on_half_the_chunk_decay():
    """Decays down to e^-140 over a chunk factorise (each factor within e^+-70), exactly."""
    x = inputs(16, 11.0, seed=3)
    total = float(x[3].sum(0).min())
    assert -2 * FACTOR_LIMIT < total < -FACTOR_LIMIT  # beyond what uncentred factors could hold
    calls = []
    real_exact = common._wkv_exact
    try:
        common._wkv_exact = lambda *a: calls.append(1) or real_exact(*a)
        out, s = wkv_chunked(*x)
    finally:
        common._wkv_exact = real_exact
    assert not calls  # the factorised form ran
    want_out, want_s = recurrence(*(z.double() for z in x))
    torch.testing.assert_close(out.double(), want_out, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(s.double(), want_s, atol=1e-4, rtol=1e-4)


def _exact_calls(x) -> int:
    calls = []
    real_exact = common._wkv_exact
    try:
        common._wkv_exact = lambda *a: calls.append(1) or real_exact(*a)
        wkv_chunked(*x)
    finally:
        common._wkv_exact = real_exact
    return len(calls)


def test_fast_forgetting_halves_the_chunk_before_the_exact_form():
    halves = inputs(16, 25.0)  # ~ -200 over 16 tokens, ~ -100 over 8
    assert float(halves[3].sum(0).min()) < -2 * FACTOR_LIMIT
    assert _exact_calls(halves) == 0
    assert _exact_calls(inputs(16, 200.0)) > 0  # ~ -400 over 4 tokens: exact


def test_strong_decay_takes_the_exact_form(monkeypatch):
    """A chunk whose decay passes e^-2*FACTOR_LIMIT would overflow factorised: it must not be."""
    x = inputs(16, 50.0)
    assert float(x[3].sum(0).min()) < -2 * FACTOR_LIMIT
    monkeypatch.setattr("roost.engine.arch.common.FACTOR_LIMIT", 1e9)  # force the factorised form
    forced, _ = wkv_chunked(*x)
    assert not torch.isfinite(forced).all()  # so the test above exercises the fallback


def delta_rule(r, logw, k, v, kk, a, s):
    """RWKV-7's recurrence as written: S <- S (diag(w) - kk^T (a kk)) + v k^T; out = S r (per head)."""
    outs = []
    for t in range(r.shape[0]):
        w = logw[t].exp()
        trans = torch.diag_embed(w) - kk[t].unsqueeze(2) * (a[t] * kk[t]).unsqueeze(1)  # (H, N, N)
        s = s @ trans + v[t].unsqueeze(2) * k[t].unsqueeze(1)
        outs.append((s @ r[t].unsqueeze(2)).squeeze(2))
    return torch.stack(outs), s


@pytest.mark.parametrize("T", [1, 5, 32, 45])
def test_rwkv7_chunks_match_the_delta_rule(T):
    from roost.engine.arch import v7

    g = torch.Generator().manual_seed(T)
    H, N = 3, 16
    r, k, v = (torch.randn(T, H, N, generator=g) for _ in range(3))
    logw = -0.606531 * torch.rand(T, H, N, generator=g)  # RWKV-7's decay range
    kk = torch.nn.functional.normalize(torch.randn(T, H, N, generator=g), dim=-1)
    a = torch.rand(T, H, N, generator=g)
    s = torch.randn(H, N, N, generator=g)
    want_out, want_s = delta_rule(*(z.double() for z in (r, logw, k, v, kk, a, s)))
    out, s_new = v7.wkv(r, logw, k, v, kk, a, s)
    torch.testing.assert_close(out.double(), want_out, atol=2e-4, rtol=2e-4)
    torch.testing.assert_close(s_new.double(), want_s, atol=2e-4, rtol=2e-4)
