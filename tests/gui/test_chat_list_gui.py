"""The chat page's list of chats (pin, delete and undo, search, when each changed) and its files
(export, import), with real widgets."""

from __future__ import annotations

from PySide6.QtCore import Qt

from tests.gui.conftest import chat_titles


def test_chat_list_pin_delete_undo_and_import(qtbot, window, tmp_path):
    win = window()
    page, store = win.chat, win.ctl.store
    a, b = store.new("Alpha"), store.new("Beta")
    store.append(a.id, "user", "hello")
    page.reload_list()
    assert chat_titles(page) == ["Alpha", "Beta"]  # the one written to last first
    page.pin_chat(b.id)
    assert chat_titles(page) == ["Beta", "Alpha"] and page.list.item(0).text() == "Pinned"
    page.conv_id = b.id
    page.delete_chat()
    assert chat_titles(page) == ["Alpha"] and page.undo_bar.isVisibleTo(page)
    page.undo_delete()
    assert chat_titles(page) == ["Beta", "Alpha"] and not page.undo_bar.isVisibleTo(page)

    page.conv_id = a.id
    page.export_to(str(tmp_path / "alpha.json"), json_format=True)
    page.export_to(str(tmp_path / "alpha.md"), json_format=False)
    assert "**You:**\n\nhello" in (tmp_path / "alpha.md").read_text(encoding="utf-8")
    [new] = page.import_from(str(tmp_path / "alpha.json"))
    assert page.conv_id == new and [m.content for m in store.messages(new)] == ["hello"]
    [from_md] = page.import_from(str(tmp_path / "alpha.md"))  # the readable export comes back too
    assert store.get(from_md).title == "Alpha" and [m.content for m in store.messages(from_md)] == ["hello"]
    bad = tmp_path / "bad.json"
    bad.write_text('{"format": "roost.conversations", "version": 1, "conversations": [{"messages": 3}]}')
    assert page.import_from(str(bad)) == [] and "Nothing was imported" in win.ctl.error
    assert len(chat_titles(page)) == 4


def test_the_chat_list_says_when_each_chat_last_changed(qtbot, window):
    import time

    from roost.gui import i18n
    from roost.gui.chat_view import PINNED, UPDATED, when

    now = time.mktime((2026, 12, 2, 15, 0, 0, 0, 0, -1))
    assert when(now - 3600, now) == "14:00"
    assert when(now - 86400, now) == "Yesterday"
    assert when(now - 20 * 86400, now) == "Nov 12"
    assert when(now - 400 * 86400, now) == "Oct 28, 2025"
    i18n.set_language("zh")
    try:
        assert when(now - 86400, now) == "昨天" and when(now - 20 * 86400, now) == "11月12日"
    finally:
        i18n.set_language("en")

    win = window()
    store, page = win.ctl.store, win.chat
    c = store.new("Pinned one")
    store.pin(c.id, True)
    page.reload_list()
    item = page.list.item_for(c.id)
    assert item.text() == "Pinned one" and item.data(PINNED) and item.data(UPDATED) == store.get(c.id).updated
    assert item.data(Qt.AccessibleTextRole).startswith("Pinned one, ") and item.data(Qt.AccessibleTextRole).endswith("Pinned")
    # two lines (title, time) per chat, one per heading
    heading, chat_row = page.list.visualItemRect(page.list.item(0)), page.list.visualItemRect(item)
    assert chat_row.height() > 1.5 * heading.height() > 0


def test_export_and_import_dialogs_open_in_documents_then_where_the_last_one_was(qtbot, window, tmp_path,
                                                                                monkeypatch):
    """Not in the program's folder (the working directory), where a user would never look."""
    from pathlib import Path

    from PySide6.QtWidgets import QFileDialog

    from roost.gui import chat_files

    monkeypatch.chdir(tmp_path)  # the program's folder
    monkeypatch.setattr(chat_files, "_last_folder", [], raising=False)
    asked = []
    saved = tmp_path / "elsewhere" / "chat.md"
    saved.parent.mkdir()
    monkeypatch.setattr(QFileDialog, "getSaveFileName",
                        lambda parent, title, where, filters: asked.append(where) or (str(saved), filters.split(";;")[0]))
    monkeypatch.setattr(QFileDialog, "getOpenFileName", lambda parent, title, where, filters: asked.append(where) or ("", ""))
    win = window()
    page = win.chat
    page.conv_id = win.ctl.store.new("My chat").id
    page.export()
    first = Path(asked[0])
    assert first.is_absolute() and first.name == "My chat.md" and first.parent != tmp_path
    assert first.parent in (Path.home(), Path.home() / "Documents") or first.parent.name == "Documents"
    assert saved.exists()
    page.import_chats()  # the next dialog opens where the export went
    assert Path(asked[1]) == saved.parent


def test_a_search_without_hits_says_so(qtbot, window):
    win = window()
    page, store = win.chat, win.ctl.store
    store.append(store.new("Alpha").id, "user", "hello")
    page.search.setText("zebra")
    texts = [page.list.item(i).text() for i in range(page.list.count())]
    assert texts == ["No chat contains “zebra”."]
    assert page.list.item(0).data(Qt.UserRole) is None  # nothing to open
    page.search.setText("hello")
    assert chat_titles(page) == ["Alpha"]
