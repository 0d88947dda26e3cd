"""RWKV-7 "Goose" (x070, also the G1 models): a generalised delta rule with in-context learning rate.

Per head, the state S (N_v, N_k) evolves as  S <- S (diag(w) - kk^T (a * kk)) + v k^T
and the output reads it with r. Layer 0's values (v_first) are mixed into every later layer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from engine.arch.common import GROUP_NORM_EPS, layer_norm, mat, token_shift, vec
from engine.linear import linear

_MIX = ("x_r", "x_w", "x_k", "x_v", "x_a", "x_g")
_LORA = ("w1", "w2", "a1", "a2", "g1", "g2")
_LORA_V = ("v1", "v2")


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
    w.update({"att." + m: vec(t[p + "att." + m], dtype) for m in _MIX + ("a0", "k_k", "k_a", "r_k")})
    w["att.w0"] = vec(t[p + "att.w0"], f32)
    lora = _LORA + (_LORA_V if i > 0 else ())
    w.update({"att." + m: mat(t[p + "att." + m], dtype) for m in lora})
    if i > 0:
        w["att.v0"] = vec(t[p + "att.v0"], dtype)
    for m in ("key", "value", "receptance", "output"):
        w[f"att.{m}.weight"] = big(t, f"{p}att.{m}.weight")
    w["att.ln_x.weight"] = vec(t[p + "att.ln_x.weight"], f32)
    w["att.ln_x.bias"] = vec(t[p + "att.ln_x.bias"], f32)
    w["ffn.x_k"] = vec(t[p + "ffn.x_k"], dtype)
    w["ffn.key.weight"] = big(t, p + "ffn.key.weight")
    w["ffn.value.weight"] = big(t, p + "ffn.value.weight")
    return w


def init_state(cfg, w: dict, dtype) -> tuple:
    c, h, n = cfg.n_embd, cfg.n_head, cfg.head_size
    return (torch.zeros(c, dtype=dtype), torch.zeros(h, n, n), torch.zeros(c, dtype=dtype))


def wkv(r, w, k, v, kk, a, s):
    """The delta-rule recurrence, token by token. All (T, H, N) float32; s (H, N, N) as [v, k]."""
    out = torch.empty_like(r)
    for t in range(r.shape[0]):
        # s (diag(w) - kk^T (a*kk)) + v k^T
        s = s * w[t].unsqueeze(1) - (s @ kk[t].unsqueeze(2)) @ (kk[t] * a[t]).unsqueeze(1) \
            + v[t].unsqueeze(2) @ k[t].unsqueeze(1)
        out[t] = (s @ r[t].unsqueeze(2)).squeeze(2)
    return out, s


def time_mix(x, prev, s, v_first, w, cfg, first_layer: bool):
    T, h, n = x.shape[0], cfg.n_head, cfg.head_size
    d = token_shift(x, prev) - x
    xr, xw, xk, xv, xa, xg = (x + d * w["att." + m] for m in _MIX)

    r = linear(xr, w["att.receptance.weight"])
    k = linear(xk, w["att.key.weight"])
    v = linear(xv, w["att.value.weight"])
    dec = torch.tanh(xw @ w["att.w1"]) @ w["att.w2"]
    a = torch.sigmoid(w["att.a0"] + (xa @ w["att.a1"]) @ w["att.a2"])
    g = torch.sigmoid(xg @ w["att.g1"]) @ w["att.g2"]

    kk = F.normalize((k * w["att.k_k"]).view(T, h, n), dim=-1, p=2.0)
    k = k * (1 + (a - 1) * w["att.k_a"])
    if first_layer:
        v_first = v
    else:
        v = v + (v_first - v) * torch.sigmoid(w["att.v0"] + (xv @ w["att.v1"]) @ w["att.v2"])
    decay = torch.exp(-0.606531 * torch.sigmoid(w["att.w0"] + dec.float()))  # exp(-e^-0.5 sigmoid(.))

    f = lambda z: z.float().view(T, h, n)  # noqa: E731
    y, s = wkv(f(r), decay.view(T, h, n), f(k), f(v), kk.float(), f(a), s)
    y = F.group_norm(y.view(T, h * n), h, weight=w["att.ln_x.weight"], bias=w["att.ln_x.bias"],
                     eps=GROUP_NORM_EPS).to(x.dtype)
    bonus = (r * k * w["att.r_k"]).view(T, h, n).sum(-1, keepdim=True) * v.view(T, h, n)
    y = y + bonus.view(T, h * n)
    return linear(y * g, w["att.output.weight"]), s, x[-1].clone(), v_first


def channel_mix(x, prev, w):
    k = x + (token_shift(x, prev) - x) * w["ffn.x_k"]
    k = torch.relu(linear(k, w["ffn.key.weight"])).square()
    return linear(k, w["ffn.value.weight"]), x[-1].clone()


def layer(x, w, st, cfg, carry):
    att_x, s, ffn_x = st
    first = carry is None
    h, s, att_x, carry = time_mix(layer_norm(x, w["ln1.weight"], w["ln1.bias"]), att_x, s, carry, w, cfg, first)
    x = x + h
    h, ffn_x = channel_mix(layer_norm(x, w["ln2.weight"], w["ln2.bias"]), ffn_x, w)
    return x + h, (att_x, s, ffn_x), carry
