"""Prompt formats, and chats that resume from the cached state between turns (roost.engine.resume)."""

from __future__ import annotations

import torch

from roost.engine import load_model
from roost.engine.resume import PrefixCache, generate_resumed, resumable_ids
from roost.engine.prompts import G1_CHAT, RAVEN_CHAT, WORLD_CHAT, Message, build_prompt, clean, default_format, split_reasoning
from roost.engine.sampling import SamplingParams


def test_world_chat_transcript():
    msgs = [Message("system", "Be brief."), Message("user", "hi\n\n\nthere  "), Message("assistant", "Hello!"),
            Message("user", "2+2?")]
    assert build_prompt(WORLD_CHAT, msgs) == (
        "System: Be brief.\n\nUser: hi\nthere\n\nAssistant: Hello!\n\nUser: 2+2?\n\nAssistant:")
    assert "\n\n" in WORLD_CHAT.stop_strings


def test_raven_chat_and_the_default_by_vocabulary():
    assert build_prompt(RAVEN_CHAT, [Message("user", "hi")]) == "Bob: hi\n\nAlice:"
    assert default_format(50277) is RAVEN_CHAT and default_format(65536) is WORLD_CHAT


def test_g1_thinking_levels_follow_the_official_templates():
    """RWKV-LM RWKV-v7/RWKV7-G1x-templates.txt, character by character."""
    msgs = [Message("system", "Be brief."), Message("user", "why?")]
    assert build_prompt(G1_CHAT, msgs, think=True) == "System: Be brief.\n\nUser: why?\n\nAssistant: <think"
    # the fake think has no closing ">"
    assert build_prompt(G1_CHAT, msgs, think=False) == "System: Be brief.\n\nUser: why?\n\nAssistant: <think>\n</think"
    for level, hint in (("low", " (think a bit)"), ("medium", " (think)"), ("high", " (think a lot)")):
        assert build_prompt(G1_CHAT, msgs, think=level) == f"System: Be brief.\n\nUser: why?{hint}\n\nAssistant: <think"
    assert build_prompt(WORLD_CHAT, msgs, think="high").endswith("User: why?\n\nAssistant:")  # not a G1 format
    assert split_reasoning(">\nstep one\n</think>\nThe answer.") == ("step one", "The answer.")
    assert split_reasoning(">\nstill thinking") == ("still thinking", "")
    assert split_reasoning(">The answer.", thinking=False) == ("", "The answer.")  # after the fake think


def test_clean_keeps_single_newlines():
    assert clean("  a\r\n\r\n\r\nb\nc  ") == "a\nb\nc"
    assert clean("a\n \nb") == "a\n \nb"  # the template's rule: only runs of newlines (no spaces between)


def _turn(model, cache, messages, params):
    prompt = build_prompt(WORLD_CHAT, messages)
    ids = resumable_ids(cache, model, prompt)
    return prompt, ids, generate_resumed(model, cache, ids, params.with_stops(WORLD_CHAT.stop_strings), text=prompt)


def test_the_second_turn_feeds_only_the_new_text_and_matches_a_full_run(make_checkpoint):
    model = load_model(make_checkpoint("v6.0", n_layer=2, n_embd=128, seed=9))
    params = SamplingParams(temperature=0, max_tokens=12, presence_penalty=0, frequency_penalty=0)
    cache = PrefixCache()
    first = [Message("user", "Hello, who are you?")]
    _, ids1, d1 = _turn(model, cache, first, params)
    assert d1.fed_tokens == len(ids1) and d1.cached_tokens == 0
    second = first + [Message("assistant", d1.result.text, verbatim=True), Message("user", "Tell me more.")]
    prompt2, ids2, d2 = _turn(model, cache, second, params)
    assert ids2[:len(ids1)] == ids1  # the model's own reply tokens, not the text tokenised again
    new_turn = len(model.tokenizer.encode("\n\nUser: Tell me more.\n\nAssistant:"))
    assert d2.fed_tokens <= new_turn + 2 and d2.cached_tokens == len(ids2) - d2.fed_tokens  # only the new turn
    # resuming gives the logits of processing the same tokens from scratch
    n, state = cache.lookup(model, ids2)
    resumed, _ = model.forward(ids2[n:], state)
    scratch, _ = model.forward(ids2)
    torch.testing.assert_close(resumed, scratch, atol=1e-4, rtol=1e-4)


def test_an_edited_history_starts_over(make_checkpoint):
    model = load_model(make_checkpoint("v6.0", n_layer=2, n_embd=128, seed=9))
    params = SamplingParams(temperature=0, max_tokens=4)
    cache = PrefixCache()
    _, _, d = _turn(model, cache, [Message("user", "first")], params)
    edited = [Message("user", "edited first"), Message("assistant", d.result.text, verbatim=True),
              Message("user", "second")]
    prompt, ids, d2 = _turn(model, cache, edited, params)
    assert d2.fed_tokens == len(ids) == len(model.tokenizer.encode(prompt))
