"""States saved per reply: a chat reopened after a restart goes on from its last reply's state,
feeding only the new turn; a state of another model, a damaged or missing file fall back to
re-reading the text; the files stay within their budget."""

from __future__ import annotations

import os
import shutil

import pytest

from roost.core.conversations import ConversationStore
from roost.core.runtime import Runtime
from roost.core.saved_states import SavedStates
from roost.engine.sampling import SamplingParams

GREEDY = SamplingParams(temperature=0, presence_penalty=0, frequency_penalty=0, max_tokens=10)
QUESTIONS = ["Hello there, how are you today?", "Tell me about rivers.", "And the sea?"]


class Chat:
    """A conversation as the app keeps it: messages in the store, the reply's id known before it runs."""

    def __init__(self, store: ConversationStore, runtime: Runtime):
        self.store, self.rt = store, runtime
        self.cid = store.new("test").id

    def say(self, text: str, **kw):
        before = self.store.messages(self.cid)
        history = [(m.role, m.content) for m in before]
        self.store.append(self.cid, "user", text)
        reply_msg = self.store.append(self.cid, "assistant", "")
        reply = self.rt.chat(self.cid, history, text, params=GREEDY, path=[m.id for m in before],
                             message=reply_msg.id, **kw)
        self.store.update(self.cid, reply_msg.id, reply.text)
        return reply


def runtime(path, db, budget=2 ** 30) -> Runtime:
    rt = Runtime()
    rt.load(path, "cpu fp32")
    rt.states = SavedStates(db, budget_bytes=budget)
    return rt


@pytest.fixture
def setup(make_checkpoint, tmp_path):
    model = tmp_path / "model.pth"
    shutil.copy(make_checkpoint("v7.0"), model)
    db = tmp_path / "conversations.sqlite"
    return model, db, ConversationStore(db)


def test_after_a_restart_a_new_turn_feeds_only_its_own_tokens(setup):
    model, db, store = setup
    chat = Chat(store, runtime(model, db))
    for q in QUESTIONS[:2]:
        chat.say(q)
    in_memory = chat.say(QUESTIONS[2])  # the same turn, the process still remembering the chat
    store.rewind(chat.cid, 4)  # drop the last turn again: it is asked anew after the "restart"

    chat.rt = runtime(model, db)  # a new process: nothing in memory
    after = chat.say(QUESTIONS[2])
    assert chat.rt.states.resumed == 1
    assert after.fed_tokens == in_memory.fed_tokens  # exactly the new turn's tokens
    assert after.text == in_memory.text  # and the same reply (greedy)

    chat.rt = Runtime()  # without saved states the whole conversation is read again
    chat.rt.load(model, "cpu fp32")
    store.rewind(chat.cid, 4)
    fresh = chat.say(QUESTIONS[2])
    assert fresh.text == in_memory.text and fresh.fed_tokens > 3 * in_memory.fed_tokens


def test_a_state_of_a_changed_model_is_never_used(setup):
    model, db, store = setup
    chat = Chat(store, runtime(model, db))
    chat.say(QUESTIONS[0])
    first = chat.say(QUESTIONS[1])
    store.rewind(chat.cid, 2)
    st = model.stat()  # the model file was replaced (same name): its states are never used
    os.utime(model, ns=(st.st_atime_ns, st.st_mtime_ns + 10 ** 9))
    chat.rt = runtime(model, db)
    changed = chat.say(QUESTIONS[1])
    assert chat.rt.states.resumed == 0 and changed.fed_tokens > first.fed_tokens and changed.text == first.text


def test_damaged_or_missing_state_files_fall_back_to_reading_the_text(setup):
    model, db, store = setup
    for broken in ("damaged", "missing"):
        chat = Chat(store, runtime(model, db))
        chat.say(QUESTIONS[0])
        chat.say(QUESTIONS[1])
        expected = chat.say(QUESTIONS[2])
        store.rewind(chat.cid, 4)
        files = sorted((db.parent / "states").glob(f"{chat.cid}-*"))
        assert len(files) == 3
        for f in files:
            if broken == "damaged":
                f.write_bytes(f.read_bytes()[:1000])
            else:
                f.unlink()
        chat.rt = runtime(model, db)
        again = chat.say(QUESTIONS[2])
        assert again.text == expected.text and again.fed_tokens > expected.fed_tokens
        assert chat.rt.states.resumed == 0 and chat.rt.states.dropped == 2, broken  # both tried, both dropped


def test_regenerating_after_a_restart_starts_from_the_state_before_the_question(setup):
    model, db, store = setup
    chat = Chat(store, runtime(model, db))
    chat.say(QUESTIONS[0])
    second = chat.say(QUESTIONS[1])
    chat.rt = runtime(model, db)
    store.rewind(chat.cid, 2)  # regenerate the second answer: its question stays, the answer is redone
    again = chat.say(QUESTIONS[1])
    assert chat.rt.states.resumed == 1 and again.fed_tokens == second.fed_tokens and again.text == second.text


def test_the_budget_keeps_the_most_recently_used_and_deleted_chats_leave_no_files(setup):
    model, db, store = setup
    rt = runtime(model, db)
    size = None
    chats = [Chat(store, rt) for _ in range(3)]
    for chat in chats:
        chat.say(QUESTIONS[0])
        size = size or rt.states.usage().bytes
    assert rt.states.usage().files == 3
    rt.states.set_budget(2 * size)  # room for two: the oldest goes
    usage = rt.states.usage()
    assert usage.files == 2 and usage.bytes <= 2 * size
    assert len(list((db.parent / "states").iterdir())) == 2
    store.delete(chats[1].cid)
    store.purge_deleted()
    assert rt.states.usage().files == 1  # its rows went with its messages
    os.utime(next((db.parent / "states").glob(f"{chats[1].cid}-*")), (0, 0))  # an old orphan file
    assert rt.states.prune() == 1 and len(list((db.parent / "states").iterdir())) == 1
    rt.states.clear()
    assert rt.states.usage().files == 0 and not list((db.parent / "states").iterdir())
    rt.states.set_budget(0)  # none kept: nothing written
    Chat(store, rt).say(QUESTIONS[0])
    assert rt.states.usage().files == 0 and not list((db.parent / "states").iterdir())
