"""Whole layers in the compiled kernels: RWKV-7's one-token step (engine/csrc/native.cpp, rn_v7_step).

In PyTorch's eager mode a generated token of a 1.5B RWKV-7 runs ~3000 small operations around its
matrix products (~1 ms a layer of dispatch and Python); the compiled step does a layer in one call:
the same arithmetic as roost.engine.arch.v7 (the reference, which tests compare it with), the
products in the kernels' blocks (engine.native), the elementwise work in a few loops. It serves
one token of one stream (generation) and one token of each of B streams (batched decoding);
prompt chunks stay in PyTorch, whose matrix products do many rows best.

A layer gets a step where the compiled kernels are used and every matrix of the layer is in
their blocks: `cpu int8` and `cpu int4` layers on the CPU, except those kept in bf16 (RWKV-7's
first block under `cpu int8`, see engine.model.keeps_bf16), which run in PyTorch as before.
"""

from __future__ import annotations

import ctypes

import torch

from roost.engine import native
from roost.engine.native import BlockLinear

class _Mat(ctypes.Structure):
    _fields_ = [("bits", ctypes.c_int64), ("q", ctypes.c_void_p), ("d", ctypes.c_void_p), ("m", ctypes.c_void_p),
                ("N", ctypes.c_int64), ("K", ctypes.c_int64)]


_VECS = ("ln1_w", "ln1_b", "ln2_w", "ln2_b", "mix", "w0", "a0", "v0", "k_k", "k_a", "r_k", "lnx_w", "lnx_b", "ffn_xk")
_MATS = ("r", "k", "v", "o", "fk", "fv", "lr1", "lr2")


class _V7Layer(ctypes.Structure):  # RnV7Layer in native.cpp: keep the two in step
    _fields_ = ([(n, ctypes.c_int64) for n in ("C", "H", "N", "F", "R", "first")]
                + [("lr_at", ctypes.c_int64 * 4), ("lr_len", ctypes.c_int64 * 4)]
                + [(n, ctypes.c_void_p) for n in _VECS] + [(n, _Mat) for n in _MATS])


_KEYS = {"r": "att.receptance.weight", "k": "att.key.weight", "v": "att.value.weight", "o": "att.output.weight",
         "fk": "ffn.key.weight", "fv": "ffn.value.weight", "lr1": "att.lr1", "lr2": "att.lr2"}


class V7Step:
    """Layer ``i`` of an RWKV-7 model (its run-time weights ``lw``, see arch.v7.prepare_layer) as
    one compiled call: ``step(x, state, v_first) -> (x, state, v_first)``, as arch.v7.layer for one
    token (x (1, C), state (C), (H, N, N), (C)) or one token of each of B streams (x (B, C), state
    with a leading B)."""

    def __init__(self, lw: dict, cfg, i: int):
        c, h, n = cfg.n_embd, cfg.n_head, cfg.head_size
        self._keep = []  # every tensor the structure points into

        def vec(t: torch.Tensor) -> int:  # a per-channel vector as float32 (the same tensor if it is)
            t = t.reshape(-1).float().contiguous()
            self._keep.append(t)
            return t.data_ptr()

        lay = _V7Layer(C=c, H=h, N=n, F=lw["ffn.key.weight"].shape[0], R=lw["att.lr1"].shape[0], first=int(i == 0))
        first = lw["att.lr1"]
        for j, (at, size) in enumerate(zip(first.starts, first.sizes)):
            lay.lr_at[j], lay.lr_len[j] = at, size
        vecs = {"ln1_w": "ln1.weight", "ln1_b": "ln1.bias", "ln2_w": "ln2.weight", "ln2_b": "ln2.bias",
                "mix": "att.mix", "w0": "att.w0", "a0": "att.a0", "k_k": "att.k_k", "k_a": "att.k_a",
                "r_k": "att.r_k", "lnx_w": "att.ln_x.weight", "lnx_b": "att.ln_x.bias", "ffn_xk": "ffn.x_k"}
        for name, key in vecs.items():
            setattr(lay, name, vec(lw[key]))
        lay.v0 = vec(lw["att.v0"]) if i > 0 else None
        for name, key in _KEYS.items():
            m = lw[key]
            setattr(lay, name, _Mat(m.bits, m.q.data_ptr(), m.d.data_ptr(), m.m.data_ptr() if m.m is not None else None,
                                    m.shape[0], m.shape[1]))
            self._keep.append(m)
        self._layer, self._first, self._c = lay, i == 0, c
        self._lib = native._lib()

    @staticmethod
    def fits(lw: dict, cfg) -> bool:
        """Whether layer weights ``lw`` can run as a step: every matrix in q8 / q4 blocks, the
        low-rank pairs fused (arch.v7._fused_low_rank) in q8 blocks, heads of at most 256."""
        if cfg.head_size > 256 or "att.lr1" not in lw:
            return False
        lr = lw["att.lr1"], lw["att.lr2"]
        if not all(isinstance(m, BlockLinear) and m.bits == 8 for m in lr) or len(lr[0].sizes) > 4:
            return False
        return all(isinstance(lw[k], BlockLinear) for k in _KEYS.values())

    def __call__(self, x: torch.Tensor, st: tuple, v_first: torch.Tensor | None):
        att_x, s, ffn_x = st
        b = x.shape[0]
        x = x.contiguous()
        outs = torch.empty(3, *att_x.shape) if att_x.dim() == 2 else torch.empty(3, 1, self._c)
        x_out, att_out, ffn_out = outs[0].view(b, self._c), outs[1].view(att_x.shape), outs[2].view(ffn_x.shape)
        s_out = torch.empty_like(s)
        if self._first:
            v_first = torch.empty(b, self._c)
        elif v_first.dtype != torch.float32 or not v_first.is_contiguous():
            v_first = v_first.float().contiguous()
        native.sync_threads()
        rc = self._lib.rn_v7_step(ctypes.addressof(self._layer), b, x.data_ptr(), x_out.data_ptr(),
                                  att_x.contiguous().data_ptr(), att_out.data_ptr(), s.contiguous().data_ptr(),
                                  s_out.data_ptr(), ffn_x.contiguous().data_ptr(), ffn_out.data_ptr(),
                                  v_first.data_ptr())
        if rc != 0:
            raise RuntimeError("the compiled RWKV-7 step refused this layer")
        return x_out, (att_out, s_out, ffn_out), v_first


def v7_steps(layers: list[dict], cfg) -> list[V7Step | None]:
    """A step for each layer that can have one (V7Step.fits), else None (run in PyTorch)."""
    if not native.available():
        return [None] * len(layers)
    return [V7Step(lw, cfg, i) if V7Step.fits(lw, cfg) else None for i, lw in enumerate(layers)]
