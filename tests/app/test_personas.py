"""A state-tuned persona chosen for a chat: the chat starts from the persona's state, resumes turn
after turn (also after a restart, from its saved states), and never shares states with other chats."""

from __future__ import annotations

import pytest
import torch

from roost.core.conversations import ConversationStore
from roost.core.runtime import Runtime
from roost.core.saved_states import SavedStates
from roost.engine.errors import RoostError
from roost.engine.generate import generate
from roost.engine.prompts import WORLD_CHAT, Message, build_prompt
from roost.engine.sampling import SamplingParams
from roost.engine.synthetic import make_weights

GREEDY = SamplingParams(temperature=0, presence_penalty=0, frequency_penalty=0, max_tokens=8)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("persona")
    tuned = make_weights("v7.0", n_layer=2, n_embd=128, time_state=True, seed=3)
    state = {k: v for k, v in tuned.items() if k.endswith(".att.time_state")}
    torch.save({k: v for k, v in tuned.items() if k not in state}, folder / "rwkv7-base.pth")
    torch.save({k: v * 4 for k, v in state.items()}, folder / "rwkv7-persona.pth")  # a strong persona
    other = make_weights("v7.0", n_layer=3, n_embd=128, time_state=True, seed=4)
    torch.save({k: v for k, v in other.items() if k.endswith(".att.time_state")}, folder / "rwkv7-other.pth")
    return folder


def test_a_persona_chat_starts_from_its_state_and_resumes(files):
    rt = Runtime()
    rt.load(files / "rwkv7-base.pth", "cpu fp32")
    persona = files / "rwkv7-persona.pth"
    r1 = rt.chat(1, [], "Who are you?", params=GREEDY, persona=persona)
    prompt = build_prompt(WORLD_CHAT, [Message("user", "Who are you?")])
    direct = generate(rt.model, prompt, GREEDY.with_stops(WORLD_CHAT.stop_strings),
                      state=rt.model.start_state(persona))
    assert r1.text == direct.text.strip()  # exactly the persona's start, then the prompt
    plain = rt.chat(2, [], "Who are you?", params=GREEDY)
    assert plain.text != r1.text and plain.fed_tokens == r1.fed_tokens  # no persona state reused
    hist = [("user", "Who are you?"), ("assistant", r1.text)]
    r2 = rt.chat(1, hist, "Tell me more.", params=GREEDY, persona=persona)
    other_chat = rt.chat(3, hist, "Tell me more.", params=GREEDY)  # the same text, no persona
    assert r2.fed_tokens < other_chat.fed_tokens  # resumed from the persona chat's own state
    n_prompt = len(rt.model.tokenizer.encode(prompt))
    assert n_prompt + r1.tokens - 1 <= r1.context_tokens <= n_prompt + r1.tokens  # its own token not counted
    with pytest.raises(RoostError, match="layers"):
        rt.chat(4, [], "Hi", params=GREEDY, persona=files / "rwkv7-other.pth")


def test_a_persona_chat_resumes_after_a_restart_from_its_saved_state(files, tmp_path):
    store = ConversationStore(tmp_path / "conversations.sqlite")
    persona = files / "rwkv7-persona.pth"

    def runtime():
        rt = Runtime()
        rt.load(files / "rwkv7-base.pth", "cpu fp32")
        rt.states = SavedStates(store.path)
        return rt

    def say(rt, cid, text, persona=persona):
        before = store.messages(cid)
        store.append(cid, "user", text)
        msg = store.append(cid, "assistant", "")
        r = rt.chat(cid, [(m.role, m.content) for m in before], text, params=GREEDY, persona=persona,
                    path=[m.id for m in before], message=msg.id)
        store.update(cid, msg.id, r.text)
        return r

    cid = store.new("p").id
    rt = runtime()
    say(rt, cid, "Who are you?")
    expected = say(rt, cid, "Tell me more.")
    store.rewind(cid, 2)
    rt = runtime()
    again = say(rt, cid, "Tell me more.")
    assert rt.states.resumed == 1 and again.fed_tokens == expected.fed_tokens and again.text == expected.text
    store.rewind(cid, 2)
    rt = runtime()  # the same chat without its persona: the persona's saved states are not used
    plain = say(rt, cid, "Tell me more.", persona=None)
    assert rt.states.resumed == 0 and plain.fed_tokens > expected.fed_tokens
