"""Resuming from cached RWKV states: the one mechanism of the app's chats and the API server.

An RWKV state summarises every token it has seen, so a prompt that starts with the tokens of an
earlier one (a chat that goes on: the same history plus a reply and a new message; a regenerated
or edited turn) can resume from the state stored for that prefix and process only the tokens
after it. :func:`generate_resumed` does that: look up the longest stored prefix, feed the rest,
keep the state before the prompt's last token and the state after the reply.

A caller that renders whole transcripts as text (the app's chat) asks :func:`resumable_ids` for
the prompt's tokens: the longest remembered *text* prefix keeps the exact tokens the state saw
(the model's own reply tokens included, which re-tokenising the text could split differently),
and only the rest is tokenised.

Keys are token-id sequences; the value is the model state after exactly those tokens. A lookup
returns the longest stored key that is a proper prefix of the new prompt (at least one token is
always left to feed, since the next-token logits are not stored). Memory is bounded by an entry
count and a byte budget; the least recently used entries go first. The engine never changes a
state in place, so one stored state can be shared by any number of later requests.

The cache belongs to one model: using it with another model object empties it first, and so
does that model being freed (unloaded). Keys are token ids, so a state is never used with another
model, another tokenizer or another prompt.
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
        self._texts: OrderedDict[str, tuple[int, ...]] = OrderedDict()  # text -> its tokens (resumable_ids)
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

    def remember_text(self, model, text: str, tokens: Sequence[int]) -> None:
        """`text` was fed as exactly `tokens` (their state is stored under those tokens)."""
        if not text or not tokens:
            return
        with self._lock:
            self._bind(model)
            self._texts[text] = tuple(tokens)
            self._texts.move_to_end(text)
            while len(self._texts) > max(4 * self.max_entries, 1):
                self._texts.popitem(last=False)

    def tokens_for_text(self, model, text: str) -> tuple[int, tuple[int, ...]]:
        """(n, tokens): the longest remembered text that `text` starts with, as its length in
        characters and its tokens; (0, ()) when none."""
        with self._lock:
            self._bind(model)
            best = ""
            for known in self._texts:
                if len(known) > len(best) and text.startswith(known):
                    best = known
            if not best:
                return 0, ()
            self._texts.move_to_end(best)
            return len(best), self._texts[best]

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
        self._texts.clear()
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


# --- generating from the cache ---------------------------------------------------------------------
PREFILL_CHUNK = 256  # prompt tokens per forward call; the stop flag is checked between chunks


@dataclass
class Resumed:
    result: object | None  # the engine's GenerationResult; None when stopped while reading the prompt
    prompt_tokens: int
    cached_tokens: int  # prompt tokens resumed from a stored state, not processed
    fed_tokens: int  # prompt tokens processed


def resumable_ids(cache: PrefixCache, model, text: str) -> list[int]:
    """The tokens of prompt `text`: a remembered prefix's exact tokens, then the rest tokenised."""
    n, tokens = cache.tokens_for_text(model, text)
    return [*tokens, *model.tokenizer.encode(text[n:])] if n < len(text) else list(tokens)


def generate_resumed(model, cache: PrefixCache, ids: Sequence[int], params, *, text: str | None = None,
                     state=None, stop_flag=None, on_piece=None, on_progress=None,
                     prefill_chunk: int = PREFILL_CHUNK) -> Resumed:
    """Generate after prompt `ids`, resuming from the longest stored proper prefix of them.

    Keeps the state before the prompt's last token (a later prompt that repeats or extends this one
    resumes there) and the state after the reply's fed tokens (the next turn). `text`: the prompt as
    text (see :func:`resumable_ids`), remembered with its reply for the next turn. `state`: start
    from this state instead (no lookup; nothing is stored). `on_progress(read, total)`: after each
    chunk of the prompt read (tokens not resumed from a stored state). (The API server does the
    same for many replies at once, decoded together: roost.server.jobs.)"""
    from roost.engine.generate import Generation

    ids = list(ids)
    if state is None and not ids:
        raise ValueError("an empty prompt")
    use_cache = state is None
    cached, found = cache.lookup(model, ids) if use_cache else (0, None)
    state = found if use_cache else state
    rest = ids[cached:]
    head = rest[:-1]
    for c0 in range(0, len(head), prefill_chunk):
        if stop_flag is not None and stop_flag.is_set():
            cache.record(len(ids), c0)
            return Resumed(None, len(ids), cached, c0)
        _, state = model.forward(head[c0:c0 + prefill_chunk], state)
        if on_progress is not None:
            on_progress(min(c0 + prefill_chunk, len(head)), len(head))
    if head and use_cache:
        cache.store(model, ids[:-1], state)
    if text is not None and use_cache:
        cache.remember_text(model, text, ids)
    cache.record(len(ids), len(rest))
    gen = Generation(model, rest[-1:], params, state=state, stop_flag=stop_flag)
    for piece in gen:
        if on_piece is not None:
            on_piece(piece)
    r = gen.result
    if use_cache and r.state is not None and r.n_fed:
        key = ids + r.tokens[:r.n_fed]
        cache.store(model, key, r.state)
        if text is not None:
            cache.remember_text(model, text + model.tokenizer.decode(r.tokens[:r.n_fed]), key)
    return Resumed(r, len(ids), cached, len(rest))
