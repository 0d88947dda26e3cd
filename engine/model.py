"""The loaded model: ``load_model(path, strategy)`` and ``model.forward(tokens, state)``.

``forward`` takes any number of tokens. Prompts run in sequence mode: chunks of ``chunk_len`` tokens
go through each layer together (matrix multiplies over the chunk, the recurrence in chunked
parallel form where the architecture allows), which yields the same state as one token at a time.
The state passed in is never modified, so a caller may keep it and branch from it (chat caching).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from engine.arch import arch_module
from engine.checkpoint import ModelConfig, open_checkpoint
from engine.errors import StrategyError
from engine.strategy import Strategy, check_devices, machine_devices, parse_strategy

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
SUPPORTED_NOW = ("cpu fp32", "cpu bf16")


@dataclass(frozen=True)
class State:
    """The recurrent state after some tokens: one tuple of tensors per layer. Immutable."""

    layers: tuple[tuple[torch.Tensor, ...], ...]
    n_tokens: int = 0  # how many tokens produced this state

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for layer in self.layers for t in layer)


class RWKV:
    """An RWKV model ready to run. Build it with :func:`load_model`."""

    def __init__(self, config: ModelConfig, strategy: Strategy, weights: dict, layers: list[dict],
                 tokenizer, path: Path, chunk_len: int = 128):
        self.config = config
        self.strategy = strategy
        self.path = path
        self.tokenizer = tokenizer
        self.chunk_len = chunk_len
        self._arch = arch_module(config.arch)
        self._w = weights  # emb (ln0 applied), ln_out, head
        self._layers = layers
        self._dtype = _DTYPES[strategy.stages[0].dtype]

    # the names RWKV users know from the rwkv pip package
    version = property(lambda self: self.config.version)
    n_layer = property(lambda self: self.config.n_layer)
    n_embd = property(lambda self: self.config.n_embd)
    vocab_size = property(lambda self: self.config.vocab_size)

    def __repr__(self) -> str:
        return f"<RWKV {self.config.label} on '{self.strategy}' from {self.path.name}>"

    def zero_state(self) -> State:
        return State(tuple(self._arch.init_state(self.config, lw, self._dtype) for lw in self._layers))

    @torch.inference_mode()
    def forward(self, tokens: Sequence[int], state: State | None = None) -> tuple[torch.Tensor, State]:
        """Feed ``tokens``; return float32 logits ``[vocab]`` of the last one and the new state."""
        logits, state = self._run(tokens, state, all_logits=False)
        return logits, state

    @torch.inference_mode()
    def forward_all(self, tokens: Sequence[int], state: State | None = None) -> tuple[torch.Tensor, State]:
        """Like :meth:`forward` but return the logits of every token, ``[T, vocab]``."""
        return self._run(tokens, state, all_logits=True)

    def _run(self, tokens, state, *, all_logits: bool):
        tokens = [int(t) for t in tokens]
        if not tokens:
            raise ValueError("forward() needs at least one token")
        bad = [t for t in tokens if not 0 <= t < self.config.vocab_size]
        if bad:
            raise ValueError(f"token ids out of range for vocabulary {self.config.vocab_size}: {bad[:5]}")
        if state is None:
            state = self.zero_state()
        layers_state = list(state.layers)
        outs = []
        for c0 in range(0, len(tokens), self.chunk_len):
            chunk = tokens[c0:c0 + self.chunk_len]
            x = self._w["emb"][torch.tensor(chunk)]  # (T, C)
            carry = None
            for i, lw in enumerate(self._layers):
                x, layers_state[i], carry = self._arch.layer(x, lw, layers_state[i], self.config, carry)
            if all_logits or c0 + self.chunk_len >= len(tokens):
                outs.append(self._head(x if all_logits else x[-1:]))
        logits = torch.cat(outs) if all_logits else outs[-1][0]
        return logits.float(), State(tuple(layers_state), state.n_tokens + len(tokens))

    def _head(self, x: torch.Tensor) -> torch.Tensor:
        x = F.layer_norm(x, (x.shape[-1],), weight=self._w["ln_out.weight"], bias=self._w["ln_out.bias"])
        return F.linear(x, self._w["head.weight"])


def _embedding(tensors, cfg: ModelConfig, dtype: torch.dtype) -> torch.Tensor:
    """The embedding with block 0's ``ln0`` folded in (it only ever applies to embeddings).

    For RWKV-4/5/6 the reference runtime (ChatRWKV, the rwkv package) folds it in the file's own
    precision (bf16 for official files) and the models are used that way, so Roost does the same
    and its logits agree with the reference; RWKV-7's reference folds it in float32.
    """
    emb, w, b = tensors["emb.weight"], tensors["blocks.0.ln0.weight"], tensors["blocks.0.ln0.bias"]
    if cfg.version < 7 and emb.dtype == w.dtype == b.dtype and emb.dtype in (torch.bfloat16, torch.float32):
        return F.layer_norm(emb, (cfg.n_embd,), weight=w, bias=b).to(dtype)
    return F.layer_norm(emb.float(), (cfg.n_embd,), weight=w.float(), bias=b.float()).to(dtype)


def load_model(path: str | os.PathLike, strategy: str = "cpu fp32", *,
               tokenizer_path: str | os.PathLike | None = None,
               progress: Callable[[float], None] | None = None,
               chunk_len: int = 128) -> RWKV:
    """Load an official RWKV checkpoint (``.pth`` or ``.safetensors``) to run with ``strategy``.

    Raises :class:`~engine.errors.CheckpointError` subclasses for files that cannot be used,
    :class:`~engine.errors.StrategyError` for strategies this machine or version cannot run and
    :class:`~engine.errors.TokenizerError` when the model's tokenizer is missing.
    ``progress`` is called with the fraction loaded (0..1).
    """
    strat = parse_strategy(strategy)
    check_devices(strat, **machine_devices())
    if str(strat) not in SUPPORTED_NOW:
        raise StrategyError(
            f"The strategy '{strat}' is not available in this version of Roost yet. "
            f"Available: {', '.join(SUPPORTED_NOW)}."
        )
    stage = strat.stages[0]
    dtype = _DTYPES[stage.dtype]
    started = time.perf_counter()
    tensors, cfg = open_checkpoint(path)
    from engine.tokenizer import tokenizer_for_vocab

    tokenizer = tokenizer_for_vocab(cfg.vocab_size, path, tokenizer_path)  # fail before the heavy part
    arch = arch_module(cfg.arch)
    try:
        emb = _embedding(tensors, cfg, dtype)
        layers = []
        for i in range(cfg.n_layer):
            layers.append(arch.prepare_layer(tensors, i, cfg, dtype))
            if progress:
                progress((i + 1) / (cfg.n_layer + 1))
        weights = {
            "emb": emb,
            "ln_out.weight": tensors["ln_out.weight"].to(dtype),
            "ln_out.bias": tensors["ln_out.bias"].to(dtype),
            "head.weight": tensors["head.weight"].to(dtype).contiguous(),
        }
    finally:
        tensors.close()
    if progress:
        progress(1.0)
    model = RWKV(cfg, strat, weights, layers, tokenizer, Path(path), chunk_len=chunk_len)
    model.load_seconds = time.perf_counter() - started
    return model
