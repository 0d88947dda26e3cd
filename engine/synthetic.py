"""Random-weight checkpoints in the official key layout, for tests, benchmarks and the self-check.

The values are random but scaled like a trained model's (normalised embeddings, matrices with
variance 1/fan_in, decays in their usual ranges) so that a forward pass stays finite and the
logits are not degenerate. Shapes follow the official files of each architecture.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

WORLD_VOCAB = 65536
NEOX_VOCAB = 50277


def make_weights(arch: str, *, n_layer: int = 2, n_embd: int = 128, vocab: int = WORLD_VOCAB,
                 head_size: int = 64, seed: int = 0, dtype=torch.bfloat16,
                 time_state: bool = False) -> dict[str, torch.Tensor]:
    """A state dict for ``arch`` in ("v4", "v5.0", "v5.1", "v5.2", "v6.0", "v7.0")."""
    g = torch.Generator().manual_seed(seed)
    c = n_embd
    h = c // head_size

    def randn(*shape, std=1.0):
        return torch.randn(*shape, generator=g) * std

    def uniform(lo, hi, *shape):
        return lo + (hi - lo) * torch.rand(*shape, generator=g)

    def lin(out_f, in_f):
        return randn(out_f, in_f, std=in_f ** -0.5)

    from roost.engine.arch import arch_module
    from roost.engine.checkpoint import official_config

    cfg = official_config(arch, n_layer, c, vocab, head_size)  # widths and ranks as in official files
    ffn, ranks = cfg.n_ffn, arch_module(arch).lora_shapes(cfg)
    head = lin(vocab, c)
    # A trained model's next-token distribution is peaked on a few likely tokens, not spread over
    # the whole vocabulary: give a small set of "frequent" tokens larger output rows, so that the
    # top token stands out as it does in real use (a flat distribution makes top-1 comparisons
    # meaningless).
    res_scale = (2 * n_layer) ** -0.5
    frequent = torch.randperm(vocab, generator=g)[:64]
    head[frequent] *= 6.0
    w = _Converting(dtype)  # each tensor is cast as it is made: a 7B model never exists in fp32
    w.update({"emb.weight": randn(vocab, c), "head.weight": head,
              "ln_out.weight": uniform(0.8, 1.2, c), "ln_out.bias": randn(c, std=0.1)})
    del head
    for i in range(n_layer):
        p = f"blocks.{i}."
        lns = ("ln0", "ln1", "ln2") if i == 0 else ("ln1", "ln2")
        for ln in lns:
            w[p + ln + ".weight"] = uniform(0.8, 1.2, c)
            w[p + ln + ".bias"] = randn(c, std=0.1)
        for m in ("key", "value", "receptance"):
            w[f"{p}att.{m}.weight"] = lin(c, c)
        # residual updates small next to the stream, as in a trained pre-norm network
        # (GPT-2's initialisation: output projections scaled by 1/sqrt(2 n_layer))
        w[p + "att.output.weight"] = lin(c, c) * res_scale
        w[p + "ffn.key.weight"] = lin(ffn, c)
        w[p + "ffn.value.weight"] = lin(c, ffn) * res_scale
        if arch != "v7.0":
            w[p + "ffn.receptance.weight"] = lin(c, c)
        if arch == "v4":
            for m in ("k", "v", "r"):
                w[p + f"att.time_mix_{m}"] = uniform(0, 1, 1, 1, c)
            w[p + "att.time_decay"] = uniform(-3, 1, c)
            w[p + "att.time_first"] = uniform(-1, 1, c)
        elif arch.startswith("v5"):
            for m in ("k", "v", "r") + (("g",) if arch != "v5.0" else ()):
                w[p + f"att.time_mix_{m}"] = uniform(0, 1, 1, 1, c)
            if arch == "v5.2":
                w[p + "att.time_decay"] = uniform(-4, 1, h, head_size)
                w[p + "att.time_faaaa"] = uniform(-1, 1, h, head_size)
            else:
                w[p + "att.time_decay"] = uniform(-4, 1, h)
                w[p + "att.time_first"] = uniform(-1, 0.5, h)
            if arch != "v5.0":
                w[p + "att.gate.weight"] = lin(c, c)
        elif arch == "v6.0":
            for m in ("x", "w", "k", "v", "r", "g"):
                w[p + f"att.time_maa_{m}"] = uniform(0, 1, 1, 1, c)
            w[p + "att.time_maa_w1"] = randn(*ranks["att.time_maa_w1"], std=0.1)
            w[p + "att.time_maa_w2"] = randn(*ranks["att.time_maa_w2"], std=0.1)
            w[p + "att.time_decay"] = uniform(-5, 0.5, 1, 1, c)
            w[p + "att.time_decay_w1"] = randn(*ranks["att.time_decay_w1"], std=0.1)
            w[p + "att.time_decay_w2"] = randn(*ranks["att.time_decay_w2"], std=0.1)
            w[p + "att.time_faaaa"] = uniform(-1, 1, h, head_size)
            w[p + "att.gate.weight"] = lin(c, c)
        if arch in ("v5.0", "v5.1", "v5.2", "v6.0", "v7.0"):
            w[p + "att.ln_x.weight"] = uniform(0.5, 1.5, c)
            w[p + "att.ln_x.bias"] = randn(c, std=0.1)
        if arch in ("v5.0", "v5.1", "v5.2"):
            w[p + "ffn.time_mix_k"] = uniform(0, 1, 1, 1, c)
            w[p + "ffn.time_mix_r"] = uniform(0, 1, 1, 1, c)
        elif arch == "v4":
            w[p + "ffn.time_mix_k"] = uniform(0, 1, 1, 1, c)
            w[p + "ffn.time_mix_r"] = uniform(0, 1, 1, 1, c)
        elif arch == "v6.0":
            w[p + "ffn.time_maa_k"] = uniform(0, 1, 1, 1, c)
            w[p + "ffn.time_maa_r"] = uniform(0, 1, 1, 1, c)
        if time_state and arch in ("v5.2", "v6.0", "v7.0"):
            w[p + "att.time_state"] = randn(h, head_size, head_size, std=0.3)
        if arch == "v7.0":
            _v7_layer(w, p, i, c, h, head_size, ranks, randn, uniform)
    return dict(w)


class _Converting(dict):
    def __init__(self, dtype):
        super().__init__()
        self.dtype = dtype

    def __setitem__(self, key, value):
        super().__setitem__(key, value.to(self.dtype).contiguous())

    def update(self, other):
        for k, v in other.items():
            self[k] = v


def _v7_layer(w, p, i, c, h, n, ranks, randn, uniform) -> None:
    def lora(name):
        for j in "12":
            w[f"{p}att.{name}{j}"] = randn(*ranks[f"att.{name}{j}"], std=0.1)

    for m in ("r", "w", "k", "v", "a", "g"):
        w[p + f"att.x_{m}"] = uniform(0, 1, 1, 1, c)
    w[p + "att.w0"] = uniform(-4, 1, 1, 1, c)
    lora("w")
    w[p + "att.a0"] = randn(1, 1, c, std=0.5)
    lora("a")
    if i > 0:  # official files carry v0/v1/v2 in every layer but the first
        w[p + "att.v0"] = randn(1, 1, c, std=0.5)
        lora("v")
    lora("g")
    w[p + "att.k_k"] = uniform(0.5, 1, 1, 1, c)
    w[p + "att.k_a"] = uniform(0, 1, 1, 1, c)
    w[p + "att.r_k"] = randn(h, n, std=0.3)
    w[p + "ffn.x_k"] = uniform(0, 1, 1, 1, c)


def save_checkpoint(path: str | os.PathLike, arch: str, **kwargs) -> Path:
    """Write a random checkpoint to ``path`` (.pth, or .safetensors by extension)."""
    path = Path(path)
    weights = make_weights(arch, **kwargs)
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(weights, str(path))
    else:
        torch.save(weights, path)
    return path
