"""What constrained decoding (response_format JSON) costs per token, against the token itself.

    python benchmarks/grammar_bench.py                       # v7 1.5B shape, cpu int8, 64 tokens
    python benchmarks/grammar_bench.py --shape v7-0.4b --tokens 128

Generates with a JSON-schema constraint (roost.engine.grammar.JsonConstraint over llguidance) on
a random checkpoint of a real shape, timing separately, for every token, the model's forward and
the grammar's work (the mask before the token, consuming the token after). Prints the medians and
their ratio; the target is a grammar share under 10% of a token's time. The first mask of a
tokenizer also builds the grammar engine's token table (once per process): reported apart.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench import SHAPES, checkpoint  # noqa: E402

SCHEMA = {  # long strings keep the mask in its most expensive state (any token that continues a string)
    "type": "object",
    "properties": {
        "title": {"type": "string", "maxLength": 400},
        "kind": {"enum": ["story", "poem", "note"]},
        "lines": {"type": "array", "items": {"type": "string", "maxLength": 200}, "maxItems": 8},
        "score": {"type": "number"},
    },
    "required": ["title", "kind", "lines", "score"],
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="v7-1.5b", choices=sorted(SHAPES))
    ap.add_argument("--strategy", default="cpu int8")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "roost-bench"))
    args = ap.parse_args()

    import torch

    from roost.engine import load_model
    from roost.engine.generate import Generation
    from roost.engine.grammar import JsonConstraint, json_schema_grammar, lltokenizer
    from roost.engine.sampling import SamplingParams

    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    model = load_model(checkpoint(args.shape, cache), strategy=args.strategy)
    t0 = time.perf_counter()
    lltokenizer(model.tokenizer)
    table_seconds = time.perf_counter() - t0
    grammar = json_schema_grammar(SCHEMA, lead=" ")

    forward_times: list[float] = []
    real_forward = model.forward

    def timed_forward(tokens, state=None):
        t = time.perf_counter()
        out = real_forward(tokens, state)
        forward_times.append(time.perf_counter() - t)
        return out

    class Timed(JsonConstraint):
        times: list[float] = []

        def mask(self, logits):
            t = time.perf_counter()
            out = super().mask(logits)
            self.times.append(time.perf_counter() - t)
            return out

        def advance(self, token):
            t = time.perf_counter()
            super().advance(token)
            self.times[-1] += time.perf_counter() - t

    t0 = time.perf_counter()
    constraint = Timed(model.tokenizer, grammar)
    matcher_seconds = time.perf_counter() - t0
    prompt = model.tokenizer.encode("User: Write a short story as JSON.\n\nAssistant:")
    model.forward = timed_forward
    params = SamplingParams(temperature=1.0, top_p=0.9, max_tokens=args.tokens, seed=1)
    with torch.inference_mode():
        gen = Generation(model, prompt, params, constraint=constraint)
        result = gen.run()
    forward_times = forward_times[1:]  # the prompt
    fwd = statistics.median(forward_times)
    grm = statistics.median(Timed.times)
    print(f"shape {args.shape}, {args.strategy}, {len(result.tokens)} tokens ({result.finish_reason})")
    print(f"token table (once per tokenizer): {table_seconds * 1e3:.0f} ms; matcher per request: "
          f"{matcher_seconds * 1e3:.1f} ms")
    print(f"forward per token: median {fwd * 1e3:.2f} ms")
    print(f"grammar per token (mask + consume): median {grm * 1e3:.3f} ms, max {max(Timed.times) * 1e3:.2f} ms")
    print(f"grammar / token time: {grm / (fwd + grm):.1%} (target < 10%)")


if __name__ == "__main__":
    main()
