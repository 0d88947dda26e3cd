"""RWKV-5 (5.0, 5.1, 5.2 "Eagle"): multi-head matrix-valued state with a learned decay per channel.

5.0 has no gate and a decay per head; 5.1 adds the SiLU gate; 5.2 has a decay per channel.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from roost.engine.arch.common import (
    GROUP_NORM_EPS,
    channel_mix,
    ffn_shapes,
    last,
    layer_norm,
    prepare_ffn,
    stacked_mix,
    token_shift,
    vec,
    wkv_chunked,
)
from roost.engine.linear import linear, linear_many


def _gated(cfg) -> bool:
    return cfg.arch != "v5.0"


def _mix(cfg) -> tuple[str, ...]:
    return ("time_mix_k", "time_mix_v", "time_mix_r") + (("time_mix_g",) if _gated(cfg) else ())


def lora_shapes(cfg) -> dict:
    return {}  # RWKV-5 has no low-rank matrices


def expected_shapes(cfg, keys) -> dict:
    c, a, h, n = cfg.n_embd, cfg.n_att, cfg.n_head, cfg.head_size
    per_head = (h, n) if cfg.arch == "v5.2" else (h,)
    shapes = {}
    for i in range(cfg.n_layer):
        p = f"blocks.{i}."
        shapes.update({p + x: (c,) for x in ("ln1.weight", "ln1.bias", "ln2.weight", "ln2.bias")})
        shapes.update({p + "att." + m: (c,) for m in _mix(cfg)})
        shapes[p + "att.time_decay"] = per_head
        shapes[p + ("att.time_faaaa" if p + "att.time_faaaa" in keys else "att.time_first")] = per_head
        mats = ("key", "value", "receptance") + (("gate",) if _gated(cfg) else ())
        shapes.update({p + f"att.{m}.weight": (a, c) for m in mats})
        shapes.update({p + "att.output.weight": (c, a), p + "att.ln_x.weight": (a,), p + "att.ln_x.bias": (a,)})
        shapes.update(ffn_shapes(p, cfg, gated=True, mix=("time_mix_k", "time_mix_r")))
    return shapes


def prepare_layer(t, i: int, cfg, dtype, big) -> dict:
    p = f"blocks.{i}."
    h, n = cfg.n_head, cfg.head_size
    w = {x: vec(t[p + x], dtype) for x in ("ln1.weight", "ln1.bias", "ln2.weight", "ln2.bias")}
    w["att.mix"] = stacked_mix(t, p + "att.", _mix(cfg), dtype)  # (3 or 4, 1, C): k, v, r(, g)
    f32 = torch.float32
    # log of the decay w = exp(-exp(time_decay)), per channel (H, N)
    w["att.logw"] = (-torch.exp(t[p + "att.time_decay"].to(f32))).reshape(h, -1).expand(h, n).contiguous()
    if p + "att.time_faaaa" in t:  # the bonus stored as is (5.2 files)
        u = t[p + "att.time_faaaa"].to(f32)
    else:  # older files store its log
        u = torch.exp(t[p + "att.time_first"].to(f32))
    w["att.u"] = u.reshape(h, -1).expand(h, n).contiguous()
    mats = ("key", "value", "receptance", "output") + (("gate",) if _gated(cfg) else ())
    w.update({f"att.{m}.weight": big(t, f"{p}att.{m}.weight") for m in mats})
    w["att.ln_x.weight"] = vec(t[p + "att.ln_x.weight"], f32)
    w["att.ln_x.bias"] = vec(t[p + "att.ln_x.bias"], f32)
    if cfg.has_time_state:
        w["att.time_state"] = time_state(t[p + "att.time_state"], cfg)
    w.update(prepare_ffn(t, p, dtype, big, ("time_mix_k", "time_mix_r")))
    return w


def time_state(stored: torch.Tensor, cfg) -> torch.Tensor:
    """A state-tuned starting state as files store it, (H, V, K) per head (RWKV-PEFT trains it so),
    in this runtime's layout: float32 (H, K, V), as the reference takes it (the rwkv package
    transposes a checkpoint's time_state, ChatRWKV's API_DEMO_CHAT.py a state file's). The one
    conversion for RWKV-5 and -6, for checkpoints that carry it and for separate state files."""
    h, n = cfg.n_head, cfg.head_size
    return stored.to(torch.float32).reshape(h, n, n).transpose(1, 2).contiguous()


def init_state(cfg, w: dict, dtype) -> tuple:
    """A fresh state: zeros, or the starting state in ``w["att.time_state"]`` (see time_state)."""
    c, h, n = cfg.n_embd, cfg.n_head, cfg.head_size
    s = w["att.time_state"].clone() if "att.time_state" in w else torch.zeros(h, n, n)
    return (torch.zeros(c, dtype=dtype), s, torch.zeros(c, dtype=dtype))


def wkv_output(x, y, g, w, h):
    """Group norm over heads, optional gate, output projection. y (T, H*N) float32."""
    y = F.group_norm(y, h, weight=w["att.ln_x.weight"], bias=w["att.ln_x.bias"], eps=GROUP_NORM_EPS)
    y = y.to(x.dtype)
    if g is not None:
        y = y * g
    return linear(y, w["att.output.weight"])


def time_mix(x, prev, s, w, cfg):
    T, h, n = x.shape[0], cfg.n_head, cfg.head_size
    sx = token_shift(x, prev)
    mixed = torch.addcmul(sx, x - sx, w["att.mix"])  # x * mix + sx * (1 - mix), all of them: (n, T, C)
    k, v, r, *g = linear_many(mixed, [w[f"att.{m}.weight"] for m in ("key", "value", "receptance", "gate")[:len(mixed)]])
    r, k, v = (z.float().view(T, h, n) for z in (r, k, v))
    g = F.silu(g[0]) if g else None
    y, s = wkv_chunked(r, k, v, w["att.logw"].expand(T, h, n), w["att.u"], s)
    return wkv_output(x, y.reshape(T, h * n), g, w, h), s, last(x, prev)


def layer(x, w, st, cfg, carry):
    att_x, s, ffn_x = st
    h, s, att_x = time_mix(layer_norm(x, w["ln1.weight"], w["ln1.bias"]), att_x, s, w, cfg)
    x = x + h
    h, ffn_x = channel_mix(layer_norm(x, w["ln2.weight"], w["ln2.bias"]), ffn_x, w, maa=False)
    return x + h, (att_x, s, ffn_x), carry
