"""Chat and completion on real widgets with a small random-weight model."""

from __future__ import annotations

from PySide6.QtCore import Qt

from tests.gui.conftest import chat_titles, load, send, shown_chat, shows


def test_reply_streams_in_and_is_saved(qtbot, window, make_checkpoint):
    win = window()
    assert win.status_label.text() == "No model loaded"
    load(qtbot, win, make_checkpoint("v6.0"))
    assert win.status_label.text().startswith("Ready: model-v6.0.pth")
    win.chat.sampling.set_values({"max_tokens": 40})
    pieces = []
    win.ctl.piece.connect(lambda rid, p: pieces.append(p))
    send(qtbot, win, "Hello, who are you?")
    assert win.chat.rid is not None and not win.chat.send_btn.isEnabled() and win.chat.stop_btn.isEnabled()
    qtbot.waitUntil(lambda: win.chat.rid is None, timeout=60000)
    assert len(pieces) > 3  # streamed piece by piece
    msgs = win.ctl.store.messages(win.chat.conv_id)
    assert [m.role for m in msgs] == ["user", "assistant"]
    assert msgs[1].content == "".join(pieces).strip() and msgs[1].content
    assert shows(win.chat.view, msgs[1].content)
    assert win.ctl.store.get(win.chat.conv_id).title == "Hello, who are you?"
    assert "tokens in context" in win.chat.tokens_label.text()

    # the next turn reuses the conversation's state: only the new text is processed
    replies = []
    win.ctl.done.connect(lambda rid, r: replies.append(r))
    send(qtbot, win, "Tell me more.")
    qtbot.waitUntil(lambda: win.chat.rid is None, timeout=60000)
    assert replies and replies[-1].fed_tokens < 20


def test_stop_takes_effect_within_a_token(qtbot, window, make_checkpoint):
    win = window()
    load(qtbot, win, make_checkpoint("v7.0"))
    win.chat.sampling.set_values({"max_tokens": 4000})
    replies = []
    win.ctl.done.connect(lambda rid, r: replies.append(r))  # (as the UI hears them)
    count = []
    win.ctl.piece.connect(lambda rid, p: count.append(p))
    send(qtbot, win, "Write a very long story.")
    qtbot.waitUntil(lambda: len(count) >= 3, timeout=30000)
    qtbot.mouseClick(win.chat.stop_btn, Qt.LeftButton)
    qtbot.waitUntil(lambda: bool(replies), timeout=10000)
    assert replies[0].finish_reason == "cancelled" and replies[0].tokens < 4000
    assert len(count) <= replies[0].tokens + 1


def test_conversation_survives_a_restart(qtbot, window, make_checkpoint):
    win = window()
    load(qtbot, win, make_checkpoint("v5.2"))
    win.chat.sampling.set_values({"max_tokens": 10})
    send(qtbot, win, "Remember the number 42.")
    qtbot.waitUntil(lambda: win.chat.rid is None, timeout=60000)
    reply = win.ctl.store.messages(win.chat.conv_id)[1].content
    win.close()

    again = window()
    assert chat_titles(again.chat) == ["Remember the number 42."] and again.chat.list.item(0).text() == "Today"
    text = again.chat.view.toPlainText()
    assert "Remember the number 42." in text and shows(again.chat.view, reply)

    # the chat goes on from the state saved after its last reply: only the new turn is read
    load(qtbot, again, make_checkpoint("v5.2"))
    again.chat.sampling.set_values({"max_tokens": 10})
    replies = []
    again.ctl.done.connect(lambda rid, r: replies.append(r))
    send(qtbot, again, "Which number?")
    qtbot.waitUntil(lambda: again.chat.rid is None, timeout=60000)
    assert again.ctl.states.resumed == 1 and replies[-1].fed_tokens < 20
    assert again.ctl.states.usage().files == 2  # one per reply
    page = again.settings_page  # Settings shows what they use, keeps a budget and clears them
    page.show_state_usage()
    assert "in 2 files" in page.state_usage.text()
    page.state_budget.setValue(512)
    page.save()
    assert again.ctl.settings.current.state_budget_mb == 512 and again.ctl.states.budget == 512 * 2 ** 20
    page.clear_states()
    assert again.ctl.states.usage().files == 0 and "in 0 files" in page.state_usage.text()


def test_closing_mid_generation_keeps_the_partial_reply(qtbot, window, make_checkpoint):
    win = window()
    load(qtbot, win, make_checkpoint("v6.0"))
    win.chat.sampling.set_values({"max_tokens": 4000})
    send(qtbot, win, "Go on and on.")
    qtbot.waitUntil(lambda: len(win.chat.partial) > 10, timeout=30000)
    conv = win.chat.conv_id
    win.close()
    assert not win.ctl.engine.thread.isRunning()
    again = window()
    saved = again.ctl.store.messages(conv)[1].content
    assert len(saved) >= 5


def test_switching_pages_while_generating(qtbot, window, make_checkpoint):
    win = window()
    load(qtbot, win, make_checkpoint("v6.0"))
    win.chat.sampling.set_values({"max_tokens": 60})
    send(qtbot, win, "Count to ten.")
    for page in ("models", "settings", "completion", "chat", "models"):
        win.show_page(page)
        qtbot.wait(30)
    assert "Generating" in win.status_label.text() or win.chat.rid is None
    qtbot.waitUntil(lambda: win.chat.rid is None, timeout=60000)
    assert win.ctl.store.messages(win.chat.conv_id)[1].content


def test_edit_and_regenerate(qtbot, window, make_checkpoint):
    win = window()
    load(qtbot, win, make_checkpoint("v6.0"))
    win.chat.sampling.set_values({"max_tokens": 8})
    send(qtbot, win, "First question")
    qtbot.waitUntil(lambda: win.chat.rid is None, timeout=60000)
    send(qtbot, win, "Second question")
    qtbot.waitUntil(lambda: win.chat.rid is None, timeout=60000)
    from PySide6.QtCore import QUrl

    win.chat._on_link(QUrl("roost:edit/2"))  # edit the second question
    assert win.chat.input.toPlainText() == "Second question"
    win.chat.input.setPlainText("Another second question")
    qtbot.mouseClick(win.chat.send_btn, Qt.LeftButton)
    qtbot.waitUntil(lambda: win.chat.rid is None, timeout=60000)
    msgs = win.ctl.store.messages(win.chat.conv_id)
    assert [m.content for m in msgs if m.role == "user"] == ["First question", "Another second question"]
    assert msgs[2].versions == 2  # the first wording is kept as another version
    first_answer = msgs[3].content
    qtbot.mouseClick(win.chat.regen_btn, Qt.LeftButton)
    qtbot.waitUntil(lambda: win.chat.rid is None, timeout=60000)
    msgs = win.ctl.store.messages(win.chat.conv_id)
    assert len(msgs) == 4 and msgs[3].role == "assistant" and (msgs[3].version, msgs[3].versions) == (2, 2)
    assert "‹ 2/2 ›" in win.chat.view.toPlainText()
    win.chat._on_link(QUrl("roost:prev/3"))  # back to the first answer
    assert win.ctl.store.messages(win.chat.conv_id)[3].content == first_answer
    assert "‹ 1/2 ›" in win.chat.view.toPlainText()
    conv = win.chat.conv_id
    win.close()
    again = window()  # the versions and the one shown survive a restart
    msgs = again.ctl.store.messages(conv)
    assert msgs[3].content == first_answer and msgs[3].versions == 2 and msgs[2].versions == 2
    again.chat._on_link(QUrl("roost:prev/2"))  # the original second question, and its answer
    assert [m.content for m in again.ctl.store.messages(conv)][2] == "Second question"


def test_streaming_keeps_the_place_of_a_reader_who_scrolled_up(qtbot, window, make_checkpoint):
    win = window()
    win.resize(900, 600)
    win.show()
    load(qtbot, win, make_checkpoint("v6.0"))
    store = win.ctl.store
    conv = store.new("Long")
    for i in range(40):
        store.append(conv.id, "user", f"Question {i}")
        store.append(conv.id, "assistant", f"Answer {i}\n\n" + "Some words. " * 30)
    win.chat.conv_id = conv.id
    win.chat.render()
    bar = win.chat.view.verticalScrollBar()
    assert bar.value() == bar.maximum() > 0
    win.chat.sampling.set_values({"max_tokens": 200})
    send(qtbot, win, "Go on.")
    qtbot.waitUntil(lambda: len(win.chat.partial) > 20 or win.chat.rid is None, timeout=30000)
    kept = bar.maximum() // 3
    bar.setValue(kept)  # the reader scrolls up to read while the reply streams in
    qtbot.wait(300)
    assert win.chat.rid is not None and bar.value() == kept
    qtbot.waitUntil(lambda: win.chat.rid is None, timeout=60000)
    assert bar.value() == kept  # never pulled down to the end
    bar.setValue(bar.maximum())  # back at the bottom: the next reply is followed again
    send(qtbot, win, "More.")
    qtbot.waitUntil(lambda: win.chat.rid is None, timeout=60000)
    assert bar.value() == bar.maximum()




def test_failed_load_shows_the_error(qtbot, window, tmp_path):
    win = window()
    junk = tmp_path / "broken.pth"
    junk.write_bytes(b"this is not a model")
    win.ctl.load_model(str(junk), "cpu fp32")
    qtbot.waitUntil(lambda: win.ctl.error is not None, timeout=30000)
    assert win.ctl.info is None and win.status_label.text().startswith("Error:")
    assert not win.banner.isHidden() and "broken.pth" in win.banner_text.text()
    assert "broken.pth" in win.status_label.toolTip() or "not" in win.status_label.text()
    assert not win.chat.send_btn.isEnabled()


def test_completion_continues_the_text(qtbot, window, make_checkpoint):
    win = window()
    page = win.completion
    win.show_page("completion")
    win.show()
    assert not page.gen_btn.isEnabled() and page.why_not.text() == "Load a model first (Models page)."
    assert page.about.text() == "Continues your text like a storybook."  # each preset says what it does
    assert not page.sampling.isVisibleTo(page)  # the knobs wait behind "Advanced"
    qtbot.mouseClick(page.advanced, Qt.LeftButton)
    assert page.sampling.isVisibleTo(page) and page.stops.isVisibleTo(page)
    assert "predictable" in page.sampling.boxes["temperature"].toolTip()
    load(qtbot, win, make_checkpoint("v7.0"))
    page.text.clear()
    assert not page.gen_btn.isEnabled() and "Write a beginning" in page.why_not.text()
    page.text.setPlainText("Once upon a time")
    assert page.gen_btn.isEnabled() and page.why_not.text() == ""
    page.sampling.set_values({"max_tokens": 20})
    qtbot.mouseClick(page.gen_btn, Qt.LeftButton)
    qtbot.waitUntil(lambda: page.rid is None, timeout=60000)
    assert page.text.toPlainText().startswith("Once upon a time")
    assert len(page.text.toPlainText()) > len("Once upon a time")
    assert "tokens/s" in page.info.text()


def test_composer_keys_and_shortcuts(qtbot, window, make_checkpoint):
    from PySide6.QtGui import QGuiApplication

    win = window()
    win.show()
    load(qtbot, win, make_checkpoint("v6.0"))
    box = win.chat.input
    small = box.height()
    box.setPlainText("\n".join(f"line {i}" for i in range(6)))
    assert box.height() > small  # grows with the text
    box.clear()
    qtbot.keyClicks(box, "first")
    qtbot.keyClick(box, Qt.Key_Return, Qt.ShiftModifier)  # a new line, not sent
    qtbot.keyClicks(box, "second")
    assert box.toPlainText() == "first\nsecond" and win.chat.rid is None
    win.chat.sampling.set_values({"max_tokens": 4000})
    qtbot.keyClick(box, Qt.Key_Return)  # Enter sends
    assert win.chat.rid is not None and box.toPlainText() == ""
    qtbot.keyClick(box, Qt.Key_Escape)  # Esc stops
    qtbot.waitUntil(lambda: win.chat.rid is None, timeout=30000)
    assert win.ctl.store.messages(win.chat.conv_id)[0].content == "first\nsecond"

    win.ctl.settings.update(send_key="ctrl+enter")
    qtbot.keyClicks(box, "third")
    qtbot.keyClick(box, Qt.Key_Return)  # now a new line
    assert box.toPlainText() == "third\n" and win.chat.rid is None
    win.chat.sampling.set_values({"max_tokens": 3})
    qtbot.keyClick(box, Qt.Key_Return, Qt.ControlModifier)
    assert win.chat.rid is not None
    qtbot.waitUntil(lambda: win.chat.rid is None, timeout=30000)

    before = win.chat.conv_id
    qtbot.keyClick(win.chat, Qt.Key_N, Qt.ControlModifier)  # new chat
    assert win.chat.conv_id != before and QGuiApplication.focusObject() is box
    qtbot.keyClick(win.chat, Qt.Key_F, Qt.ControlModifier)
    assert QGuiApplication.focusObject() is win.chat.search
    qtbot.keyClick(win, Qt.Key_3, Qt.ControlModifier)
    assert win.pages.currentWidget() is win.models
    assert box.accessibleName() and win.chat.view.accessibleName() and win.sidebar.accessibleName()


def test_replies_show_markdown_code_with_a_copy_link_and_long_chats_open_at_the_end(qtbot, window):
    from PySide6.QtCore import QUrl
    from PySide6.QtGui import QGuiApplication

    win = window()
    store = win.ctl.store
    conv = store.new("Code")
    store.append(conv.id, "user", "Show me a loop")
    store.append(conv.id, "assistant", "Here:\n\n```python\nfor i in range(3):\n    print(i)\n```\n\n"
                                       "| a | b |\n|---|---|\n| 1 | 2 |\n\n<b>raw html</b> and $x^2$")
    win.chat.conv_id = conv.id
    win.chat.render()
    html = win.chat.view.toHtml()
    assert "roost:code/1-0" in html and "color:" in html  # a copy link; Pygments colours
    text = win.chat.view.toPlainText()
    assert "<b>raw html</b>" in text and "x^2" in text and "$" not in text  # HTML shown as text; TeX as code
    from PySide6.QtWidgets import QToolTip

    QToolTip.hideText()
    win.chat._on_link(QUrl("roost:code/1-0"))
    assert QGuiApplication.clipboard().text() == "for i in range(3):\n    print(i)"
    assert QToolTip.text() == "Copied"  # said where the user clicked

    # a poem's lines stay lines: one newline is a line break, not a space
    store.append(conv.id, "user", "A poem, please")
    store.append(conv.id, "assistant", "Roses are red,\nviolets are blue.\n\nThe end.")
    win.chat.render()
    lines = win.chat.view.toPlainText().splitlines()
    assert "Roses are red," in lines and "violets are blue." in lines and "The end." in lines

    long = store.new("Long")
    for i in range(500):
        store.append(long.id, "user", f"question {i}")
        store.append(long.id, "assistant", f"answer {i}")
    win.chat.conv_id = long.id
    win.chat.shown = 100
    win.chat.render()
    text = win.chat.view.toPlainText()
    assert "answer 499" in text and "answer 449" not in text and "Show 900 earlier messages" in text
    win.chat._on_link(QUrl("roost:earlier/0"))
    text = win.chat.view.toPlainText()
    assert "answer 449" in text and "Show 800 earlier messages" in text


def test_a_reply_in_a_long_chat_redraws_only_itself(qtbot, window, make_checkpoint, monkeypatch):
    """Sending, streaming and finishing touch the end of the view only: a long chat is not laid
    out again for every reply (benchmarks/ui_bench.py measures the time)."""
    win = window()
    load(qtbot, win, make_checkpoint("v6.0"))
    store, chat = win.ctl.store, win.chat
    conv = store.new("Long")
    for i in range(60):
        store.append(conv.id, "user", f"q{i}")
        store.append(conv.id, "assistant", f"a{i}")
    chat.conv_id = conv.id
    chat.render()
    full = []
    original = chat.render
    monkeypatch.setattr(chat, "render", lambda: (full.append(1), original())[1])
    chat.sampling.set_values({"max_tokens": 12})
    send(qtbot, win, "One more")
    qtbot.waitUntil(lambda: chat.rid is None, timeout=60000)
    reply = store.messages(conv.id)[-1]
    assert full == [] and reply.content and shows(chat.view, reply.content)
    assert chat.view.toPlainText().count("One more") == 1 and "▍" not in chat.view.toPlainText()
    drawn_as_stored(chat)
    qtbot.mouseClick(chat.regen_btn, Qt.LeftButton)  # a new answer in the last one's place
    qtbot.waitUntil(lambda: chat.rid is None, timeout=60000)
    assert full == [] and "2/2" in chat.view.toPlainText()[-120:]
    drawn_as_stored(chat)


def drawn_as_stored(chat) -> None:
    """The view knows which message each of its tables is: the messages stored, in order (how the
    actions under the mouse find their message)."""
    stored = chat.ctl.store.messages(chat.conv_id)
    drawn = chat.view.messages
    assert [(m.id, m.version) for m in drawn] == [(m.id, m.version) for m in stored[len(stored) - len(drawn):]]
    assert len(chat.view.document().rootFrame().childFrames()) == len(drawn)


def test_a_state_tuned_persona_is_offered_for_the_model_it_fits_and_used(qtbot, window, tmp_path):
    import shutil

    import torch

    from roost.engine.synthetic import make_weights

    win = window()
    folder = win.ctl.models_folder()
    folder.mkdir(parents=True, exist_ok=True)
    tuned = make_weights("v7.0", n_layer=2, n_embd=128, time_state=True, seed=3)
    state = {k: v * 4 for k, v in tuned.items() if k.endswith(".att.time_state")}
    torch.save({k: v for k, v in tuned.items() if not k.endswith(".att.time_state")}, tmp_path / "rwkv7-base.pth")
    shutil.copy(tmp_path / "rwkv7-base.pth", folder / "rwkv7-base.pth")
    torch.save(state, tmp_path / "rwkv7-poet.pth")
    seen = []
    win.ctl.personaImported.connect(seen.append)
    assert win.ctl.import_model(tmp_path / "rwkv7-poet.pth") is None  # not a model: a persona, copied in
    assert seen == [folder / "rwkv7-poet.pth"] and (folder / "rwkv7-poet.pth").is_file()
    assert "Persona rwkv7-poet added" in win.status_label.text() and win.ctl.error is None
    assert "★ rwkv7-poet" not in [win.chat.persona.itemText(i) for i in range(win.chat.persona.count())]
    load(qtbot, win, folder / "rwkv7-base.pth")
    names = [win.chat.persona.itemText(i) for i in range(win.chat.persona.count())]
    assert "★ rwkv7-poet" in names and "rwkv7-poet.pth" not in [r.path.name for r in win.ctl.model_rows()[0]]
    win.chat.new_chat()
    win.chat.persona.setCurrentIndex(names.index("★ rwkv7-poet"))
    conv = win.ctl.store.get(win.chat.conv_id)
    assert conv.persona == "rwkv7-poet.pth" and conv.system == ""
    win.chat.sampling.set_values({"max_tokens": 6, "temperature": 0})
    requests = []
    win.ctl.engine.requestChat.connect(lambda rid, req: requests.append(req))
    send(qtbot, win, "Who are you?")
    qtbot.waitUntil(lambda: win.chat.rid is None, timeout=60000)
    assert requests[-1]["persona"] == str(folder / "rwkv7-poet.pth")
    assert win.ctl.store.messages(win.chat.conv_id)[1].content  # answered from the persona's state
    other = win.chat.conv_id
    win.chat.new_chat()  # a new chat keeps the choice; switching back shows each chat's own
    win.chat.persona.setCurrentIndex(0)
    win.chat.list.setCurrentItem(win.chat._item_for(other))
    assert win.chat.persona.currentText() == "★ rwkv7-poet"


def test_an_empty_chat_says_what_to_do(qtbot, window, make_checkpoint):
    win = window()
    assert "No model is loaded yet" in win.chat.view.toPlainText()
    load(qtbot, win, make_checkpoint("v7.0"))
    win.chat.new_chat()
    text = win.chat.view.toPlainText()
    assert "Chat with model-v7.0" in text and "nothing you write leaves it" in text and win.chat.view.empty
    win.chat.sampling.set_values({"max_tokens": 3})
    send(qtbot, win, "Hello")
    qtbot.waitUntil(lambda: win.chat.rid is None, timeout=60000)
    shown = win.chat.view.toPlainText()
    assert "Hello" in shown and "Chat with" not in shown and not win.chat.view.empty  # the hint gave way


def test_a_message_shows_its_actions_under_the_mouse(qtbot, window):
    """Copy, edit/regenerate and delete appear under the bubble the mouse is over (not on every
    message), act on that message, and are in its context menu."""
    from PySide6.QtCore import QPoint
    from PySide6.QtGui import QGuiApplication
    from PySide6.QtTest import QTest

    win, conv = shown_chat(qtbot, window, 1000, ["first question", "first answer", "second question", "second answer"])
    store, chat = win.ctl.store, win.chat
    view, bar = chat.view, chat.view.actions
    drawn_as_stored(chat)
    assert not bar.isVisible() and "copy" not in view.toPlainText()  # no links under every message

    bubble = view.bubble_rect(1)  # the first answer
    QTest.mouseMove(view.viewport(), bubble.center().toPoint())
    qtbot.waitUntil(bar.isVisible, timeout=2000)
    assert bar.position == 1 and bar.buttons["regen"].isVisibleTo(bar) and not bar.buttons["edit"].isVisibleTo(bar)
    geometry = bar.geometry()
    assert geometry.top() >= bubble.bottom() and geometry.bottom() < view.bubble_rect(2).top()  # under it
    assert abs(geometry.left() - bubble.left()) < 8  # at the answer's side
    qtbot.mouseClick(bar.buttons["copy"], Qt.LeftButton)
    assert QGuiApplication.clipboard().text() == "first answer"

    question = view.bubble_rect(2)
    QTest.mouseMove(view.viewport(), question.center().toPoint())
    qtbot.waitUntil(lambda: bar.position == 2, timeout=2000)
    assert bar.buttons["edit"].isVisibleTo(bar) and not bar.buttons["regen"].isVisibleTo(bar)
    assert abs(bar.geometry().right() - question.right()) < 8  # the question's side: the right
    qtbot.mouseClick(bar.buttons["edit"], Qt.LeftButton)
    assert chat.input.toPlainText() == "second question" and chat.edit_pos == 2
    chat.edit_pos = None
    chat.input.clear()

    view.busy = True  # while a reply is written only copy can be used
    view.show_actions(view.message_at(question.center().toPoint()))
    assert bar.buttons["copy"].isEnabled() and not bar.buttons["delete"].isEnabled()
    view.busy = False

    # the context menu of the message (a right click)
    menu = view.menu_at(view.bubble_rect(1).center().toPoint())
    labels = [a.text() for a in menu.actions()]
    assert labels[-3:] == ["Copy", "Regenerate", "Delete"]
    menu.actions()[-1].trigger()  # delete the first answer (and what followed)
    assert [m.content for m in store.messages(conv.id)] == ["first question"]
    drawn_as_stored(chat)

    QTest.mouseMove(view.viewport(), QPoint(view.viewport().width() // 2, view.viewport().height() - 5))
    qtbot.waitUntil(lambda: not bar.isVisible(), timeout=2000)  # below the last message: none


def test_the_keyboard_copies_the_last_reply_and_edits_the_last_question(qtbot, window):
    """Without the mouse: Ctrl+Shift+C copies the last reply; Up in the empty message box takes the
    last question back to edit (Regenerate is a button)."""
    from PySide6.QtGui import QGuiApplication

    win, _conv = shown_chat(qtbot, window, 1000, ["first question", "first answer", "second question", "second answer"])
    chat = win.chat
    QGuiApplication.clipboard().setText("")
    chat.input.setFocus()
    qtbot.keyClick(chat.input, Qt.Key_C, Qt.ControlModifier | Qt.ShiftModifier)
    assert QGuiApplication.clipboard().text() == "second answer"
    chat.input.setPlainText("draft")
    qtbot.keyClick(chat.input, Qt.Key_Up)  # not while something is written
    assert chat.edit_pos is None and chat.input.toPlainText() == "draft"
    chat.input.clear()
    qtbot.keyClick(chat.input, Qt.Key_Up)
    assert chat.edit_pos == 2 and chat.input.toPlainText() == "second question"




def test_a_bubble_is_as_wide_as_its_text_and_code_gets_the_row(qtbot, window):
    """A short message's bubble fits its words (questions on the right); one with a code block or
    a table takes the row, so its code is not wrapped into a narrow column."""
    code = "```python\nfor row in csv.reader(open('data.csv')):\n    print(row)\n```"
    win, _conv = shown_chat(qtbot, window, 1200, ["hi", "hello", "code please", code])
    view = win.chat.view
    row = view.viewport().width()
    short_q, short_a, code_bubble = view.bubble_rect(0), view.bubble_rect(1), view.bubble_rect(3)
    assert short_q.width() < row / 4 and short_a.width() < row / 4
    assert short_q.left() > row / 2 > short_a.right()  # the user's on the right, the reply's on the left
    assert code_bubble.width() > row * 0.8


def test_loads_and_replies_run_on_threads_that_end_with_them(qtbot, window, make_checkpoint, monkeypatch):
    """The engine thread lives as long as the window; the work it is given runs on a thread of its
    own, so that no OpenMP worker pool stays behind to slow the local API server (roost.engine.threads)."""
    import threading

    from roost.core.runtime import Runtime

    where = []
    for name in ("load", "chat"):
        real = getattr(Runtime, name)

        def spy(self, *args, _real=real, **kwargs):
            where.append(threading.current_thread().name)
            return _real(self, *args, **kwargs)

        monkeypatch.setattr(Runtime, name, spy)
    win = window()
    load(qtbot, win, make_checkpoint("v6.0"))
    win.chat.sampling.set_values({"max_tokens": 4})
    send(qtbot, win, "Hello")
    qtbot.waitUntil(lambda: win.chat.rid is None, timeout=60000)
    assert where == ["roost-parallel-work", "roost-parallel-work"]
