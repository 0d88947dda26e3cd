"""Constrained decoding: replies that must be JSON (any object, or one that fits a JSON schema).

The grammar engine is llguidance (a maintained Rust library with Python wheels, no compiler at
run time): it takes the bytes of every token of the model's vocabulary and, at each step, says
which tokens may come next. :class:`JsonConstraint` is the engine's
:class:`~roost.engine.generate.Constraint` over it: the generation masks the logits with it before
each token, and ends once the value is complete. End-of-text is allowed only where the value may
end, so a reply stops early only by running out of tokens (finish_reason "length").

    schema = json_schema_grammar({"type": "object", "properties": {...}})   # ValueError when bad
    gen = Generation(model, prompt, params, constraint=JsonConstraint(model.tokenizer, schema))

Whitespace between the JSON's tokens is not allowed (compact JSON, as the OpenAI API writes it):
a weak model cannot then wander in whitespace until its tokens run out.
"""

from __future__ import annotations

import json
import threading
import weakref

import torch

from roost.engine.generate import Constraint

_COMPACT = {"whitespace_flexible": False}
_LLTOKENIZERS: "weakref.WeakKeyDictionary[object, object]" = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()


def available() -> bool:
    from importlib.util import find_spec

    return find_spec("llguidance") is not None


def json_schema_grammar(schema: dict | None = None, *, lead: str = "", after: str = "") -> str:
    """The grammar of a reply that is one JSON value: an object when `schema` is None (OpenAI's
    json_object), else a value that fits `schema`. `lead`: text the reply may begin with before
    the value (each character optional: the space a chat reply begins with after "Assistant:");
    `after`: text that must follow the value (a code fence's end).
    ValueError with the library's message when the schema cannot be used."""
    import llguidance

    if schema is None:
        schema = {"type": "object"}
    if not isinstance(schema, dict):
        raise ValueError("the JSON schema must be an object")
    schema = {**schema, "x-guidance": {**_COMPACT, **(schema.get("x-guidance") or {})}}
    prefix = " ".join(f"{json.dumps(ch)}?" for ch in lead)
    suffix = json.dumps(after) if after else ""
    lark = f"start: {prefix} value {suffix}\nvalue: %json {json.dumps(schema)}\n"
    grammar = llguidance.LLMatcher.grammar_from_lark(lark)
    is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar)
    if is_error:
        message = messages[0] if messages else "unknown error"
        message = message.split("failed to compile JSON schema:", 1)[-1].strip().splitlines()[0]
        raise ValueError(f"the JSON schema cannot be used: {message}")
    return grammar


def lltokenizer(tokenizer):
    """The grammar engine's view of `tokenizer` (every token's bytes), built once per tokenizer
    (~0.15 s for the 65,536 tokens of the World vocabulary)."""
    import llguidance

    with _LOCK:
        found = _LLTOKENIZERS.get(tokenizer)
        if found is not None:
            return found
        table = list(tokenizer.tokens_bytes)
        eos = tokenizer.eos_token
        special = []
        for i, data in enumerate(table):  # ids with no text (end-of-text, unused ids): special tokens
            if not data or i == eos:
                table[i] = b"\xff<|endoftext|>" if i == eos else b"\xff<unused%d>" % i
                special.append(i)

        class _Words:
            eos_token_id = eos if eos is not None else 0
            bos_token_id = None
            tokens = table
            special_token_ids = special

            def __call__(self, text):
                if isinstance(text, bytes):
                    text = text.decode("utf-8", errors="replace")
                return tokenizer.encode(text)

        built = llguidance.LLTokenizer(llguidance.TokenizerWrapper(_Words()))
        _LLTOKENIZERS[tokenizer] = built
        return built


class JsonConstraint(Constraint):
    """Only tokens that keep the reply a prefix of text the grammar accepts; finished once the
    value is complete (or the matcher failed, which a correct mask never lets happen)."""

    def __init__(self, tokenizer, grammar: str):
        import llguidance

        self.vocab_size = tokenizer.vocab_size
        self.matcher = llguidance.LLMatcher(lltokenizer(tokenizer), grammar, log_level=0)
        if self.matcher.is_error():
            raise ValueError(f"the grammar cannot be used: {self.matcher.get_error()}")
        self._shifts = torch.arange(32, dtype=torch.int32)
        self._bits = torch.zeros((self.vocab_size + 31) // 32, dtype=torch.int32)

    def allowed(self) -> torch.Tensor:
        """Which tokens may come next: bool [vocab_size]."""
        self.matcher.unsafe_compute_mask_ptr(self._bits.data_ptr(), self._bits.numel() * 4)
        return ((self._bits.unsqueeze(1) >> self._shifts) & 1).bool().flatten()[:self.vocab_size]

    def mask(self, logits: torch.Tensor) -> torch.Tensor:
        allowed = self.allowed()
        if logits.numel() != allowed.numel():  # a head padded past the vocabulary: those ids never
            allowed = torch.cat([allowed, allowed.new_zeros(max(0, logits.numel() - allowed.numel()))])
            allowed = allowed[:logits.numel()]
        return logits.masked_fill(~allowed, float("-inf"))

    def advance(self, token: int) -> None:
        self.matcher.consume_token(token)

    def finished(self) -> bool:
        return self.matcher.is_stopped() or self.matcher.is_error()

    @property
    def error(self) -> str:
        return self.matcher.get_error()
