"""Whole layers in the compiled kernels: RWKV-7's and RWKV-6's one-token steps (engine/csrc/native.cpp,
rn_v7_step and rn_v6_step).

In PyTorch's eager mode a generated token of a 1.5B RWKV-7 runs ~3000 small operations around its
matrix products (~1 ms a layer of dispatch and Python); the compiled step does a layer in one call:
the same arithmetic as roost.engine.arch.v7 / v6 (the references, which tests compare them with), the
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

_V6_VECS = ("ln1_w", "ln1_b", "ln2_w", "ln2_b", "maa_x", "maa", "maa_w2", "decay", "u", "lnx_w", "lnx_b", "ffn_mix")
_V6_KEYS = {"k": "att.key.weight", "v": "att.value.weight", "r": "att.receptance.weight", "g": "att.gate.weight",
            "o": "att.output.weight", "fk": "ffn.key.weight", "fv": "ffn.value.weight",
            "fr": "ffn.receptance.weight", "mw1": "att.time_maa_w1", "dw1": "att.time_decay_w1",
            "dw2": "att.time_decay_w2"}


class _V6Layer(ctypes.Structure):  # RnV6Layer in native.cpp: keep the two in step
    _fields_ = ([(n, ctypes.c_int64) for n in ("C", "H", "N", "F", "D", "D2")]
                + [(n, ctypes.c_void_p) for n in _V6_VECS] + [(n, _Mat) for n in _V6_KEYS])


class _Step:
    """What both steps share: the float32 vectors and the matrices the structure points into
    (kept alive here), and the call with the state's new tensors."""

    _keys: dict = {}

    def __init__(self):
        self._keep = []  # every tensor the structure points into
        self._lib = native._lib()

    def _vec(self, t: torch.Tensor) -> int:
        """A parameter as contiguous float32 (the same tensor if it is), its address."""
        t = t.float().contiguous()
        self._keep.append(t)
        return t.data_ptr()

    def _mats(self, lay, lw: dict) -> None:
        for name, key in self._keys.items():
            m = lw[key]
            setattr(lay, name, _Mat(m.bits, m.q.data_ptr(), m.d.data_ptr(), m.m.data_ptr() if m.m is not None else None,
                                    m.shape[0], m.shape[1]))
            self._keep.append(m)

    @classmethod
    def _all_in_blocks(cls, lw: dict) -> bool:
        return all(isinstance(lw.get(k), BlockLinear) for k in cls._keys.values())

    def _run(self, fn, x: torch.Tensor, st: tuple, *extra, in_place: bool = False):
        """``fn`` (rn_v7_step / rn_v6_step) on x and the state (att_x, s, ffn_x): the new state in
        new tensors, or, ``in_place``, in the state's own (contiguous float32) tensors, which
        saves a batch of 8 streams 4 MB of fresh memory a layer (page faults were ~7% of a step)."""
        att_x, s, ffn_x = st
        b, c = x.shape[0], x.shape[-1]
        x = x.contiguous()
        if in_place and all(t.is_contiguous() and t.dtype == torch.float32 for t in st):
            x_out, att_out, s_out, ffn_out = torch.empty(b, c), att_x, s, ffn_x
        else:
            outs = torch.empty(3, *att_x.shape) if att_x.dim() == 2 else torch.empty(3, 1, c)
            x_out, att_out, ffn_out = outs[0].view(b, c), outs[1].view(att_x.shape), outs[2].view(ffn_x.shape)
            s_out = torch.empty_like(s)
        native.sync_threads()
        rc = fn(ctypes.addressof(self._layer), b, x.data_ptr(), x_out.data_ptr(), att_x.contiguous().data_ptr(),
                att_out.data_ptr(), s.contiguous().data_ptr(), s_out.data_ptr(), ffn_x.contiguous().data_ptr(),
                ffn_out.data_ptr(), *extra)
        if rc != 0:
            raise RuntimeError("the compiled layer step refused this layer")
        return x_out, (att_out, s_out, ffn_out)


class V7Step(_Step):
    """Layer ``i`` of an RWKV-7 model (its run-time weights ``lw``, see arch.v7.prepare_layer) as
    one compiled call: ``step(x, state, v_first) -> (x, state, v_first)``, as arch.v7.layer for one
    token (x (1, C), state (C), (H, N, N), (C)) or one token of each of B streams (x (B, C), state
    with a leading B)."""

    _keys = _KEYS

    def __init__(self, lw: dict, cfg, i: int):
        super().__init__()
        c, h, n = cfg.n_embd, cfg.n_head, cfg.head_size
        lay = _V7Layer(C=c, H=h, N=n, F=lw["ffn.key.weight"].shape[0], R=lw["att.lr1"].shape[0], first=int(i == 0))
        first = lw["att.lr1"]
        for j, (at, size) in enumerate(zip(first.starts, first.sizes)):
            lay.lr_at[j], lay.lr_len[j] = at, size
        vecs = {"ln1_w": "ln1.weight", "ln1_b": "ln1.bias", "ln2_w": "ln2.weight", "ln2_b": "ln2.bias",
                "mix": "att.mix", "w0": "att.w0", "a0": "att.a0", "k_k": "att.k_k", "k_a": "att.k_a",
                "r_k": "att.r_k", "lnx_w": "att.ln_x.weight", "lnx_b": "att.ln_x.bias", "ffn_xk": "ffn.x_k"}
        for name, key in vecs.items():
            setattr(lay, name, self._vec(lw[key].reshape(-1)))
        lay.v0 = self._vec(lw["att.v0"].reshape(-1)) if i > 0 else None
        self._mats(lay, lw)
        self._layer, self._first, self._c = lay, i == 0, c

    @classmethod
    def fits(cls, lw: dict, cfg) -> bool:
        """Whether layer weights ``lw`` can run as a step: every matrix in q8 / q4 blocks, the
        low-rank pairs fused (arch.v7._fused_low_rank) in q8 blocks, heads of at most 256."""
        if cfg.head_size > 256 or "att.lr1" not in lw:
            return False
        lr = lw["att.lr1"], lw["att.lr2"]
        if not all(isinstance(m, BlockLinear) and m.bits == 8 for m in lr) or len(lr[0].sizes) > 4:
            return False
        return cls._all_in_blocks(lw)

    def __call__(self, x: torch.Tensor, st: tuple, v_first: torch.Tensor | None, *, in_place: bool = False):
        if self._first:
            v_first = torch.empty(x.shape[0], self._c)
        elif v_first.dtype != torch.float32 or not v_first.is_contiguous():
            v_first = v_first.float().contiguous()
        x_out, st = self._run(self._lib.rn_v7_step, x, st, v_first.data_ptr(), in_place=in_place)
        return x_out, st, v_first


class V6Step(_Step):
    """Layer ``i`` of an RWKV-6 model (its run-time weights ``lw``, see arch.v6.prepare_layer) as
    one compiled call: ``step(x, state, carry) -> (x, state, carry)``, as arch.v6.layer for one
    token or one token of each of B streams (``carry`` is passed through: RWKV-6 has none)."""

    _keys = _V6_KEYS

    def __init__(self, lw: dict, cfg, i: int):
        super().__init__()
        c, h, n = cfg.n_embd, cfg.n_head, cfg.head_size
        w2 = lw["att.time_maa_w2"]  # (5, D, C), float
        lay = _V6Layer(C=c, H=h, N=n, F=lw["ffn.key.weight"].shape[0], D=w2.shape[1],
                       D2=lw["att.time_decay_w1"].shape[0])
        vecs = {"ln1_w": lw["ln1.weight"], "ln1_b": lw["ln1.bias"], "ln2_w": lw["ln2.weight"],
                "ln2_b": lw["ln2.bias"], "maa_x": lw["att.time_maa_x"], "maa": lw["att.maa"], "maa_w2": w2,
                "decay": lw["att.time_decay"], "u": lw["att.u"], "lnx_w": lw["att.ln_x.weight"],
                "lnx_b": lw["att.ln_x.bias"], "ffn_mix": lw["ffn.mix"]}
        for name, t in vecs.items():
            setattr(lay, name, self._vec(t.reshape(-1)))
        self._mats(lay, lw)
        self._layer = lay

    @classmethod
    def fits(cls, lw: dict, cfg) -> bool:
        """Whether layer weights ``lw`` can run as a step: every matrix in q8 / q4 blocks (the
        low-rank first halves and the decay's second half in q8 blocks), the mixes' second halves
        (5, D, C) in float32."""
        w2 = lw.get("att.time_maa_w2")
        if not isinstance(w2, torch.Tensor) or w2.dim() != 3 or w2.shape[0] != 5:
            return False
        if not cls._all_in_blocks(lw):
            return False
        d, d2 = w2.shape[1], lw["att.time_decay_w1"].shape[0]
        return lw["att.time_maa_w1"].shape[0] == 5 * d and lw["att.time_decay_w2"].shape[1] == d2

    def __call__(self, x: torch.Tensor, st: tuple, carry, *, in_place: bool = False):
        x_out, st = self._run(self._lib.rn_v6_step, x, st, in_place=in_place)
        return x_out, st, carry


def layer_steps(layers: list[dict], cfg) -> list[_Step | None]:
    """A step for each layer that can have one (RWKV-7 and RWKV-6; ``fits``), else None (run in
    PyTorch)."""
    kind = {7: V7Step, 6: V6Step}.get(cfg.version)
    if kind is None or not native.available():
        return [None] * len(layers)
    return [kind(lw, cfg, i) if kind.fits(lw, cfg) else None for i, lw in enumerate(layers)]
