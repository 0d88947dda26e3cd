from __future__ import annotations

from roost.core.conversations import ConversationStore


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
    assert [c.title for c in s.list("红烧肉")] == ["Recipes"]
    msgs = s.messages(a.id)
    assert [(m.position, m.role) for m in msgs] == [(0, "user"), (1, "assistant")]
    assert msgs[1].reasoning == "The user asks about sights."


def test_edit_regenerate_rename_delete_export(tmp_path):
    s = ConversationStore(tmp_path / "c.sqlite")
    c = s.new(system="Be brief.")
    for role, text in [("user", "one"), ("assistant", "1"), ("user", "two"), ("assistant", "2")]:
        s.append(c.id, role, text)
    s.truncate(c.id, 2)  # edit the second question: it and its answer go
    assert [m.content for m in s.messages(c.id)] == ["one", "1"]
    s.update(c.id, 1, "uno")
    s.rename(c.id, "Numbers")
    md = s.to_markdown(c.id)
    assert md.startswith("# Numbers") and "> Be brief." in md and "**RWKV:**\n\nuno" in md
    s.delete(c.id)
    assert s.list() == [] and s.messages(c.id) == []
