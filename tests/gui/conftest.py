"""GUI tests run real widgets offscreen, each with its own data folder."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import pytest
from PySide6.QtCore import Qt


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("ROOST_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("ROOST_MODELS_DIR", raising=False)
    monkeypatch.setenv("LANG", "en_US.UTF-8")
    return tmp_path / "home"


@pytest.fixture
def window(qtbot, home):
    """The main window with its engine thread, as `roost` starts it (no machine probe)."""
    from roost.core.runtime import Runtime
    from roost.gui.app import create_window
    from roost.gui.worker import EngineThread

    wins = []

    def make():
        win = create_window(start_engine=False)
        qtbot.addWidget(win)
        # the app's load options (the converted-weights cache in the test home), without its
        # process-wide allocator tuning
        options = win.ctl.settings.current.load_options().replace(tune_allocator=False)
        win.ctl.attach_engine(EngineThread(win.ctl, runtime=Runtime(options)))
        wins.append(win)
        return win

    yield make
    for w in wins:
        if w.isVisible():
            w.close()
    import gc

    gc.collect()  # on this (the UI) thread, never on the next test's worker thread
    gc.enable()  # the app turned automatic collection off; tests outside the GUI expect it on


def load(qtbot, win, path, strategy="cpu fp32"):
    win.ctl.load_model(str(path), strategy)
    qtbot.waitUntil(lambda: win.ctl.info is not None or win.ctl.error is not None, timeout=60000)
    assert win.ctl.info is not None, win.ctl.error


def shows(view, markdown: str, chars: int = 40) -> bool:
    """Whether a chat `view` shows the start of a message's Markdown text as it renders: whitespace
    normalised, so a random model's newlines, spaces and Markdown signs cannot fail a test."""
    from PySide6.QtGui import QTextDocument

    from roost.gui.render import markdown_html

    doc = QTextDocument()
    doc.setHtml(markdown_html(markdown)[0])
    wanted = " ".join(doc.toPlainText().split())[:chars]
    return bool(wanted) and wanted in " ".join(view.toPlainText().split())


def chat_titles(page):
    """The chats in the list, without the date headings between them."""
    from PySide6.QtCore import Qt

    items = [page.list.item(i) for i in range(page.list.count())]
    return [i.text() for i in items if i.data(Qt.UserRole) is not None]


def send(qtbot, win, text):
    win.chat.input.setPlainText(text)
    qtbot.mouseClick(win.chat.send_btn, Qt.LeftButton)


def shown_chat(qtbot, window, width: int, texts: list[str]):
    """A window shown `width` wide with a chat open whose messages are `texts` (question first)."""
    win = window()
    win.show()
    win.resize(width, 700)
    store = win.ctl.store
    conv = store.new("Shown")
    for i, text in enumerate(texts):
        store.append(conv.id, "user" if i % 2 == 0 else "assistant", text)
    win.chat.conv_id = conv.id
    win.chat.render()
    qtbot.wait(50)
    return win, conv
