"""A prompt-prefix cache of RWKV states for the API server.

An RWKV state summarises every token it has seen, so a request whose prompt starts with the
tokens of an earlier one (a chat that goes on: the same history plus a reply and a new message)
can resume from the state stored for that prefix and process only the tokens after it.

Keys are token-id sequences; the value is the model state after exactly those tokens. A lookup
returns the longest stored key that is a proper prefix of the new prompt (at least one token is
always left to feed, since the next-token logits are not stored). Memory is bounded by an entry
count and a byte budget; the least recently used entries go first. The engine never changes a
state in place, so one stored state can be shared by any number of later requests.

The cache belongs to one model: using it with another model object empties it first, and so
does that model being freed (unloaded).
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import asdict, dataclass


def state_nbytes(state) -> int:
    """Bytes held by a state: ``State.nbytes()`` when it has one, else its tensors counted."""
    nbytes = getattr(state, "nbytes", None)
    if callable(nbytes):
        return int(nbytes())
    total, todo = 0, [state]
    while todo:
        x = todo.pop()
        if isinstance(x, (tuple, list)):
            todo.extend(x)
        elif hasattr(x, "layers"):
            todo.append(x.layers)
        elif hasattr(x, "element_size"):
            total += x.numel() * x.element_size()
    return total


@dataclass(frozen=True)
class CacheStats:
    entries: int
    bytes: int
    hits: int  # lookups that found a stored prefix
    misses: int
    evictions: int
    prompt_tokens: int  # prompt tokens of every request recorded
    processed_tokens: int  # of those, the tokens actually fed to the model

    @property
    def reused_tokens(self) -> int:
        return self.prompt_tokens - self.processed_tokens

    def to_dict(self) -> dict:
        return {**asdict(self), "reused_tokens": self.reused_tokens}


class PrefixCache:
    def __init__(self, max_entries: int = 32, max_bytes: int = 512 * 2 ** 20):
        if max_entries < 0 or max_bytes < 0:
            raise ValueError("cache limits cannot be negative")
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._entries: OrderedDict[tuple[int, ...], tuple[object, int]] = OrderedDict()
        self._lengths: dict[int, int] = {}  # key length -> how many keys have it
        self._bytes = 0
        self._owner = None  # a weak reference to the model the states belong to
        self._lock = threading.RLock()  # re-entrant: the owner's weakref callback may run anywhere
        self.hits = self.misses = self.evictions = 0
        self.prompt_tokens = self.processed_tokens = 0

    # --- use -----------------------------------------------------------------------------------
    def lookup(self, model, tokens: Sequence[int]) -> tuple[int, object]:
        """(n, state): the state after ``tokens[:n]`` for the longest stored proper prefix of
        ``tokens``, or (0, None). Counts a hit or a miss and marks the entry as recently used."""
        tokens = tuple(tokens)
        with self._lock:
            self._bind(model)
            for n in sorted(self._lengths, reverse=True):
                if n >= len(tokens):
                    continue
                entry = self._entries.get(tokens[:n])
                if entry is not None:
                    self._entries.move_to_end(tokens[:n])
                    self.hits += 1
                    return n, entry[0]
            self.misses += 1
            return 0, None

    def store(self, model, tokens: Sequence[int], state) -> bool:
        """Keep ``state`` as ``model``'s state after ``tokens``. False when it cannot be kept."""
        key = tuple(tokens)
        if not key or state is None:
            return False
        size = state_nbytes(state)
        with self._lock:
            self._bind(model)
            if key in self._entries:
                self._drop(key)
            if self.max_entries == 0 or size > self.max_bytes:
                return False
            self._entries[key] = (state, size)
            self._lengths[len(key)] = self._lengths.get(len(key), 0) + 1
            self._bytes += size
            while len(self._entries) > self.max_entries or self._bytes > self.max_bytes:
                self._drop(next(iter(self._entries)))
                self.evictions += 1
            return True

    def record(self, prompt_tokens: int, processed_tokens: int) -> None:
        """Count one request's prompt: its length, and how many of its tokens were fed."""
        with self._lock:
            self.prompt_tokens += prompt_tokens
            self.processed_tokens += processed_tokens

    def clear(self) -> None:
        with self._lock:
            self._clear()

    def stats(self) -> CacheStats:
        with self._lock:
            return CacheStats(len(self._entries), self._bytes, self.hits, self.misses, self.evictions,
                              self.prompt_tokens, self.processed_tokens)

    def __len__(self) -> int:
        return len(self._entries)

    # --- inside --------------------------------------------------------------------------------
    def _bind(self, model) -> None:
        owner = self._owner() if self._owner is not None else None
        if owner is not model:  # another model was loaded: its states mean nothing here
            self._clear()
            try:  # and once the model is gone (unloaded), its states go too
                self._owner = weakref.ref(model, lambda _ref: self.clear())
            except TypeError:  # not weakly referenceable: keep a strong reference
                self._owner = lambda m=model: m

    def _clear(self) -> None:
        self._entries.clear()
        self._lengths.clear()
        self._bytes = 0

    def _drop(self, key: tuple[int, ...]) -> None:
        _, size = self._entries.pop(key)
        self._bytes -= size
        left = self._lengths[len(key)] - 1
        if left:
            self._lengths[len(key)] = left
        else:
            del self._lengths[len(key)]
