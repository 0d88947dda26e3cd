from __future__ import annotations

import json
import shutil
import sqlite3
import time
from pathlib import Path

import pytest

from roost.core.conversations import (
    SCHEMA_VERSION,
    ConversationFileError,
    ConversationStore,
    NewerDatabaseError,
    date_group,
)

FIXTURE = Path(__file__).resolve().parents[1] / "data" / "conversations-schema1.sqlite"


def texts(store, conv_id):
    return [m.content for m in store.messages(conv_id)]


def test_conversations_survive_reopening_and_search(tmp_path):
    db = tmp_path / "chats.sqlite"
    s = ConversationStore(db)
    a = s.new("Trip to Hangzhou")
    s.append(a.id, "user", "What should I see at West Lake?")
    s.append(a.id, "assistant", "The **Su Causeway** at dawn.", reasoning="The user asks about sights.")
    b = s.new("Recipes")
    s.append(b.id, "user", "红烧肉怎么做？")
    s.close()  # like quitting the app

    s = ConversationStore(db)
    assert [c.title for c in s.list()] == ["Recipes", "Trip to Hangzhou"]
    assert [c.title for c in s.list("causeway")] == ["Trip to Hangzhou"]
    assert [c.title for c in s.list("红烧肉")] == ["Recipes"]  # three characters: the trigram index
    assert [c.title for c in s.list("烧肉")] == ["Recipes"]  # two: the substring fallback
    assert [c.title for c in s.list("hangzhou")] == ["Trip to Hangzhou"]  # the title
    msgs = s.messages(a.id)
    assert [(m.position, m.role) for m in msgs] == [(0, "user"), (1, "assistant")]
    assert msgs[1].reasoning == "The user asks about sights."


def test_search_ranks_the_best_match_first_and_titles_before_text(tmp_path):
    s = ConversationStore(tmp_path / "c.sqlite")
    s.append(s.new("Lighthouse").id, "user", "a story")
    many = s.new("Notes")
    s.append(many.id, "user", "lighthouse lighthouse lighthouse keeper")
    once = s.new("Long")
    s.append(once.id, "user", "a long letter about many things, the weather, the sea, " * 10 + "and a lighthouse")
    time.sleep(0.01)
    s.append(once.id, "assistant", "newest")  # the most recent change must not outrank a better match
    found = [c.title for c in s.search("lighthouse")]
    assert found == ["Lighthouse", "Notes", "Long"] if s.fts else set(found) == {"Lighthouse", "Notes", "Long"}
    assert [c.title for c in s.search("lighthouse keeper")] == ["Notes"]  # every word
    assert s.search("50%_") == [] and s.search('"unbalanced') == []  # no LIKE wildcards, no FTS syntax


def test_regenerate_and_edit_keep_the_old_versions(tmp_path):
    db = tmp_path / "c.sqlite"
    s = ConversationStore(db)
    c = s.new(system="Be brief.")
    for role, text in [("user", "one"), ("assistant", "1"), ("user", "two"), ("assistant", "2")]:
        s.append(c.id, role, text)
    s.rewind(c.id, 3)  # regenerate the last answer
    s.append(c.id, "assistant", "II")
    msgs = s.messages(c.id)
    assert texts(s, c.id) == ["one", "1", "two", "II"] and (msgs[3].version, msgs[3].versions) == (2, 2)
    s.switch(c.id, 3, -1)
    assert texts(s, c.id) == ["one", "1", "two", "2"]
    s.rewind(c.id, 2)  # edit the second question: a new branch from there
    s.append(c.id, "user", "deux")
    s.append(c.id, "assistant", "2!")
    assert texts(s, c.id) == ["one", "1", "deux", "2!"] and s.messages(c.id)[2].versions == 2
    s.close()

    s = ConversationStore(db)  # versions and the path shown survive a restart
    assert texts(s, c.id) == ["one", "1", "deux", "2!"]
    s.switch(c.id, 2, -1)  # back to "two", and to the answer last shown under it
    assert texts(s, c.id) == ["one", "1", "two", "2"]
    s.switch(c.id, 2, -1)  # no version before the first: nothing changes
    assert texts(s, c.id) == ["one", "1", "two", "2"]
    s.delete_message(c.id, 3)  # this version of the answer goes; the other one shows
    assert texts(s, c.id) == ["one", "1", "two", "II"] and s.messages(c.id)[3].versions == 1
    s.update(c.id, s.messages(c.id)[1].id, "uno")
    s.rename(c.id, "Numbers")
    md = s.to_markdown(c.id)
    assert md.startswith("# Numbers") and "> Be brief." in md and "**RWKV:**\n\nuno" in md


def test_delete_undo_pin_and_date_groups(tmp_path):
    s = ConversationStore(tmp_path / "c.sqlite")
    a, b, c = s.new("a"), s.new("b"), s.new("c")
    s.append(a.id, "user", "hello")
    s.pin(b.id)
    assert [x.title for x in s.list()] == ["b", "a", "c"]  # pinned first, then newest
    s.delete(a.id)
    assert [x.title for x in s.list()] == ["b", "c"] and s.get(a.id) is None and s.list("hello") == []
    s.restore(a.id)
    assert texts(s, a.id) == ["hello"]
    s.delete(c.id)
    s.close()  # a deletion not undone before closing is final
    s = ConversationStore(tmp_path / "c.sqlite")
    s.restore(c.id)
    assert [x.title for x in s.list()] == ["b", "a"]
    now = time.mktime((2026, 12, 1, 15, 0, 0, 0, 0, -1))
    hours = [(1, "today"), (20, "yesterday"), (24 * 5, "week"), (24 * 20, "month"), (24 * 60, "earlier")]
    assert [date_group(now - h * 3600, now) for h, _ in hours] == [g for _, g in hours]


def test_a_database_from_before_branches_opens_with_every_chat(tmp_path):
    db = tmp_path / "conversations.sqlite"
    shutil.copy(FIXTURE, db)
    s = ConversationStore(db)
    assert s.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    chats = {c.title: c for c in s.list()}
    assert set(chats) == {"Trip to Hangzhou", "红烧肉怎么做？", "New chat"}
    trip = s.messages(chats["Trip to Hangzhou"].id)
    assert [m.content for m in trip] == ["What should I see at West Lake?",
                                         "The **Su Causeway** at dawn, then Leifeng Pagoda.",
                                         "And where to eat?", "Try Louwailou for West Lake fish in vinegar."]
    assert trip[1].reasoning == "The user asks about sights." and chats["Trip to Hangzhou"].system
    assert texts(s, chats["红烧肉怎么做？"].id)[1].startswith("先焯水")
    assert s.messages(chats["New chat"].id) == []
    assert [c.title for c in s.list("小火慢炖")] == ["红烧肉怎么做？"]  # the search index covers old chats
    s.append(chats["New chat"].id, "user", "still works")
    s.close()
    assert texts(ConversationStore(db), chats["New chat"].id) == ["still works"]


def test_a_database_from_a_newer_roost_is_left_alone(tmp_path):
    db = tmp_path / "c.sqlite"
    ConversationStore(db).close()
    raw = sqlite3.connect(db)
    raw.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    raw.close()
    before = db.read_bytes()
    with pytest.raises(NewerDatabaseError, match="newer version of Roost"):
        ConversationStore(db)
    assert db.read_bytes() == before


def test_export_import_round_trip_keeps_every_version(tmp_path):
    s = ConversationStore(tmp_path / "a.sqlite")
    c = s.new("Poems", system="You write haiku.")
    s.append(c.id, "user", "A poem about rain")
    s.append(c.id, "assistant", "Soft rain on the roof", reasoning="short")
    s.rewind(c.id, 1)
    s.append(c.id, "assistant", "雨打芭蕉")
    s.pin(c.id)
    s.set_persona(c.id, "rwkv7-poet.pth")
    exported = s.export_json([c.id])
    other = ConversationStore(tmp_path / "b.sqlite")
    [new_id] = other.import_json(exported)
    assert json.loads(other.export_json([new_id])) == json.loads(exported)
    assert texts(other, new_id) == ["A poem about rain", "雨打芭蕉"] and other.get(new_id).pinned
    assert other.get(new_id).persona == "rwkv7-poet.pth"
    other.switch(new_id, 1, -1)
    assert other.messages(new_id)[1].reasoning == "short"


@pytest.mark.parametrize("content, why", [
    (b"\x89PNG not json", "not JSON"),
    (json.dumps({"format": "something else"}), "not a Roost conversation export"),
    (json.dumps({"format": "roost.conversations", "version": 99, "conversations": []}), "newer Roost"),
    (json.dumps({"format": "roost.conversations", "version": 1, "conversations": [
        {"title": "ok", "messages": [{"id": 0, "parent": None, "role": "user", "content": "fine"}]},
        {"title": "bad", "messages": [{"id": 0, "parent": 5, "role": "user", "content": "x"}]}]}),
     "does not come before it"),
    (json.dumps({"format": "roost.conversations", "version": 1, "conversations": [
        {"title": "bad", "messages": [{"id": 0, "parent": None, "role": "system", "content": "x"}]}]}), "role"),
    (json.dumps({"format": "roost.conversations", "version": 1, "conversations": [
        {"title": "bad", "persona": "../../etc/x.pth", "messages": []}]}), "persona"),
])
def test_a_bad_import_file_is_refused_whole(tmp_path, content, why):
    s = ConversationStore(tmp_path / "c.sqlite")
    s.new("mine")
    with pytest.raises(ConversationFileError, match=why) as e:
        s.import_json(content)
    assert "Nothing was imported" in str(e.value) and "未导入任何内容" in str(e.value)
    assert [c.title for c in s.list()] == ["mine"]  # not even the valid first conversation


def test_a_damaged_file_is_kept_aside_and_a_newer_one_left_alone(tmp_path):
    from roost.core.conversations import open_store

    db = tmp_path / "conversations.sqlite"
    db.write_bytes(b"this is not a database" * 100)
    store, notice = open_store(db)
    assert "could not be read" in notice and store.list() == []
    kept = list(tmp_path.glob("conversations.sqlite.unreadable-*"))
    assert len(kept) == 1 and kept[0].read_bytes().startswith(b"this is not a database")
    store.new("fresh")
    store.close()

    raw = sqlite3.connect(db)
    raw.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 5}")
    raw.close()
    store, notice = open_store(db)
    assert "newer version of Roost" in notice and store.list() == []  # in memory this session
    raw = sqlite3.connect(db)
    assert raw.execute("SELECT title FROM conversations").fetchall() == [("fresh",)]


def test_markdown_export_imports_again_and_other_text_is_refused(tmp_path):
    s = ConversationStore(tmp_path / "c.sqlite")
    c = s.new("西湖", system="Be brief.\nUse Chinese.")
    s.append(c.id, "user", "What to see?")
    s.append(c.id, "assistant", "**Su Causeway**.\n\n```python\nprint(1)\n```", reasoning="Think of sights.")
    s.append(c.id, "user", "谢谢")
    for names in (("You", "RWKV"), ("你", "RWKV")):
        new = s.import_markdown(s.to_markdown(c.id, names))
        assert s.get(new).title == "西湖" and s.get(new).system == "Be brief.\nUse Chinese."
        got = [(m.role, m.content, m.reasoning) for m in s.messages(new)]
        assert got == [(m.role, m.content, m.reasoning) for m in s.messages(c.id)]
    before = len(s.list())
    with pytest.raises(ConversationFileError, match="no messages were found"):
        s.import_markdown("# Shopping list\n\n- eggs\n- milk\n")
    assert len(s.list()) == before


def test_a_reply_cut_off_while_written_is_kept_and_known_as_interrupted(tmp_path):
    """A reply's text is saved as it streams (`done=False`); if the program dies before the end,
    the file keeps that text and says the reply was being written (shown as interrupted); a
    reply that ended, finished or stopped, is not."""
    db = tmp_path / "chats.sqlite"
    s = ConversationStore(db)
    c = s.new("A chat")
    s.append(c.id, "user", "Tell me a story.")
    reply = s.append(c.id, "assistant", "", writing=True)
    assert reply.writing
    s.update(c.id, reply.id, "Once upon a time", done=False)
    other = ConversationStore(db)  # what a program started after a kill -9 reads
    cut = other.messages(c.id)[-1]
    assert cut.content == "Once upon a time" and cut.writing
    s.update(c.id, reply.id, "Once upon a time, the end.")
    assert not ConversationStore(db).messages(c.id)[-1].writing
    assert not s.messages(c.id)[0].writing  # (questions are never being written)
