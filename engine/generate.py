"""Streaming generation with stop strings, a thread-safe stop flag and reusable state.

    gen = Generation(model, "User: hi\\n\\nAssistant:", SamplingParams(stop=("\\n\\n",)))
    for piece in gen:          # text pieces as soon as they are whole UTF-8 characters
        print(piece, end="")
    gen.result.finish_reason   # "stop" | "length" | "cancelled"
    gen.result.state           # the model state after the prompt and every token fed back

``logprobs=N`` records, for each generated token, its log-probability and the N likeliest
alternatives (``result.logprobs``); ``constraint`` (see :class:`Constraint`) limits which tokens
may come next, e.g. to what a JSON schema allows.

Another thread may call ``gen.stop()`` (or set the :class:`StopFlag` passed in): generation ends
before the next token is computed. A stop string is never emitted, not even its beginning: text
that could start one is held back until it is clear.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch

from roost.engine.sampling import PenaltyTracker, SamplingParams, adjust, pick
from roost.engine.tokenizer import StreamDecoder


class StopFlag:
    """A thread-safe flag: set it from any thread to stop a generation within one token."""

    def __init__(self):
        self._event = threading.Event()

    def set(self) -> None:
        self._event.set()

    def clear(self) -> None:
        self._event.clear()

    def is_set(self) -> bool:
        return self._event.is_set()


@dataclass(frozen=True)
class TokenLogprob:
    """A generated token's log-probability, and the likeliest tokens at that step (best first), in
    the distribution the sampler drew from before its top-p/top-k cut and temperature: the
    model's, with the penalties, the logit bias and any constraint applied."""
    token: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()


class Constraint:
    """What may come next, decided token by token (a grammar). The generation asks :meth:`mask`
    before each token, tells :meth:`advance` the token chosen, and stops ("stop") once
    :meth:`finished`; end-of-text is a token the mask must allow for the text to end there."""

    def mask(self, logits: torch.Tensor) -> torch.Tensor:  # pragma: no cover - an interface
        raise NotImplementedError

    def advance(self, token: int) -> None:  # pragma: no cover
        raise NotImplementedError

    def finished(self) -> bool:  # pragma: no cover
        raise NotImplementedError


@dataclass
class GenerationResult:
    text: str = ""  # what was emitted (stop string excluded)
    tokens: list[int] = field(default_factory=list)  # every sampled token (end-of-text excluded)
    finish_reason: str = ""  # "stop" (stop string or end of text) | "length" | "cancelled"
    stop_string: str | None = None
    state: object = None  # model state after the prompt and tokens[:n_fed]
    n_fed: int = 0  # how many of ``tokens`` the state has seen (the last one usually not)
    prompt_tokens: int = 0
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0
    logprobs: list[TokenLogprob] = field(default_factory=list)  # one per token of ``tokens`` when asked

    @property
    def unfed_tokens(self) -> list[int]:
        return self.tokens[self.n_fed:]

    @property
    def tokens_per_second(self) -> float:
        return len(self.tokens) / self.decode_seconds if self.decode_seconds > 0 else 0.0


class Generation:
    """An iterator of text pieces; after it ends, :attr:`result` holds the outcome."""

    def __init__(self, model, prompt: str | Sequence[int], params: SamplingParams, *,
                 state=None, stop_flag: StopFlag | None = None, chunk_size: int = 256,
                 on_prefill_progress: Callable[[int, int], None] | None = None,
                 logprobs: int | None = None, constraint: Constraint | None = None):
        self.model = model
        self.logprobs = logprobs
        self.constraint = constraint
        self.params = params
        self.prompt_tokens = model.tokenizer.encode(prompt) if isinstance(prompt, str) else list(prompt)
        if not self.prompt_tokens:
            raise ValueError("the prompt is empty")
        self.state = state
        self.stop_flag = stop_flag or StopFlag()
        self.chunk_size = chunk_size
        self.on_prefill_progress = on_prefill_progress
        self.result = GenerationResult(prompt_tokens=len(self.prompt_tokens))
        self._iter = self._run()

    def __iter__(self) -> Iterator[str]:
        return self._iter

    def __next__(self) -> str:
        return next(self._iter)

    def stop(self) -> None:
        self.stop_flag.set()

    def run(self) -> GenerationResult:
        """Consume the whole generation and return the result."""
        for _ in self:
            pass
        return self.result

    def _run(self) -> Iterator[str]:
        res, params, model = self.result, self.params, self.model
        t0 = time.perf_counter()
        state, logits = self.state, None
        total = len(self.prompt_tokens)
        for c0 in range(0, total, self.chunk_size):
            if self.stop_flag.is_set():  # stopped mid-prompt: no state that matches any text
                res.state, res.finish_reason = None, "cancelled"
                return
            logits, state = model.forward(self.prompt_tokens[c0:c0 + self.chunk_size], state)
            if self.on_prefill_progress:
                self.on_prefill_progress(min(c0 + self.chunk_size, total), total)
        res.state = state
        res.prefill_seconds = time.perf_counter() - t0

        t0 = time.perf_counter()
        dec = Decoder(model, params, logprobs=self.logprobs, constraint=self.constraint, result=res)
        try:
            while True:
                if self.stop_flag.is_set():
                    text, token = dec.cancel(), None
                else:
                    text, token = dec.step(logits)
                if text:
                    yield text
                if token is None:
                    break
                logits, state = model.forward([token], state)
                res.state, res.n_fed = state, len(res.tokens)
        finally:
            res.decode_seconds = time.perf_counter() - t0


class Decoder:
    """The token-by-token half of a generation, apart from the model: given the logits after the
    last token, :meth:`step` samples the next token (penalties, logit bias, constraint, sampling
    parameters), records it and its logprob, and returns the text that can be shown now (whole
    UTF-8 characters, never the start of a stop string) and the token to feed, or None when the
    generation has ended (``result.finish_reason``: "stop" | "length"; :meth:`cancel`:
    "cancelled"). :class:`Generation` drives one with ``model.forward``; a batch of streams
    (the API server) drives one per stream with ``model.forward_batch``."""

    def __init__(self, model, params: SamplingParams, *, logprobs: int | None = None,
                 constraint: Constraint | None = None, result: GenerationResult | None = None):
        tok = model.tokenizer
        self.params, self.logprobs, self.constraint = params, logprobs, constraint
        self.result = result if result is not None else GenerationResult()
        seed = params.seed if params.seed is not None else random.randrange(2 ** 63)
        self.generator = torch.Generator().manual_seed(seed)
        self.penalties = PenaltyTracker(model.vocab_size, params)
        self.stops = set(params.stop_tokens) | ({tok.eos_token} if tok.eos_token is not None else set())
        self.decoder = StreamDecoder(tok)
        self.pending = ""
        self.done = False
        self.result.finish_reason = "length"

    def step(self, logits: torch.Tensor) -> tuple[str, int | None]:
        res, params = self.result, self.params
        if self.done:
            return "", None
        if len(res.tokens) >= params.max_tokens:
            return self._end(), None
        scores = adjust(self.penalties.apply(logits), params)
        if self.constraint is not None:
            scores = self.constraint.mask(scores)
        token = pick(scores, params, self.generator)
        if token in self.stops:
            res.finish_reason = "stop"
            return self._end(), None
        res.tokens.append(token)
        if self.logprobs is not None:
            res.logprobs.append(_logprob(scores, token, self.logprobs))
        self.penalties.update(token)
        self.pending += self.decoder.feed(token)
        if self.constraint is not None:
            self.constraint.advance(token)
            if self.constraint.finished():  # the value is complete: nothing may follow
                res.finish_reason = "stop"
                return self._end(), None
        hit = _find_stop(self.pending, params.stop)
        if hit is not None:
            cut, res.stop_string = hit
            res.finish_reason = "stop"
            self.pending = self.pending[:cut]
            return self._end(), None
        out = ""
        safe = len(self.pending) - _held_back(self.pending, params.stop)
        if safe > 0:
            out, self.pending = self.pending[:safe], self.pending[safe:]
            res.text += out
        if len(res.tokens) >= params.max_tokens:  # the last token is not fed
            return out + self._end(), None
        return out, token

    def cancel(self) -> str:
        """End now ("cancelled"); returns what was still held back."""
        if self.done:
            return ""
        self.result.finish_reason = "cancelled"
        return self._end()

    def _end(self) -> str:
        """The text still held back, released at the end (a stop string in it cut off)."""
        res, params = self.result, self.params
        self.done = True
        pending = self.pending
        if res.stop_string is None:
            pending += self.decoder.flush()
            hit = _find_stop(pending, params.stop)
            if hit is not None:
                pending, res.stop_string, res.finish_reason = pending[:hit[0]], hit[1], "stop"
        self.pending = ""
        res.text += pending
        return pending


def _logprob(scores: torch.Tensor, token: int, top: int) -> TokenLogprob:
    logp = torch.log_softmax(scores.float(), dim=-1)
    best = ()
    if top > 0:
        values, ids = logp.topk(min(top, logp.numel()))
        best = tuple((int(i), float(v)) for i, v in zip(ids, values) if v > float("-inf"))
    return TokenLogprob(token, float(logp[token]), best)


class LogprobRelease:
    """Hands out a generation's token log-probabilities as its text is released: a token's entry
    goes out once its bytes are all in the text emitted so far (a token held back with the start of
    a stop string waits), and at the end every token that contributed to the text."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.index = 0
        self.offset = 0  # bytes of the tokens handed out so far

    def take(self, result: GenerationResult, *, final: bool = False) -> list[TokenLogprob]:
        emitted = len(result.text.encode("utf-8"))
        out = []
        while self.index < len(result.logprobs):
            entry = result.logprobs[self.index]
            size = len(self.tokenizer.decode_bytes([entry.token]))
            if not (self.offset + size <= emitted or (final and self.offset < emitted)):
                break
            out.append(entry)
            self.index += 1
            self.offset += size
        return out


def _find_stop(text: str, stops: Sequence[str]) -> tuple[int, str] | None:
    """The earliest stop string in ``text``: (its index, the string)."""
    best = None
    for s in stops:
        i = text.find(s)
        if i >= 0 and (best is None or i < best[0]):
            best = (i, s)
    return best


def _held_back(text: str, stops: Sequence[str]) -> int:
    """Length of the longest end of ``text`` that is the start of some stop string."""
    longest = 0
    for s in stops:
        for n in range(min(len(s) - 1, len(text)), longest, -1):
            if text.endswith(s[:n]):
                longest = n
                break
    return longest


def generate(model, prompt: str | Sequence[int], params: SamplingParams, **kwargs) -> GenerationResult:
    """Generate to the end and return the result (see :class:`Generation`)."""
    return Generation(model, prompt, params, **kwargs).run()
