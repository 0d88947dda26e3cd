"""Pieces shared by several RWKV versions."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from roost.engine.linear import linear, linear_many

GROUP_NORM_EPS = 64e-5  # RWKV-5/6/7: eps 1e-5 scaled by head_size_divisor 8 squared


def token_shift(x: torch.Tensor, prev: torch.Tensor) -> torch.Tensor:
    """The previous token's vector for each position: (T, C) from x (T, C) and prev (C).

    Batched decoding (see roost.engine.model.RWKV.forward_batch): x (B, C) holds one token of each
    of B streams and prev (B, C) each stream's previous token: the rows are not a sequence."""
    if prev.dim() == x.dim():
        return prev
    if x.shape[0] == 1:
        return prev.unsqueeze(0)
    return torch.cat((prev.unsqueeze(0), x[:-1]), dim=0)


def as_f32(z: torch.Tensor) -> torch.Tensor:
    """``z`` in float32 (no call where it is already: a no-op cast still costs a dispatch)."""
    return z if z.dtype == torch.float32 else z.float()


def last(x: torch.Tensor, prev: torch.Tensor) -> torch.Tensor:
    """What the next token shifts in: the last row of a sequence, or every row of a batch."""
    return x.clone() if prev.dim() == x.dim() else x[-1].clone()


def vec(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A per-channel parameter stored as (1, 1, C) or (C,), as a contiguous (C,) tensor."""
    return t.reshape(-1).to(dtype).contiguous()


def mat(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return t.to(dtype).contiguous()


def low_rank_mat(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A low-rank matrix (in, out) for :func:`lora`'s ``x @ w``, unpacked. A projection down
    (in > out) is stored column-major (the transposed view of its (out, in) rows), which the BLAS
    multiplies one token at a time twice as fast (2048x96: 70 against 140 us; 2048x256: 154 against
    289 us, AVX2 CPU) and 64-token chunks no slower; projections up stay row-major, which is faster
    for them. The values are the same; only the layout in memory differs."""
    if t.dim() == 2 and t.shape[0] > t.shape[1]:
        return t.to(dtype).t().contiguous().t()
    return mat(t, dtype)


def lora(x: torch.Tensor, w) -> torch.Tensor:
    """``x @ w`` for a low-rank matrix stored (in, out), or kept as int8 rows (out, in) by an int8 or
    int4 CPU strategy (engine.model's ``low_rank``: RWKV-7's 8 small products per layer took ~10 ms
    a token in float32 on the 1.5B shape, 6 ms packed in bf16, less as int8 rows)."""
    return x @ w if isinstance(w, torch.Tensor) else w(x)


def layer_norm(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return F.layer_norm(x, (x.shape[-1],), weight=w, bias=b)


def ffn_shapes(p: str, cfg, *, gated: bool, mix: tuple[str, ...]) -> dict:
    c, f = cfg.n_embd, cfg.n_ffn
    shapes = {p + "ffn.key.weight": (f, c), p + "ffn.value.weight": (c, f)}
    if gated:
        shapes[p + "ffn.receptance.weight"] = (c, c)
    shapes.update({p + "ffn." + m: (c,) for m in mix})
    return shapes


def channel_mix(x: torch.Tensor, prev: torch.Tensor, w: dict, *, maa: bool):
    """RWKV-4/5/6 channel mixing (squared-ReLU FFN with a receptance gate). x (T, C) normed."""
    sx = token_shift(x, prev)
    # both mixes at once, (2, T, C): RWKV-6's x + (shifted - x) * maa, and RWKV-4/5's
    # x * mix + shifted * (1 - mix) written as shifted + (x - shifted) * mix
    kr = torch.addcmul(x, sx - x, w["ffn.mix"]) if maa else torch.addcmul(sx, x - sx, w["ffn.mix"])
    k, r = linear_many(kr, (w["ffn.key.weight"], w["ffn.receptance.weight"]))
    r, k = torch.sigmoid(r), torch.relu(k).square()
    return r * linear(k, w["ffn.value.weight"]), last(x, prev)


def stacked_mix(t, p: str, names, dtype) -> torch.Tensor:
    """Per-channel mix vectors ``p + name`` stacked (n, 1, C) in the order given: one elementwise
    operation mixes the inputs of all of a layer's projections, which then go through
    engine.linear.linear_many together."""
    return torch.stack([vec(t[p + m], dtype) for m in names]).unsqueeze(1)


def prepare_ffn(t, p: str, dtype, big, mix: tuple[str, ...]) -> dict:
    """The channel mixing's weights; ``mix``: the names of its key and receptance mix vectors."""
    w = {"ffn.mix": stacked_mix(t, p + "ffn.", mix, dtype)}  # (2, 1, C): key, receptance
    for m in ("key", "value", "receptance"):
        w[f"ffn.{m}.weight"] = big(t, f"{p}ffn.{m}.weight")
    return w


FACTOR_LIMIT = 70.0  # factors up to e^70 (2.5e30): float32 holds them times any r, k, with room


def wkv_chunked(r, k, v, logw, u, s, chunk: int = 16):
    """The RWKV-5/6 linear-attention recurrence over T tokens, exactly, in chunks.

    Per head, with state S (K, V):  out_t = r_t (diag(u) k_t v_t^T + S);  S <- diag(w_t) S + k_t v_t^T
    r, k, v, logw: (T, H, N) float32 (logw = log w_t <= 0); u: (H, N); s: (H, N, N).
    Returns out (T, H, N) and S.

    Within a chunk the decay from s to t is exp(exc_t - inc_s) (cumulative sums of logw). It
    factorises as (r_t e^(exc_t - c)) . (k_s e^(c - inc_s)) with c half the chunk's total decay,
    so that each factor stays within e^+-70 wherever the chunk's decay stays above e^-140 in every
    channel: the chunk is then three matrix products (CPU). Otherwise (a channel that forgets
    almost everything within the chunk) the chunk is halved, down to 4 tokens, and where even
    those decay too much the exact form masks the exponent before the exp so that it is never
    positive, on an (H, L, L, N) tensor: 4x dearer per token.
    """
    T = r.shape[0]
    if s.dim() == 4:  # batched decoding: row b is one token of stream b, s (B, H, N, N)
        out = (r.unsqueeze(-2) @ s).squeeze(-2) + (r * u * k).sum(-1, keepdim=True) * v
        return out, logw.exp().unsqueeze(-1) * s + k.unsqueeze(-1) @ v.unsqueeze(-2)
    if T == 1:  # one token: the recurrence itself, reading and writing the state once each
        H, N = r.shape[1:]  # r (diag(u) k v^T + S) = r S + (r.u.k) v, per head
        bonus = (r * u * k).sum(-1, keepdim=True) * v  # (1, H, N)
        out = torch.baddbmm(bonus.reshape(H, 1, N), r.reshape(H, 1, N), s).reshape(1, H, N)
        return out, (logw.exp().reshape(H, N, 1) * s).baddbmm_(k.reshape(H, N, 1), v.reshape(H, 1, N))  # a new s
    outs = []
    factorise = r.device.type == "cpu"  # deciding costs a device sync on a GPU
    for c0 in range(0, T, chunk):
        rc, kc, vc, lw = (z[c0:c0 + chunk].transpose(0, 1) for z in (r, k, v, logw))  # (H, L, N)
        bonus = (rc * u.unsqueeze(1) * kc).sum(-1, keepdim=True) * vc  # the current token
        out, s = _wkv_chunk(rc, kc, vc, lw, s, factorise)
        outs.append((out + bonus).transpose(0, 1))
    return torch.cat(outs, dim=0), s


def _wkv_chunk(rc, kc, vc, lw, s, factorise: bool):
    """One chunk (H, L, N) without the current-token term: factorised if its decay allows, else
    as two halves (each decays less), down to 4 tokens; then the exact form in pieces of 8."""
    L = rc.shape[1]
    inc = lw.cumsum(dim=1)  # inclusive cumulative log decay (H, L, N)
    total = inc[:, -1:, :]  # (H, 1, N)
    if factorise and float(total.min()) >= -2 * FACTOR_LIMIT:
        exc = inc - lw  # decay from the chunk's start to just before t
        half = total * 0.5
        # att[t, s] = sum_n r_t k_s e^(exc_t - inc_s), s < t: the exponent is <= 0 there; the
        # masked s >= t entries may overflow to inf, and tril_ replaces them with zeros
        att = ((rc * (exc - half).exp()) @ (kc * (half - inc).exp()).transpose(1, 2)).tril_(-1)
        out = att @ vc + (rc * exc.exp()) @ s  # + the state carried into the chunk
        s = (total.transpose(1, 2).exp() * s).baddbmm_((kc * (total - inc).exp()).transpose(1, 2), vc)
        return out, s
    if factorise and L > 4:  # a channel forgets fast: halves decay half as much
        m = (L + 1) // 2
        first, s = _wkv_chunk(rc[:, :m], kc[:, :m], vc[:, :m], lw[:, :m], s, factorise)
        second, s = _wkv_chunk(rc[:, m:], kc[:, m:], vc[:, m:], lw[:, m:], s, factorise)
        return torch.cat((first, second), dim=1), s
    outs = []
    for e0 in range(0, L, 8):  # the exact form, in pieces of 8
        out, s = _wkv_exact(rc[:, e0:e0 + 8], kc[:, e0:e0 + 8], vc[:, e0:e0 + 8], lw[:, e0:e0 + 8], s)
        outs.append(out)
    return torch.cat(outs, dim=1), s


def _wkv_exact(rc, kc, vc, lw, s):
    """One chunk (H, L, N) without the current-token term, every exponent <= 0."""
    L = rc.shape[1]
    inc = lw.cumsum(dim=1)
    exc = inc - lw  # exclusive: decay from the chunk start to just before t
    # decay from s (exclusive) to t (exclusive) for s < t: exc_t - inc_s
    diff = exc.unsqueeze(2) - inc.unsqueeze(1)  # (H, Lt, Ls, N)
    mask = torch.ones(L, L, dtype=torch.bool, device=rc.device).tril(-1)
    diff = diff.masked_fill(~mask.view(1, L, L, 1), float("-inf"))
    att = torch.einsum("htn,hsn,htsn->hts", rc, kc, diff.exp())  # (H, L, L)
    out = att @ vc + (rc * exc.exp()) @ s  # + the state carried into the chunk
    total = inc[:, -1:, :]  # (H, 1, N)
    s = total.transpose(1, 2).exp() * s + (kc * (total - inc).exp()).transpose(1, 2) @ vc
    return out, s
