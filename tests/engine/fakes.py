"""A tiny deterministic stand-in for a model, to drive the generation loop precisely."""

from __future__ import annotations

import torch

from roost.engine.tokenizer import world_tokenizer


class ScriptedModel:
    """Greedy-picks ``reply`` token by token after ``n_prompt`` prompt tokens, then end-of-text.

    The state is the tuple of tokens seen, so tests can check exactly what was fed."""

    def __init__(self, n_prompt: int, reply: list[int], vocab: int = 65536):
        self.n_prompt, self.reply = n_prompt, reply
        self.vocab_size = vocab
        self.tokenizer = world_tokenizer()
        self.calls = 0
        self.on_forward = None

    def forward(self, tokens, state=None):
        self.calls += 1
        if self.on_forward:
            self.on_forward(self.calls)
        seen = (state or ()) + tuple(tokens)
        step = len(seen) - self.n_prompt
        logits = torch.zeros(self.vocab_size)
        logits[self.reply[step] if step < len(self.reply) else 0] = 10.0
        return logits, seen
