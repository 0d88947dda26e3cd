"""Prompt formats and the chat session that reuses the model state between turns."""

from __future__ import annotations

import torch

from roost.engine import load_model
from roost.engine.chat import ChatSession
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


def test_g1_think_and_no_think():
    msgs = [Message("user", "why?")]
    assert build_prompt(G1_CHAT, msgs, think=True).endswith("Assistant: <think")
    assert build_prompt(G1_CHAT, msgs, think=False).endswith("Assistant: <think>\n</think>")
    assert split_reasoning(">\nstep one\n</think>\nThe answer.") == ("step one", "The answer.")
    assert split_reasoning(">\nstill thinking") == ("still thinking", "")


def test_clean_keeps_single_newlines():
    assert clean("  a\r\n\r\n\r\nb\nc  ") == "a\nb\nc"


def test_the_second_turn_feeds_only_the_new_text_and_matches_a_full_run(make_checkpoint):
    model = load_model(make_checkpoint("v6.0", n_layer=2, n_embd=128, seed=9))
    params = SamplingParams(temperature=0, max_tokens=12, presence_penalty=0, frequency_penalty=0)
    chat = ChatSession(model, WORLD_CHAT, params)
    first = chat.send("Hello, who are you?")
    list(first)
    chat.finish(first)
    full_first = chat.last_fed_tokens
    second = chat.send("Tell me more.")
    assert chat.last_fed_tokens < full_first + 8  # only the new turn, not the whole history
    # the cached path gives the same next-token logits as processing the transcript from scratch
    ids = model.tokenizer.encode(second.chat_prompt)
    scratch, _ = model.forward(ids)
    cached, _ = model.forward(model.tokenizer.encode(second.chat_prompt[len(chat._seen):]), chat._state)
    top_scratch, top_cached = scratch.topk(5).indices, cached.topk(5).indices
    assert top_scratch[0] == top_cached[0]
    list(second)
    reply = chat.finish(second)
    assert chat.messages[-1] == Message("assistant", reply, verbatim=True)


def test_an_edited_history_starts_over(make_checkpoint):
    model = load_model(make_checkpoint("v6.0", n_layer=2, n_embd=128, seed=9))
    chat = ChatSession(model, WORLD_CHAT, SamplingParams(temperature=0, max_tokens=4))
    g = chat.send("first")
    list(g)
    chat.finish(g)
    chat.messages[0] = Message("user", "edited first")
    g = chat.send("second")
    assert chat.last_fed_tokens == len(model.tokenizer.encode(g.chat_prompt))
    assert torch.is_tensor(model.forward([1])[0])
