"""What a chat keeps and says around its replies: each chat's draft and the question being
edited, a reply stopped before its first word, one cut off by a crash, a long message being read,
the tokens in context, and a failed load that leaves the working model."""

from __future__ import annotations

from PySide6.QtCore import Qt

from tests.gui.conftest import load, send, shown_chat, shows


def _open(qtbot, chat, conv_id):
    """Click the chat `conv_id` in the list."""
    chat.reload_list()
    item = chat._item_for(conv_id)
    rect = chat.list.visualItemRect(item)
    qtbot.mouseClick(chat.list.viewport(), Qt.LeftButton, pos=rect.center())
    assert chat.conv_id == conv_id


def test_each_chat_keeps_its_own_draft_and_esc_cancels_an_edit(qtbot, window):
    """What is typed in one chat stays with it (and never gets posted into another); Up in the
    empty box edits the last question, said above the box, and Esc cancels the edit."""
    win, a = shown_chat(qtbot, window, 1000, ["question A", "answer A"])
    chat, store = win.chat, win.ctl.store
    b = store.new("B")
    store.append(b.id, "user", "question B")
    store.append(b.id, "assistant", "answer B")
    _open(qtbot, chat, a.id)
    qtbot.keyClicks(chat.input, "half a thought")
    _open(qtbot, chat, b.id)
    assert chat.input.toPlainText() == "" and chat.edit_pos is None
    qtbot.keyClick(chat.input, Qt.Key_Up)
    assert chat.edit_pos == 0 and chat.input.toPlainText() == "question B" and chat.edit_hint.isVisibleTo(chat)
    _open(qtbot, chat, a.id)  # the edit stays with B; A's draft comes back, as a new question
    assert chat.input.toPlainText() == "half a thought" and chat.edit_pos is None
    assert not chat.edit_hint.isVisibleTo(chat)
    _open(qtbot, chat, b.id)
    assert chat.input.toPlainText() == "question B" and chat.edit_pos == 0
    qtbot.keyClick(chat.input, Qt.Key_Escape)
    assert chat.edit_pos is None and chat.input.toPlainText() == "" and not chat.edit_hint.isVisibleTo(chat)
    assert [m.content for m in store.messages(b.id)] == ["question B", "answer B"]  # nothing changed
    _open(qtbot, chat, a.id)
    chat.new_chat()  # a new chat starts empty; A keeps its draft
    assert chat.input.toPlainText() == ""
    _open(qtbot, chat, a.id)
    assert chat.input.toPlainText() == "half a thought"


def test_a_reply_stopped_before_its_first_word_leaves_no_empty_bubble(qtbot, window, make_checkpoint):
    win = window()
    load(qtbot, win, make_checkpoint("v6.0"))
    chat, store = win.chat, win.ctl.store
    chat.sampling.set_values({"max_tokens": 2000})
    pieces = []
    win.ctl.piece.connect(lambda rid, p: pieces.append(p))
    asks, stop_first = win.ctl.request, [True]

    def request(kind, req):  # Stop pressed before the worker starts (no race with the first word)
        if stop_first[0]:
            req["stop"].set()
        return asks(kind, req)

    win.ctl.request = request
    chat.input.setPlainText("A question.")
    chat.send()
    qtbot.waitUntil(lambda: chat.rid is None, timeout=30000)
    assert not pieces  # (stopped before the prompt was read)
    assert [m.role for m in store.messages(chat.conv_id)] == ["user"]
    chat.sampling.set_values({"max_tokens": 3})
    stop_first[0] = False
    chat.regenerate()
    qtbot.waitUntil(lambda: chat.rid is None, timeout=30000)
    stop_first[0] = True
    first = store.messages(chat.conv_id)[-1]
    assert first.role == "assistant" and first.content
    pieces.clear()
    chat.sampling.set_values({"max_tokens": 2000})
    chat.regenerate()
    qtbot.waitUntil(lambda: chat.rid is None, timeout=30000)
    assert not pieces
    msgs = store.messages(chat.conv_id)  # the answer it was to replace is shown again, the only version
    assert msgs[-1].content == first.content and msgs[-1].versions == 1


def test_tokens_in_context_belong_to_their_chat(qtbot, window, make_checkpoint):
    win = window()
    win.show()
    load(qtbot, win, make_checkpoint("v6.0"))
    chat = win.chat
    chat.sampling.set_values({"max_tokens": 3})
    send(qtbot, win, "Hello")
    qtbot.waitUntil(lambda: chat.rid is None, timeout=30000)
    first, label = chat.conv_id, chat.tokens_label.text()
    assert "tokens in context" in label
    chat.new_chat()
    assert chat.tokens_label.text() == ""  # not the other chat's count
    _open(qtbot, chat, first)
    assert chat.tokens_label.text() == label
    win.resize(900, 600)
    qtbot.wait(50)
    assert chat.tokens_label.width() >= chat.tokens_label.sizeHint().width()  # not clipped at 900 px


def test_a_failed_load_keeps_the_model_that_works(qtbot, window, make_checkpoint, tmp_path):
    """A truncated download pressed Load: the error is shown and the model loaded before stays
    loaded and answers (the file is checked before that model is let go of)."""
    win = window()
    good = make_checkpoint("v6.0")
    load(qtbot, win, good)
    before = win.ctl.info
    cut = tmp_path / "cut.pth"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    win.ctl.load_model(str(cut), "cpu fp32")
    qtbot.waitUntil(lambda: win.ctl.error is not None and win.ctl.loading is None, timeout=30000)
    assert "cut.pth" in win.banner_text.text()
    assert win.ctl.info is before and win.ctl.runtime.model is not None
    assert win.chat.send_btn.isEnabled()
    win.chat.sampling.set_values({"max_tokens": 3})
    send(qtbot, win, "Still there?")
    qtbot.waitUntil(lambda: win.chat.rid is None, timeout=30000)
    assert win.ctl.store.messages(win.chat.conv_id)[-1].content


def test_a_reply_is_saved_as_it_streams_and_one_cut_off_is_shown_interrupted(qtbot, window, make_checkpoint,
                                                                              monkeypatch):
    """What a kill -9 in the middle of a reply leaves: the text streamed so far is in the file (saved
    every SAVE_EVERY seconds), and the next start shows it marked as interrupted."""
    from roost.core.conversations import ConversationStore
    from roost.gui.chat_page import ChatPage

    monkeypatch.setattr(ChatPage, "SAVE_EVERY", 0.0)
    win = window()
    load(qtbot, win, make_checkpoint("v6.0"))
    chat = win.chat
    chat.sampling.set_values({"max_tokens": 4000})
    pieces = []
    win.ctl.piece.connect(lambda rid, p: pieces.append(p))
    send(qtbot, win, "Write a long story.")
    qtbot.waitUntil(lambda: len(pieces) >= 5, timeout=30000)
    on_disk = ConversationStore(win.ctl.store.path).messages(chat.conv_id)[-1]  # as a crash would leave it
    assert on_disk.writing and on_disk.content and "".join(pieces).strip().startswith(on_disk.content.strip()[:10])
    chat.stop()
    qtbot.waitUntil(lambda: chat.rid is None, timeout=30000)
    assert not ConversationStore(win.ctl.store.path).messages(chat.conv_id)[-1].writing  # stopped: not cut off
    assert not shows(chat.view, "Interrupted")

    store = win.ctl.store  # a reply left being written by a Roost that died
    conv = store.new("After a crash")
    store.append(conv.id, "user", "Tell me a story.")
    cut = store.append(conv.id, "assistant", "", writing=True)
    store.update(conv.id, cut.id, "Once upon a time", done=False)
    chat.conv_id = conv.id
    chat.render()
    assert shows(chat.view, "Once upon a time") and shows(chat.view, "Interrupted: Roost closed before")


def test_a_long_message_says_how_far_its_reading_has_come(qtbot, window, make_checkpoint):
    """A long message is read before the reply starts: the reply's place says how far, instead of
    a blinking cursor alone (a 100k-character message took 80 s)."""
    win = window()
    load(qtbot, win, make_checkpoint("v6.0"))
    chat = win.chat
    chat.sampling.set_values({"max_tokens": 3})
    seen, shown = [], []
    status = []
    win.ctl.reading.connect(lambda rid, done, total: seen.append((done, total)) or status.append(win.status_label.text()))
    draw = chat._message_html

    def drawn(m, streaming=False):
        html = draw(m, streaming)
        if streaming:
            shown.append(html)
        return html

    chat._message_html = drawn
    send(qtbot, win, " ".join(f"word{i}" for i in range(900)))
    qtbot.waitUntil(lambda: chat.rid is None, timeout=60000)
    assert seen and seen[-1][0] == seen[-1][1] > 512 and [d for d, _t in seen] == sorted(d for d, _t in seen)
    assert any("Reading your message…" in h and "tokens)" in h for h in shown)
    assert status[0].startswith("Reading the message…") and "tokens/s" not in status[0]  # (not "0.0 tokens/s")
    send(qtbot, win, "Short.")  # a short one says nothing of the kind
    seen.clear()
    qtbot.waitUntil(lambda: chat.rid is None, timeout=60000)
    assert not seen
