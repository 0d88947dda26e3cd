"""RWKV-4: per-channel exponential decay with numerically safe running sums (aa, bb, pp)."""

from __future__ import annotations

import torch

from roost.engine.arch.common import (
    channel_mix,
    ffn_shapes,
    last,
    layer_norm,
    prepare_ffn,
    stacked_mix,
    token_shift,
    vec,
)
from roost.engine.linear import linear, linear_many

_MIX = ("time_mix_k", "time_mix_v", "time_mix_r")


def lora_shapes(cfg) -> dict:
    return {}  # RWKV-4 has no low-rank matrices


def expected_shapes(cfg, keys) -> dict:
    c, a = cfg.n_embd, cfg.n_att
    shapes = {}
    for i in range(cfg.n_layer):
        p = f"blocks.{i}."
        shapes.update({p + n: (c,) for n in ("ln1.weight", "ln1.bias", "ln2.weight", "ln2.bias")})
        shapes.update({p + "att." + m: (c,) for m in _MIX})
        shapes.update({p + "att.time_decay": (a,), p + "att.time_first": (a,)})
        shapes.update({p + f"att.{m}.weight": (a, c) for m in ("key", "value", "receptance")})
        shapes[p + "att.output.weight"] = (c, a)
        shapes.update(ffn_shapes(p, cfg, gated=True, mix=("time_mix_k", "time_mix_r")))
    return shapes


def prepare_layer(t, i: int, cfg, dtype, big) -> dict:
    p = f"blocks.{i}."
    w = {n: vec(t[p + n], dtype) for n in ("ln1.weight", "ln1.bias", "ln2.weight", "ln2.bias")}
    w["att.mix"] = stacked_mix(t, p + "att.", _MIX, dtype)  # (3, 1, C): k, v, r
    w["att.time_decay"] = -torch.exp(vec(t[p + "att.time_decay"], torch.float32))
    w["att.time_first"] = vec(t[p + "att.time_first"], torch.float32)
    for m in ("key", "value", "receptance", "output"):
        w[f"att.{m}.weight"] = big(t, f"{p}att.{m}.weight")
    w.update(prepare_ffn(t, p, dtype, big, ("time_mix_k", "time_mix_r")))
    return w


def init_state(cfg, w: dict, dtype) -> tuple:
    c, a = cfg.n_embd, cfg.n_att
    z = torch.zeros
    return (z(c, dtype=dtype), z(a), z(a), torch.full((a,), -1e30), z(c, dtype=dtype))


def time_mix(x, prev, aa, bb, pp, w):
    """x (T, C) normed. Returns out (T, C), the new (aa, bb, pp) and the last x."""
    sx = token_shift(x, prev)
    mixed = torch.addcmul(sx, x - sx, w["att.mix"])  # x * mix + sx * (1 - mix) for k, v, r at once
    k, v, r = linear_many(mixed, [w[f"att.{m}.weight"] for m in ("key", "value", "receptance")])
    r, k, v = torch.sigmoid(r), k.float(), v.float()
    decay, first = w["att.time_decay"], w["att.time_first"]
    out = torch.empty_like(k)
    batched = aa.dim() == 2  # batched decoding: row b is one token of stream b, aa/bb/pp (B, A)
    for t in range(1 if batched else x.shape[0]):
        kt, vt = (k, v) if batched else (k[t], v[t])
        ww = first + kt
        p = torch.maximum(pp, ww)
        e1, e2 = torch.exp(pp - p), torch.exp(ww - p)
        if batched:
            out = (e1 * aa + e2 * vt) / (e1 * bb + e2)
        else:
            out[t] = (e1 * aa + e2 * vt) / (e1 * bb + e2)
        ww = decay + pp
        p = torch.maximum(ww, kt)
        e1, e2 = torch.exp(ww - p), torch.exp(kt - p)
        aa, bb, pp = e1 * aa + e2 * vt, e1 * bb + e2, p
    out = linear(r * out.to(x.dtype), w["att.output.weight"])
    return out, aa, bb, pp, last(x, prev)


def layer(x, w, st, cfg, carry):
    att_x, aa, bb, pp, ffn_x = st
    h, aa, bb, pp, att_x = time_mix(layer_norm(x, w["ln1.weight"], w["ln1.bias"]), att_x, aa, bb, pp, w)
    x = x + h
    h, ffn_x = channel_mix(layer_norm(x, w["ln2.weight"], w["ln2.bias"]), ffn_x, w, maa=False)
    return x + h, (att_x, aa, bb, pp, ffn_x), carry
