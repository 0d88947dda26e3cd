"""The embedding table of a loaded model: ``ln0`` folded in, kept compact, or read row by row from a
memory-mapped checkpoint (engine.model builds it with :func:`build_embedding`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from roost.engine.checkpoint import ModelConfig


def embedding_is_native(cfg: ModelConfig, *dtypes: torch.dtype) -> bool:
    """Whether ``ln0`` is folded into the embedding in the file's own precision (see build_embedding)."""
    return cfg.version < 7 and len(set(dtypes)) == 1 and dtypes[0] in (torch.bfloat16, torch.float32)


def compact_embedding(stage) -> bool:
    """Whether the embedding table is kept in bf16 though folded in float32 (RWKV-7): where the
    first stage's weights are stored smaller than float32 on the CPU (bf16, int8, int4). The
    rounding (2^-9 of each value, once, at the input) is far below the weights' own; the table is
    half the memory (537 MB less for a 7B model, the difference that lets larger models fit)."""
    return stage.device == "cpu" and (stage.int8 or stage.int4 or stage.dtype == "bf16")


def build_embedding(tensors, cfg: ModelConfig, dtype: torch.dtype, *, compact: bool = False):
    """The embedding with block 0's ``ln0`` folded in (it only ever applies to embeddings).

    For RWKV-4/5/6 the reference runtime (ChatRWKV, the rwkv package) folds it in the file's own
    precision (bf16 for official files) and the models are used that way, so Roost does the same
    and its logits agree with the reference; the folded table then holds bf16 values and is kept
    in bf16 (half the RAM: 268 MB less for a 1.6B model). RWKV-7's reference folds it in float32.
    The embedding stays on the CPU: one row per token is all a forward pass reads, cast to the
    first layer's dtype on use; ``compact``: kept in bf16 (see compact_embedding). From a
    memory-mapped file the table is not built at all (:class:`MappedEmbedding`).
    """
    if dtype == torch.float16:
        dtype = torch.float32  # rows are cast to the first layer's dtype on use
    emb, w, b = tensors["emb.weight"], tensors["blocks.0.ln0.weight"], tensors["blocks.0.ln0.bias"]
    native = embedding_is_native(cfg, emb.dtype, w.dtype, b.dtype)
    if native:
        dtype = emb.dtype
    elif compact:
        dtype = torch.bfloat16  # (folded in float32, rounded once as it is stored)
    if not native:
        w, b = w.float(), b.float()
    if getattr(tensors, "mapped", False):
        return MappedEmbedding(emb, w.clone(), b.clone(), dtype)
    out = torch.empty(emb.shape, dtype=dtype)
    step = max(1, (1 << 22) // cfg.n_embd)  # rows at a time: no whole-table temporaries while loading
    for r0 in range(0, emb.shape[0], step):
        out[r0:r0 + step] = _fold(emb[r0:r0 + step], w, b)
        tensors.release(emb[r0:r0 + step], out)
    return out


def _fold(rows: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Embedding rows through ln0, in the precision of ``w`` (see build_embedding)."""
    return F.layer_norm(rows.to(w.dtype), (rows.shape[-1],), weight=w, bias=b)


class MappedEmbedding:
    """The embedding of a memory-mapped checkpoint, read from the file's pages row by row as
    tokens come, ln0 folded into each row on use: the same rows as the table build_embedding builds
    (ln0 works row by row; the tests compare every row), without the table. A 7B or 14B model's
    table is 537 MB; what a conversation touches is a few thousand rows (a few MB, file pages the
    OS can drop and read again), and folding a row costs microseconds. The mapping is read-only
    (engine.checkpoint) and stays open while the model lives."""

    def __init__(self, emb: torch.Tensor, w: torch.Tensor, b: torch.Tensor, dtype: torch.dtype):
        self.table, self.w, self.b, self.dtype = emb, w, b, dtype
        self.shape = tuple(emb.shape)

    def __getitem__(self, idx) -> torch.Tensor:
        return _fold(self.table[idx], self.w, self.b).to(self.dtype)
