"""Sampling parameters and the sampler, with ChatRWKV / RWKV-Runner semantics.

Penalties: every generated token t has an occurrence count; before sampling,
``logits[t] -= presence_penalty + count[t] * frequency_penalty``; after each token every count is
multiplied by ``penalty_decay`` and the chosen token's count grows by 1. Prompt tokens do not count.
Temperature is applied after the top-p / top-k cut, as ``probs ** (1 / temperature)``; 0 is greedy.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported where the sampler runs: the app reads the defaults before loading it
    import torch


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 1.0
    top_p: float = 0.3
    top_k: int = 0  # 0: off
    presence_penalty: float = 0.5
    frequency_penalty: float = 0.5
    penalty_decay: float = 0.996
    stop: tuple[str, ...] = ()
    banned_tokens: tuple[int, ...] = ()
    max_tokens: int = 500
    seed: int | None = None
    stop_tokens: tuple[int, ...] = field(default=())  # besides the tokenizer's end-of-text
    # (token id, bias) pairs added to the logits before sampling, OpenAI's logit_bias: -100 bans a
    # token, +100 all but forces it; a dict {id: bias} is accepted
    logit_bias: tuple[tuple[int, float], ...] = ()

    def __post_init__(self):
        for name in ("stop", "banned_tokens", "stop_tokens"):
            value = getattr(self, name)
            if isinstance(value, str):
                value = (value,)
            object.__setattr__(self, name, tuple(value))
        bias = self.logit_bias.items() if isinstance(self.logit_bias, dict) else self.logit_bias
        object.__setattr__(self, "logit_bias", tuple(sorted((int(t), float(b)) for t, b in bias)))
        checks = [
            (0 <= self.temperature <= 5, "temperature must be between 0 and 5"),
            (0 <= self.top_p <= 1, "top_p must be between 0 and 1"),
            (self.top_k >= 0, "top_k must be 0 (off) or more"),
            (-2.5 <= self.presence_penalty <= 2.5, "presence_penalty must be between -2.5 and 2.5"),
            (-2.5 <= self.frequency_penalty <= 2.5, "frequency_penalty must be between -2.5 and 2.5"),
            (0 < self.penalty_decay <= 1, "penalty_decay must be above 0 and at most 1"),
            (self.max_tokens >= 0, "max_tokens must be 0 or more"),
            (all(s for s in self.stop), "stop strings cannot be empty"),
            (all(-100 <= b <= 100 for _t, b in self.logit_bias), "logit_bias values must be between -100 and 100"),
            (all(t >= 0 for t, _b in self.logit_bias), "logit_bias token ids must be 0 or more"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    def replace(self, **changes) -> "SamplingParams":
        return dataclasses.replace(self, **changes)

    def with_stops(self, extra) -> "SamplingParams":
        """These parameters with the stop strings `extra` added (a prompt format's), each once, in order."""
        return self.replace(stop=tuple(dict.fromkeys(self.stop + tuple(extra))))


# The one set of defaults every surface starts from (the app's chat and completion pages, the API,
# the command line); a user's saved changes (Settings) and a request's fields go on top.
KNOBS = ("temperature", "top_p", "top_k", "presence_penalty", "frequency_penalty", "penalty_decay")
# chat: ChatRWKV / RWKV-Runner's chat defaults
CHAT_SAMPLING = {k: getattr(SamplingParams(), k) for k in KNOBS}
# completion (stories, continuing a text): a wider top-p, no presence penalty, a light frequency one
COMPLETION_SAMPLING = {**CHAT_SAMPLING, "top_p": 0.7, "presence_penalty": 0.0, "frequency_penalty": 0.3}


class PenaltyTracker:
    """Occurrence counts of generated tokens, as one float tensor over the vocabulary."""

    def __init__(self, vocab_size: int, params: SamplingParams):
        self.params = params
        import torch

        self.counts = torch.zeros(vocab_size)
        self.seen = torch.zeros(vocab_size, dtype=torch.bool)

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        p = self.params
        if not (p.presence_penalty or p.frequency_penalty) or not self.seen.any():
            return logits
        penalty = (p.presence_penalty + self.counts * p.frequency_penalty) * self.seen
        return logits - penalty

    def update(self, token: int) -> None:
        self.counts.mul_(self.params.penalty_decay)
        self.counts[token] += 1
        self.seen[token] = True


def adjust(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """``logits`` as the sampler sees them: banned tokens at -inf, the logit bias added (a new
    tensor when anything changes)."""
    logits = logits.float()
    if params.banned_tokens or params.logit_bias:
        logits = logits.clone()
        if params.logit_bias:
            import torch

            ids = [t for t, _b in params.logit_bias if t < logits.numel()]
            biases = [b for t, b in params.logit_bias if t < logits.numel()]
            logits[ids] += torch.tensor(biases, dtype=logits.dtype)
        if params.banned_tokens:
            logits[list(params.banned_tokens)] = float("-inf")
    return logits


def sample_logits(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None = None) -> int:
    """Pick a token from float32 ``logits [vocab]`` (banned tokens and the logit bias applied)."""
    return pick(adjust(logits, params), params, generator)


def pick(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None = None) -> int:
    """Pick a token from logits already adjusted (:func:`adjust`): greedy at temperature 0, else
    top-k, then top-p, then temperature."""
    logits = logits.float()
    if params.temperature == 0:
        return int(logits.argmax())
    import torch

    full = torch.softmax(logits, dim=-1)  # top_p is measured on the whole distribution
    if params.top_k:
        probs, top_ids = full.topk(min(params.top_k, full.numel()))
    elif params.top_p < 1:
        probs, top_ids = _nucleus_candidates(full, params.top_p)
    else:
        probs, top_ids = full.sort(descending=True)
    if params.top_p < 1:
        cum = probs.cumsum(-1)
        keep = int((cum < params.top_p).sum()) + 1  # the smallest set reaching top_p, at least one
        probs = probs[:keep]
    if params.temperature != 1:
        probs = probs ** (1.0 / params.temperature)
    if not torch.isfinite(probs).all() or probs.sum() <= 0:
        return int(top_ids[0])
    choice = torch.multinomial(probs / probs.sum(), 1, generator=generator)
    return int(top_ids[choice])


def _nucleus_candidates(probs: torch.Tensor, top_p: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The most likely tokens, most likely first, at least as many as the top-p set needs: a
    short top-k where it holds probability ``top_p`` (a real model's nucleus is usually a few
    tokens; sorting a whole 65536-token vocabulary took 4 ms a token, most of a sampling step),
    else the whole vocabulary sorted (a flat distribution: straight away when the 64 most likely
    tokens hold less than an eighth of ``top_p``)."""
    if probs.numel() >= 4096:
        values, ids = probs.topk(64)
        mass = float(values.cumsum(-1)[-1])  # (the sum pick() compares with)
        if mass >= top_p:
            return values, ids
        if mass * 8 >= top_p:
            values, ids = probs.topk(1024)
            if float(values.cumsum(-1)[-1]) >= top_p:
                return values, ids
    return probs.sort(descending=True)
