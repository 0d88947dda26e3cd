"""The generation loop: streaming, stop strings, stop flag, end of text, state bookkeeping."""

from __future__ import annotations

import threading

import pytest
import torch

from roost.engine import load_model
from roost.engine.generate import Generation, StopFlag, generate
from roost.engine.sampling import SamplingParams
from roost.engine.tokenizer import world_tokenizer
from tests.engine.fakes import ScriptedModel

GREEDY = SamplingParams(temperature=0, presence_penalty=0, frequency_penalty=0)


def scripted(prompt: str, reply: str):
    tok = world_tokenizer()
    p = tok.encode(prompt)
    return ScriptedModel(len(p), tok.encode(reply)), p


def test_streams_the_reply_and_ends_at_end_of_text():
    model, prompt = scripted("User: hi\n\nAssistant:", " Hello there, 你好 🎉!")
    gen = Generation(model, prompt, GREEDY)
    pieces = list(gen)
    assert "".join(pieces) == " Hello there, 你好 🎉!"
    assert all("\ufffd" not in p for p in pieces)
    assert gen.result.finish_reason == "stop" and gen.result.stop_string is None
    assert gen.result.state == tuple(prompt) + tuple(gen.result.tokens)  # every token was fed back


def test_a_stop_string_is_never_emitted_even_split_across_tokens():
    model, prompt = scripted("Q:", " one\n\nUser: more")
    gen = Generation(model, prompt, GREEDY.replace(stop=("\n\nUser:",)))
    pieces = list(gen)
    assert "".join(pieces) == " one"
    assert not any("\n" in p for p in pieces)
    r = gen.result
    assert r.finish_reason == "stop" and r.stop_string == "\n\nUser:"
    # the state saw the prompt and the fed tokens; the token completing the stop string was not fed
    assert r.state == tuple(prompt) + tuple(r.tokens[: r.n_fed]) and r.n_fed == len(r.tokens) - 1


def test_max_tokens_ends_with_length_and_does_not_feed_the_last_token():
    model, prompt = scripted("x", " a b c d e f g h")
    r = generate(model, prompt, GREEDY.replace(max_tokens=3))
    assert r.finish_reason == "length" and len(r.tokens) == 3 and r.n_fed == 2
    assert r.text == world_tokenizer().decode(r.tokens)


def test_the_stop_flag_ends_generation_within_one_token():
    model, prompt = scripted("x", " word" * 200)
    flag = StopFlag()
    gen = Generation(model, prompt, GREEDY.replace(max_tokens=1000), stop_flag=flag)
    stopped_at = {}

    def stop_from_another_thread(calls):
        if calls == 5:
            t = threading.Thread(target=flag.set)
            t.start()
            t.join()
            stopped_at["calls"] = calls

    model.on_forward = stop_from_another_thread
    list(gen)
    assert gen.result.finish_reason == "cancelled"
    assert model.calls - stopped_at["calls"] == 0  # no forward pass after the flag was set


def test_stop_during_the_prompt_leaves_no_misleading_state():
    model, _ = scripted("x", " y")
    flag = StopFlag()
    flag.set()
    gen = Generation(model, list(range(1, 600)), GREEDY, stop_flag=flag, chunk_size=100)
    assert list(gen) == [] and gen.result.finish_reason == "cancelled" and gen.result.state is None


def test_prompt_is_fed_in_chunks_with_progress():
    model, _ = scripted("x", " y")
    seen = []
    r = generate(model, list(range(1, 251)), GREEDY, chunk_size=100, on_prefill_progress=lambda d, t: seen.append((d, t)))
    assert seen == [(100, 250), (200, 250), (250, 250)]
    assert r.prompt_tokens == 250


@pytest.fixture(scope="module")
def small_model(make_checkpoint):
    return load_model(make_checkpoint("v7.0", n_layer=2, n_embd=128, seed=4))


def test_a_seed_makes_generation_reproducible(small_model):
    params = SamplingParams(temperature=1.0, top_p=0.9, max_tokens=24, seed=123)
    a = generate(small_model, "Once upon a time", params)
    b = generate(small_model, "Once upon a time", params)
    c = generate(small_model, "Once upon a time", params.replace(seed=124))
    assert a.tokens == b.tokens and a.text == b.text
    assert a.tokens != c.tokens


def test_the_result_state_continues_like_feeding_the_tokens(small_model):
    r = generate(small_model, "Hello", SamplingParams(temperature=0, max_tokens=8, presence_penalty=0, frequency_penalty=0))
    ids = small_model.tokenizer.encode("Hello") + r.tokens[: r.n_fed]
    direct, _ = small_model.forward(ids)
    via_state, _ = small_model.forward([r.tokens[-1]], r.state) if r.n_fed < len(r.tokens) else (None, None)
    full, _ = small_model.forward(ids + [r.tokens[-1]])
    assert torch.allclose(via_state, full, atol=1e-4)
    assert direct.shape == full.shape


def test_logprobs_are_those_of_the_distribution_sampled_from(small_model):
    params = SamplingParams(temperature=0, max_tokens=6, presence_penalty=0, frequency_penalty=0)
    prompt = small_model.tokenizer.encode("Hello")
    gen = Generation(small_model, prompt, params, logprobs=3)
    r = gen.run()
    assert len(r.logprobs) == len(r.tokens) == 6
    state, ids = None, list(prompt)
    for entry, token in zip(r.logprobs, r.tokens):
        logits, state = small_model.forward(ids, state)
        expected = torch.log_softmax(logits, -1)
        assert entry.token == token == int(expected.argmax())  # greedy: the likeliest
        assert entry.logprob == pytest.approx(float(expected[token]), abs=1e-5)
        assert [t for t, _ in entry.top] == expected.topk(3).indices.tolist()
        assert entry.top[0] == (token, pytest.approx(entry.logprob))
        ids = [token]
    assert not Generation(small_model, prompt, params).run().logprobs  # only when asked


def test_logit_bias_steers_and_bans_tokens(small_model):
    prompt = small_model.tokenizer.encode("Hello")
    base = SamplingParams(temperature=0, max_tokens=5, presence_penalty=0, frequency_penalty=0)
    plain = generate(small_model, prompt, base)
    forced = generate(small_model, prompt, base.replace(logit_bias={1234: 100}))
    assert forced.tokens == [1234] * 5 != plain.tokens
    banned = generate(small_model, prompt, base.replace(logit_bias={plain.tokens[0]: -100}))
    assert banned.tokens[0] != plain.tokens[0]
    sampled = generate(small_model, prompt, base.replace(temperature=1, top_p=1, seed=3, logit_bias={77: 100}))
    assert sampled.tokens == [77] * 5
    with pytest.raises(ValueError, match="logit_bias"):
        SamplingParams(logit_bias={5: 150})
