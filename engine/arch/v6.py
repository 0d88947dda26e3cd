"""RWKV-6 "Finch" (x060): RWKV-5's heads with data-dependent token shift and decay (low-rank)."""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from roost.engine.arch.common import (
    as_f32,
    channel_mix,
    ffn_shapes,
    last,
    layer_norm,
    lora,
    low_rank_mat,
    mat,
    prepare_ffn,
    token_shift,
    vec,
    wkv_chunked,
)
from roost.engine.arch.v5 import init_state, time_state, wkv_output  # noqa: F401 (RWKV-6 keeps RWKV-5's state)
from roost.engine.linear import linear_many

_MAA = ("time_maa_x", "time_maa_w", "time_maa_k", "time_maa_v", "time_maa_r", "time_maa_g")
_LORA = ("time_maa_w1", "time_maa_w2", "time_decay_w1", "time_decay_w2")
# what an int8 / int4 CPU stage keeps as int8 rows (see prepare_layer; engine.memory counts them so)
PACKED_LOW_RANK = ("att.time_maa_w1", "att.time_decay_w1", "att.time_decay_w2")


def lora_shapes(cfg) -> dict:
    """The low-rank matrices' shapes in official x060 models (ranks 32 and 64, doubled from 4096 wide)."""
    c = cfg.n_embd
    d_mix, d_decay = (64, 128) if c >= 4096 else (32, 64)
    return {"att.time_maa_w1": (c, 5 * d_mix), "att.time_maa_w2": (5, d_mix, c),
            "att.time_decay_w1": (c, d_decay), "att.time_decay_w2": (d_decay, c)}


def expected_shapes(cfg, keys) -> dict:
    c, a, h, n = cfg.n_embd, cfg.n_att, cfg.n_head, cfg.head_size
    shapes = {}
    for i in range(cfg.n_layer):
        p = f"blocks.{i}."
        shapes.update({p + x: (c,) for x in ("ln1.weight", "ln1.bias", "ln2.weight", "ln2.bias")})
        shapes.update({p + "att." + m: (c,) for m in _MAA})
        shapes.update({p + "att." + m: None for m in _LORA})
        shapes.update({p + "att.time_decay": (a,), p + "att.time_faaaa": (h, n)})
        shapes.update({p + f"att.{m}.weight": (a, c) for m in ("key", "value", "receptance", "gate")})
        shapes.update({p + "att.output.weight": (c, a), p + "att.ln_x.weight": (a,), p + "att.ln_x.bias": (a,)})
        shapes.update(ffn_shapes(p, cfg, gated=True, mix=("time_maa_k", "time_maa_r")))
    return shapes


def prepare_layer(t, i: int, cfg, dtype, big) -> dict:
    p = f"blocks.{i}."
    h, n, f32 = cfg.n_head, cfg.head_size, torch.float32
    w = {x: vec(t[p + x], dtype) for x in ("ln1.weight", "ln1.bias", "ln2.weight", "ln2.bias")}
    w["att.time_maa_x"] = vec(t[p + "att.time_maa_x"], dtype)
    # the five mixes' base vectors stacked in the LoRA's output order: one op mixes all five
    w["att.maa"] = torch.stack([vec(t[p + "att." + m], dtype) for m in _MAA[1:]]).unsqueeze(1)  # (5, 1, C)
    # an int8 / int4 CPU strategy keeps three of the low-rank matrices as int8 rows (a quarter of their
    # bytes, faster calls); time_maa_w2's five (D, C) products stay one float32 bmm (five calls cost more)
    packed = big.low_rank if getattr(big, "packs_low_rank", False) else functools.partial(low_rank_mat, dtype=dtype)
    w["att.time_maa_w1"] = packed(t[p + "att.time_maa_w1"])  # (C, 5*D)
    w["att.time_maa_w2"] = mat(t[p + "att.time_maa_w2"], dtype)  # (5, D, C)
    for m in ("att.time_decay_w1", "att.time_decay_w2"):  # (C, D2), (D2, C)
        w[m] = packed(t[p + m])
    w["att.time_decay"] = t[p + "att.time_decay"].to(f32).reshape(h, n).contiguous()
    w["att.u"] = t[p + "att.time_faaaa"].to(f32).reshape(h, n).contiguous()
    for m in ("key", "value", "receptance", "gate", "output"):
        w[f"att.{m}.weight"] = big(t, f"{p}att.{m}.weight")
    w["att.ln_x.weight"] = vec(t[p + "att.ln_x.weight"], f32)
    w["att.ln_x.bias"] = vec(t[p + "att.ln_x.bias"], f32)
    if cfg.has_time_state:
        w["att.time_state"] = time_state(t[p + "att.time_state"], cfg)
    w.update(prepare_ffn(t, p, dtype, big, ("time_maa_k", "time_maa_r")))
    return w


def time_mix(x, prev, s, w, cfg):
    T, h, n = x.shape[0], cfg.n_head, cfg.head_size
    d = token_shift(x, prev) - x  # (T, C)
    mix = torch.tanh(lora(x + d * w["att.time_maa_x"], w["att.time_maa_w1"]))  # (T, 5*D)
    mix = torch.bmm(mix.view(T, 5, -1).transpose(0, 1), w["att.time_maa_w2"])  # (5, T, C)
    # x + d * (maa + mix) for the five of them at once: w, k, v, r, g
    mixed = torch.addcmul(x, d, mix.add_(w["att.maa"]))  # (5, T, C)
    wx = mixed[0]
    k, v, r, g = linear_many(mixed[1:], [w[f"att.{m}.weight"] for m in ("key", "value", "receptance", "gate")])
    r, k, v = (as_f32(z).view(T, h, n) for z in (r, k, v))
    g = F.silu(g)
    dec = lora(torch.tanh(lora(wx, w["att.time_decay_w1"])), w["att.time_decay_w2"])  # (T, C)
    logw = -torch.exp(w["att.time_decay"] + as_f32(dec).view(T, h, n))  # log of exp(-exp(.))
    y, s = wkv_chunked(r, k, v, logw, w["att.u"], s)
    return wkv_output(x, y.reshape(T, h * n), g, w, h), s, last(x, prev)


def layer(x, w, st, cfg, carry):
    att_x, s, ffn_x = st
    h, s, att_x = time_mix(layer_norm(x, w["ln1.weight"], w["ln1.bias"]), att_x, s, w, cfg)
    x = x + h
    h, ffn_x = channel_mix(layer_norm(x, w["ln2.weight"], w["ln2.bias"]), ffn_x, w, maa=True)
    return x + h, (att_x, s, ffn_x), carry
