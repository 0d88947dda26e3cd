"""RWKV-7 "Goose" (x070, also the G1 models): a generalised delta rule with in-context learning rate.

Per head, the state S (N_v, N_k) evolves as  S <- S (diag(w) - kk^T (a * kk)) + v k^T
and the output reads it with r. Layer 0's values (v_first) are mixed into every later layer.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from roost.engine.arch.common import GROUP_NORM_EPS, as_f32, last, layer_norm, lora, low_rank_mat, token_shift, vec
from roost.engine.linear import linear, linear_many

_MIX = ("x_r", "x_k", "x_v", "x_w", "x_a", "x_g")  # r, k, v first: linear_many takes them as one block
_LORA = ("w1", "w2", "a1", "a2", "g1", "g2")
_LORA_V = ("v1", "v2")
_FUSED = ("w", "a", "g", "v")  # the low-rank pairs in the order _fused_low_rank puts them
PACKED_LOW_RANK = tuple("att." + m for m in _LORA + _LORA_V)  # int8 rows in int8 / int4 CPU stages


def lora_shapes(cfg) -> dict:
    """The low-rank matrices' shapes as x070 training code sizes them for a width C (a multiple of
    32 near 1.8 sqrt(C) for decay and in-context rate, 1.3 sqrt(C) for value, 0.6 C^0.8 for gate;
    later G1 releases may differ a little, and these matrices are ~2% of a model's weights)."""
    c = cfg.n_embd

    def rank(x: float) -> int:
        return max(32, int(round(x / 32) * 32))

    shapes = {}
    for name, d in (("w", rank(1.8 * c ** 0.5)), ("a", rank(1.8 * c ** 0.5)), ("v", rank(1.3 * c ** 0.5)),
                    ("g", rank(0.6 * c ** 0.8))):
        shapes[f"att.{name}1"], shapes[f"att.{name}2"] = (c, d), (d, c)
    return shapes


def expected_shapes(cfg, keys) -> dict:
    c, a, h, n = cfg.n_embd, cfg.n_att, cfg.n_head, cfg.head_size
    shapes = {}
    for i in range(cfg.n_layer):
        p = f"blocks.{i}."
        shapes.update({p + x: (c,) for x in ("ln1.weight", "ln1.bias", "ln2.weight", "ln2.bias")})
        shapes.update({p + "att." + m: (c,) for m in _MIX + ("w0", "a0", "k_k", "k_a")})
        shapes.update({p + "att." + m: None for m in _LORA})
        if i > 0:
            shapes.update({p + "att.v0": (c,), p + "att.v1": None, p + "att.v2": None})
        shapes[p + "att.r_k"] = (h, n)
        shapes.update({p + f"att.{m}.weight": (a, c) for m in ("key", "value", "receptance")})
        shapes.update({p + "att.output.weight": (c, a), p + "att.ln_x.weight": (a,), p + "att.ln_x.bias": (a,)})
        shapes.update({p + "ffn.x_k": (c,), p + "ffn.key.weight": (cfg.n_ffn, c), p + "ffn.value.weight": (c, cfg.n_ffn)})
    return shapes


def prepare_layer(t, i: int, cfg, dtype, big) -> dict:
    p = f"blocks.{i}."
    f32 = torch.float32
    w = {x: vec(t[p + x], dtype) for x in ("ln1.weight", "ln1.bias", "ln2.weight", "ln2.bias")}
    w.update({"att." + m: vec(t[p + "att." + m], dtype) for m in ("a0", "k_k", "k_a", "r_k")})
    w["att.mix"] = torch.stack([vec(t[p + "att." + m], dtype) for m in _MIX]).unsqueeze(1)  # (6, 1, C)
    w["att.w0"] = vec(t[p + "att.w0"], f32)
    if getattr(big, "packs_low_rank", False):
        w.update(_fused_low_rank(t, p, i, big.low_rank, pad_to=getattr(big, "pad_low_rank", 1)))
    else:
        for m in _LORA + (_LORA_V if i > 0 else ()):
            w["att." + m] = low_rank_mat(t[p + "att." + m], dtype)
    if i > 0:
        w["att.v0"] = vec(t[p + "att.v0"], dtype)
    for m in ("key", "value", "receptance", "output"):
        w[f"att.{m}.weight"] = big(t, f"{p}att.{m}.weight")
    w["att.ln_x.weight"] = vec(t[p + "att.ln_x.weight"], f32)
    w["att.ln_x.bias"] = vec(t[p + "att.ln_x.bias"], f32)
    w["ffn.x_k"] = vec(t[p + "ffn.x_k"], dtype)
    w["ffn.key.weight"] = big(t, p + "ffn.key.weight")
    w["ffn.value.weight"] = big(t, p + "ffn.value.weight")
    if cfg.has_time_state:  # a state-tuned model's starting state
        w["att.time_state"] = time_state(t[p + "att.time_state"], cfg)
    return w


def _fused_low_rank(t, p: str, i: int, pack, pad_to: int = 1) -> dict:
    """A layer's low-rank pairs (decay w, in-context rate a, gate g and, after layer 0, value v) as
    two packed products, for int8 / int4 CPU stages: the first matrices side by side (C, sum of
    ranks), the second ones stacked (sum of ranks, C). One call each instead of four: these
    products are tiny and each call costs ~30 us (1.5B shape, one token: 8 calls a layer took
    ~6 ms of a ~65 ms token). The ranks are padded with zeros to a multiple of ``pad_to``
    (the compiled kernels' blocks take whole pairs of 32). On the first: ``sizes`` and ``starts``,
    each pair's ranks and first column; ``others``, (n, 1, padded ranks), True outside each pair's
    own columns; ``decay`` and ``gate``, the columns of those two pairs."""
    kinds = _FUSED if i > 0 else _FUSED[:3]
    sizes = [t[f"{p}att.{k}1"].shape[1] for k in kinds]
    starts = [sum(sizes[:j]) for j in range(len(sizes))]
    width = -(-sum(sizes) // pad_to) * pad_to  # zeros after the pairs
    firsts = [t[f"{p}att.{k}1"] for k in kinds]
    seconds = [t[f"{p}att.{k}2"] for k in kinds]
    if width > sum(sizes):
        firsts.append(firsts[0].new_zeros(firsts[0].shape[0], width - sum(sizes)))
        seconds.append(seconds[0].new_zeros(width - sum(sizes), seconds[0].shape[1]))
    first = pack(torch.cat(firsts, dim=1), from_file=False)
    cols = torch.arange(width)
    first.sizes = tuple(sizes)
    first.others = torch.stack([(cols < a) | (cols >= a + r) for a, r in zip(starts, sizes)]).unsqueeze(1)
    first.decay, first.gate = slice(0, sizes[0]), slice(starts[2], starts[2] + sizes[2])
    first.starts = tuple(starts)
    second = pack(torch.cat(seconds, dim=0), from_file=False)
    return {"att.lr1": first, "att.lr2": second}


def _fused_products(xs: list, w: dict) -> list:
    """The second products of the fused low-rank pairs (see _fused_low_rank) for the inputs ``xs``
    (each (T, C): decay, rate, gate[, value]), the decay's tanh and the gate's sigmoid between the
    two. The first product takes the inputs as rows; each input keeps only its own pair's columns
    (``others``: the rest, zeroed), so that one product with the stacked second matrices gives each
    input's own result (the zeros add nothing). A dozen small operations a layer, whatever n."""
    T, n = xs[0].shape[0], len(xs)
    first = w["att.lr1"]
    h = lora(torch.cat(xs), first).view(n, T, -1).masked_fill_(first.others, 0.0)  # (n, T, R)
    h[0, :, first.decay].tanh_()
    h[2, :, first.gate].sigmoid_()
    return lora(h.view(n * T, -1), w["att.lr2"]).view(n, T, -1).unbind(0)  # n of (T, C)


def time_state(stored: torch.Tensor, cfg) -> torch.Tensor:
    """A state-tuned starting state as files store it, (H, V, K) per head, in this runtime's layout:
    float32 and kept as stored, since RWKV-7's state is (H, V, K) here as in the reference
    (RWKV_x070 reads out with state @ r). The one conversion for checkpoints that carry it and for
    separate state files."""
    h, n = cfg.n_head, cfg.head_size
    return stored.to(torch.float32).reshape(h, n, n).contiguous()


def init_state(cfg, w: dict, dtype) -> tuple:
    """A fresh state: zeros, or the starting state in ``w["att.time_state"]`` (see time_state)."""
    c, h, n = cfg.n_embd, cfg.n_head, cfg.head_size
    s = w["att.time_state"].clone() if "att.time_state" in w else torch.zeros(h, n, n)
    return (torch.zeros(c, dtype=dtype), s, torch.zeros(c, dtype=dtype))


CHUNK = 32  # decays are >= exp(-0.6065) per token, so exp(+-cumsum) over a chunk stays < 2e8


def wkv(r, logw, k, v, kk, a, s):
    """The delta-rule recurrence over T tokens. All (T, H, N) float32 (logw: log of the decay w);
    s (H, N, N) as [v, k]. Batched decoding: s (B, H, N, N) and row b one token of stream b."""
    if s.dim() == 4:
        return wkv_step(r, logw.exp(), k, v, kk, a, s)
    if r.shape[0] == 1:
        out, s = wkv_step(r[0], logw[0].exp(), k[0], v[0], kk[0], a[0], s)
        return out.unsqueeze(0), s
    outs = []
    for c0 in range(0, r.shape[0], CHUNK):
        sl = slice(c0, c0 + CHUNK)
        o, s = wkv_chunk(r[sl], logw[sl], k[sl], v[sl], kk[sl], a[sl], s)
        outs.append(o)
    return torch.cat(outs), s


def wkv_step(r, w, k, v, kk, a, s):
    """One token: s <- s (diag(w) - kk^T (a*kk)) + v k^T; out = s r. Vectors (H, N), s (H, N, N);
    batched decoding: (B, H, N) and (B, H, N, N), run as B*H heads.

    The state is read twice and written once: one product gives both s kk and s (w*r) (since
    s diag(w) r = s (w*r)); the two outer products are one rank-2 update [-s kk, v] @ [a*kk; k];
    the output is s (w*r) + [-s kk, v] ([a*kk; k] r), without reading the new state again."""
    if s.dim() == 4:
        b, h, n = r.shape
        out, s = wkv_step(*(z.reshape(b * h, n) for z in (r, w, k, v, kk, a)), s.reshape(b * h, n, n))
        return out.view(b, h, n), s.view(b, h, n, n)
    sk = s @ torch.stack((kk, w * r), dim=2)  # (H, N, 2): s kk, s (w*r)
    left = torch.stack((sk[..., 0].neg(), v), dim=2)  # (H, N, 2)
    right = torch.stack((kk * a, k), dim=1)  # (H, 2, N)
    out = torch.baddbmm(sk[..., 1:], left, right @ r.unsqueeze(2)).squeeze(2)
    s = (s * w.unsqueeze(1)).baddbmm_(left, right)  # in place on the new tensor
    return out, s


@functools.lru_cache(maxsize=8)
def _masks(L: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """For (L, 2L) products against [b_hat; k_hat]: True where s >= t (zeroed for the state's
    WY factors, strictly causal) and where s > t (zeroed for the outputs, causal)."""
    t = torch.arange(L, device=device)
    later = (t.unsqueeze(0) > t.unsqueeze(1)).repeat(1, 2)  # [t, s]: s > t
    return later | torch.eye(L, dtype=torch.bool, device=device).repeat(1, 2), later


def wkv_chunk(r, logw, k, v, kk, a, s):
    """A chunk of tokens at once, exactly, in the WY form of the delta rule.

    Writing S_t = S_{t-1} diag(w_t) + u_t b_t^T + v_t k_t^T with u_t = S_{t-1} (-kk_t) and
    b_t = kk_t * a_t, the u_t of a chunk solve one unit lower-triangular system; outputs and the
    final state are then matrix products. g_t = prod of w up to t (exp of a cumulative sum).
    The b and k sides are stacked, [b_hat; k_hat] and [u; v], so that each step is one product.
    """
    r, logw, k, v, kk, a = (z.transpose(0, 1) for z in (r, logw, k, v, kk, a))  # (H, L, N)
    H, L, N = r.shape
    cum = logw.cumsum(dim=1)  # log g_t
    g = cum.exp()
    alpha = (cum - logw).exp_().mul_(kk).neg_()  # -kk_t g_{t-1}: S_{t-1} is reached from S_s by g_{t-1} / g_s
    bk = (torch.stack((kk * a, k), dim=1) / g.unsqueeze(1)).view(H, 2 * L, N)  # [b_hat; k_hat]
    not_strict, not_upto = _masks(L, r.device)
    AB = (alpha @ bk.transpose(1, 2)).masked_fill_(not_strict, 0)  # [A | B], (H, L, 2L)
    eye = torch.eye(L, dtype=r.dtype, device=r.device)
    rhs = (alpha @ s.transpose(1, 2)).baddbmm_(AB[:, :, L:], v)
    u = torch.linalg.solve_triangular(eye - AB[:, :, :L], rhs, upper=False, unitriangular=True)  # (H, L, N_v)
    uv = torch.cat((u, v), dim=1)  # (H, 2L, N)
    r_hat = r * g
    out = (r_hat @ s.transpose(1, 2)).baddbmm_((r_hat @ bk.transpose(1, 2)).masked_fill_(not_upto, 0), uv)
    g_last = g[:, -1:, :]  # (H, 1, N)
    s = (s * g_last).baddbmm_(uv.transpose(1, 2), bk * g_last)
    return out.transpose(0, 1), s


def time_mix(x, prev, s, v_first, w, cfg, first_layer: bool):
    T, h, n = x.shape[0], cfg.n_head, cfg.head_size
    d = token_shift(x, prev) - x
    mixed = torch.addcmul(x, d, w["att.mix"])  # x + d * x_r, ... (_MIX) at once
    xv, xw, xa, xg = mixed[2:].unbind(0)
    r, k, v = linear_many(mixed[:3], [w[f"att.{m}.weight"] for m in ("receptance", "key", "value")])
    if "att.lr1" in w:  # int8 / int4 CPU stages: the four low-rank pairs in two calls
        dec, a, g, *v_mix = _fused_products([xw, xa, xg] + ([] if first_layer else [xv]), w)
    else:
        dec = lora(torch.tanh(lora(xw, w["att.w1"])), w["att.w2"])
        a = lora(lora(xa, w["att.a1"]), w["att.a2"])
        g = lora(torch.sigmoid(lora(xg, w["att.g1"])), w["att.g2"])
        v_mix = [] if first_layer else [lora(lora(xv, w["att.v1"]), w["att.v2"])]
    a = torch.sigmoid(w["att.a0"] + a)

    kk = F.normalize((k * w["att.k_k"]).view(T, h, n), dim=-1, p=2.0)
    k = k * (1 + (a - 1) * w["att.k_a"])
    if first_layer:
        v_first = v
    else:
        v = v + (v_first - v) * torch.sigmoid(w["att.v0"] + v_mix[0])
    logw = torch.sigmoid(w["att.w0"] + as_f32(dec)).mul_(-0.606531)  # log decay: w = exp(-e^-0.5 sigmoid(.))

    if T == 1 and s.dim() == 3:  # one token: (H, N) vectors straight into the step (fewer small ops)
        f = lambda z: as_f32(z).view(h, n)  # noqa: E731
        y, s = wkv_step(f(r), logw.exp_().view(h, n), f(k), f(v), as_f32(kk).view(h, n), f(a), s)
    else:
        f = lambda z: as_f32(z).view(T, h, n)  # noqa: E731
        y, s = wkv(f(r), logw.view(T, h, n), f(k), f(v), as_f32(kk), f(a), s)
    y = F.group_norm(y.view(T, h * n), h, weight=w["att.ln_x.weight"], bias=w["att.ln_x.bias"],
                     eps=GROUP_NORM_EPS).to(x.dtype)
    bonus = (r * k * w["att.r_k"]).view(T, h, n).sum(-1, keepdim=True) * v.view(T, h, n)
    y = y + bonus.view(T, h * n)
    return linear(y * g, w["att.output.weight"]), s, last(x, prev), v_first


def channel_mix(x, prev, w):
    k = x + (token_shift(x, prev) - x) * w["ffn.x_k"]
    k = torch.relu(linear(k, w["ffn.key.weight"])).square()
    return linear(k, w["ffn.value.weight"]), last(x, prev)


def layer(x, w, st, cfg, carry):
    att_x, s, ffn_x = st
    first = carry is None
    h, s, att_x, carry = time_mix(layer_norm(x, w["ln1.weight"], w["ln1.bias"]), att_x, s, carry, w, cfg, first)
    x = x + h
    h, ffn_x = channel_mix(layer_norm(x, w["ln2.weight"], w["ln2.bias"]), ffn_x, w)
    return x + h, (att_x, s, ffn_x), carry
