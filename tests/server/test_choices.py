"""logit_bias, logprobs (chat and legacy) and n > 1 through the official client."""

from __future__ import annotations

import math

import pytest

try:
    import httpx2
except ImportError:  # pragma: no cover
    import httpx as httpx2

GREEDY = {"temperature": 0, "presence_penalty": 0, "frequency_penalty": 0}
HI = [{"role": "user", "content": "Hello there"}]


@pytest.fixture(scope="module")
def model(runtime) -> str:
    return runtime.info.path.stem


def test_logit_bias_is_applied(client, model, runtime):
    tok = runtime.model.tokenizer
    target = tok.encode(" kettle")[0]
    plain = client.completions.create(model=model, prompt="Once", max_tokens=4, extra_body=GREEDY)
    forced = client.completions.create(model=model, prompt="Once", max_tokens=4, extra_body=GREEDY,
                                       logit_bias={str(target): 100})
    assert forced.choices[0].text == tok.decode([target] * 4) != plain.choices[0].text
    first = tok.encode(plain.choices[0].text)[0]
    banned = client.completions.create(model=model, prompt="Once", max_tokens=1, extra_body=GREEDY,
                                       logit_bias={str(first): -100})
    assert tok.encode(banned.choices[0].text)[0] != first


def test_chat_logprobs_non_streaming_and_streaming_agree(client, model):
    r = client.chat.completions.create(model=model, messages=HI, max_tokens=6, logprobs=True, top_logprobs=3,
                                       extra_body=GREEDY)
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens == 6
    assert "".join(t.token for t in content).lstrip() == r.choices[0].message.content  # its leading space cut
    for t in content:
        assert t.logprob <= 0 and len(t.top_logprobs) == 3 and bytes(t.bytes).decode("utf-8", "replace") == t.token
        assert t.top_logprobs[0].token == t.token and t.top_logprobs[0].logprob == pytest.approx(t.logprob)
        assert t.top_logprobs[0].logprob >= t.top_logprobs[1].logprob >= t.top_logprobs[2].logprob
        assert sum(math.exp(x.logprob) for x in t.top_logprobs) <= 1 + 1e-6
    stream = client.chat.completions.create(model=model, messages=HI, max_tokens=6, logprobs=True, top_logprobs=3,
                                            extra_body=GREEDY, stream=True)
    streamed = [t for c in stream for ch in c.choices if ch.logprobs for t in ch.logprobs.content]
    assert [(t.token, round(t.logprob, 4)) for t in streamed] == [(t.token, round(t.logprob, 4)) for t in content]
    plain = client.chat.completions.create(model=model, messages=HI, max_tokens=2, extra_body=GREEDY)
    assert plain.choices[0].logprobs is None  # only when asked


def test_legacy_logprobs(client, model):
    r = client.completions.create(model=model, prompt="Once upon", max_tokens=5, logprobs=2, extra_body=GREEDY)
    lp = r.choices[0].logprobs
    assert "".join(lp.tokens) == r.choices[0].text and len(lp.tokens) == 5 == len(lp.token_logprobs)
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(5)]
    assert all(len(top) <= 2 and max(top.values()) == pytest.approx(v) for top, v in zip(lp.top_logprobs,
                                                                                          lp.token_logprobs))
    echoed = httpx2.post(f"{client.base_url}completions", json={"model": model, "prompt": "Once", "max_tokens": 2,
                                                                  "logprobs": 1, "echo": True})
    assert echoed.status_code == 400 and echoed.json()["error"]["param"] == "logprobs"


def test_n_choices_branch_from_the_prompt(client, model, server):
    params = {"temperature": 1.0, "top_p": 1.0}
    r = client.chat.completions.create(model=model, messages=HI, max_tokens=8, n=3, seed=5, extra_body=params)
    assert [c.index for c in r.choices] == [0, 1, 2]
    assert len({c.message.content for c in r.choices}) > 1  # three draws, not one copied
    assert r.usage.completion_tokens >= 3
    stream = client.chat.completions.create(model=model, messages=HI, max_tokens=8, n=3, seed=5, extra_body=params,
                                            stream=True)
    texts, finishes = ["", "", ""], [None] * 3
    for c in stream:
        for ch in c.choices:
            texts[ch.index] += ch.delta.content or ""
            finishes[ch.index] = ch.finish_reason or finishes[ch.index]
    assert texts == [c.message.content for c in r.choices] and all(finishes)
    legacy = client.completions.create(model=model, prompt="Once", max_tokens=4, n=2, seed=1, extra_body=params)
    assert [c.index for c in legacy.choices] == [0, 1]
    # each choice is the reply generated alone with seed + its index, the prompt read once
    reads = server.worker.cache.stats().processed_tokens
    three = client.completions.create(model=model, prompt="Once upon a time there was", max_tokens=10, n=3,
                                      seed=11, extra_body=params)
    read = server.worker.cache.stats().processed_tokens - reads
    alone = [client.completions.create(model=model, prompt="Once upon a time there was", max_tokens=10,
                                       seed=11 + i, extra_body=params).choices[0].text for i in range(3)]
    assert [c.text for c in three.choices] == alone and len(set(alone)) > 1
    assert read == three.usage.prompt_tokens - three.usage.prompt_tokens_details.cached_tokens  # once, not 3 times
    assert server.worker.failed == 0
