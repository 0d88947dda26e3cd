"""The recurrent state a model carries between tokens: :class:`State` (one stream) and
:class:`BatchState` (B streams decoded together, roost.engine.model.RWKV.forward_batch)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class State:
    """The recurrent state after some tokens: one tuple of tensors per layer. Immutable."""

    layers: tuple[tuple[torch.Tensor, ...], ...]
    n_tokens: int = 0  # how many tokens produced this state

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for layer in self.layers for t in layer)


@dataclass(frozen=True)
class BatchState:
    """The states of B streams decoded together (:meth:`RWKV.forward_batch`): each tensor of a
    :class:`State` with a leading batch dimension, its own (every way in copies). Immutable but
    for ``forward_batch(..., in_place=True)``, which writes over the one it is given; streams join
    with :meth:`stack` and :meth:`join`, leave with :meth:`select`, and come out as a State with
    :meth:`state` (a copy)."""

    layers: tuple[tuple[torch.Tensor, ...], ...]
    n_tokens: tuple[int, ...]

    @property
    def size(self) -> int:
        return len(self.n_tokens)

    @classmethod
    def stack(cls, states: Sequence[State]) -> "BatchState":
        if not states:
            raise ValueError("a batch needs at least one state")
        layers = tuple(tuple(torch.stack([s.layers[i][j] for s in states]) for j in range(len(layer)))
                       for i, layer in enumerate(states[0].layers))
        return cls(layers, tuple(s.n_tokens for s in states))

    def state(self, b: int) -> State:
        """Stream `b`'s state, as a State of its own (copied out of the batch)."""
        return State(tuple(tuple(t[b].clone() for t in layer) for layer in self.layers), self.n_tokens[b])

    def select(self, keep: Sequence[int]) -> "BatchState":
        """The batch of the streams at positions `keep`, in that order."""
        idx = torch.tensor(list(keep), dtype=torch.long)
        layers = tuple(tuple(t.index_select(0, idx.to(t.device)) for t in layer) for layer in self.layers)
        return BatchState(layers, tuple(self.n_tokens[i] for i in keep))

    def join(self, states: Sequence[State]) -> "BatchState":
        """This batch with `states` added at its end."""
        if not states:
            return self
        more = BatchState.stack(states)
        layers = tuple(tuple(torch.cat((a, b.to(a.device))) for a, b in zip(la, lb))
                       for la, lb in zip(self.layers, more.layers))
        return BatchState(layers, self.n_tokens + more.n_tokens)
