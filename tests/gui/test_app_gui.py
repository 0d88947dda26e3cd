"""Start-up, window state, settings and the G1 reasoning display."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

from PySide6.QtCore import Qt

from tests.conftest import ROOT
from tests.gui.conftest import load, shows

STARTUP = """
import sys, time
from roost.gui.app import create_window
from PySide6.QtWidgets import QApplication
win = create_window(start_engine=False)
QApplication.instance().processEvents()
print("torch" in sys.modules, win.isVisible())
"""


def test_window_appears_before_torch_is_imported(home):
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen", "ROOST_HOME": str(home)}
    r = subprocess.run([sys.executable, "-c", STARTUP], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=120, check=False)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["False", "True"]


def test_geometry_and_settings_are_remembered(qtbot, window, home, monkeypatch):
    for var in ("HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy"):
        monkeypatch.delenv(var, raising=False)  # restored after the test
    win = window()
    win.resize(1000, 610)
    s = win.settings_page
    s.theme.setCurrentIndex(s.theme.findData("dark"))
    s.sampling.set_values({"temperature": 0.7})
    s.proxy.setText("http://127.0.0.1:7890")
    qtbot.mouseClick(next(b for b in s.findChildren(type(win.chat.send_btn)) if b.text() == "Save"), Qt.LeftButton)
    assert os.environ["HTTPS_PROXY"] == "http://127.0.0.1:7890"
    win.close()
    again = window()
    # the offscreen screen is 800 px wide, so only the height can be checked exactly
    assert again.height() == 610 and again.ctl.settings.current.geometry
    assert again.ctl.settings.current.theme == "dark" and again.palette().window().color().lightness() < 128
    assert again.chat.sampling.values()["temperature"] == 0.7  # the chat's defaults follow Settings


def test_g1_reasoning_is_shown_folded_with_a_think_switch(qtbot, window, make_checkpoint, tmp_path):
    g1 = tmp_path / "rwkv7-g1a-test-ctx4096.pth"
    shutil.copy(make_checkpoint("v7.0"), g1)
    win = window()
    load(qtbot, win, g1)
    assert win.ctl.info.reasoning
    assert not win.chat.think.isHidden()
    win.chat.sampling.set_values({"max_tokens": 30})
    win.chat.input.setPlainText("Why is the sky blue?")
    qtbot.mouseClick(win.chat.send_btn, Qt.LeftButton)
    qtbot.waitUntil(lambda: win.chat.rid is None, timeout=60000)
    reply = win.ctl.store.messages(win.chat.conv_id)[1]
    assert reply.reasoning  # a random model never closes </think>: all of it is thinking
    shown = win.chat.view.toPlainText()
    assert "Thinking (" in shown and not shows(win.chat.view, reply.reasoning)  # folded
    n = len("".join(reply.reasoning.split()))
    assert f"Thinking ({n:,} characters)" in shown  # what the number counts, said
    from PySide6.QtCore import QUrl

    win.chat._on_link(QUrl(f"roost:think/{reply.position}"))
    assert shows(win.chat.view, reply.reasoning)
    levels = [win.chat.think.itemText(i) for i in range(win.chat.think.count())]
    assert levels == ["Don't think", "Think a bit", "Think", "Think a lot"]
    win.chat.think.setCurrentIndex(0)  # answer at once: all of the reply is the answer
    win.chat.input.setPlainText("And at night?")
    qtbot.mouseClick(win.chat.send_btn, Qt.LeftButton)
    qtbot.waitUntil(lambda: win.chat.rid is None, timeout=60000)
    reply = win.ctl.store.messages(win.chat.conv_id)[3]
    assert reply.reasoning == "" and reply.content


def test_never_two_models(qtbot, window, make_checkpoint):
    win = window()
    load(qtbot, win, make_checkpoint("v6.0"))
    import gc
    import weakref

    first = weakref.ref(win.ctl.engine.worker.runtime.model)
    win.ctl.info = None
    load(qtbot, win, make_checkpoint("v5.2"))
    rt = win.ctl.engine.worker.runtime
    gc.collect()
    assert first() is None and rt.info.version == 5  # the first model was let go, not kept beside


def test_garbage_is_collected_on_the_ui_thread(window):
    import gc

    window()
    assert not gc.isenabled()  # no collection can start on the engine's thread
    from PySide6.QtWidgets import QApplication

    assert QApplication.instance()._roost_gc.isActive()


def test_saving_settings_keeps_what_the_user_did_not_choose(qtbot, window, home):
    """The page shows the suggested source and the system's language for unset values; saving
    without touching them must not pin them (nor announce a language change)."""
    win = window()
    page = win.settings_page
    page.theme.setCurrentIndex(page.theme.findData("dark"))
    page.save()
    s = win.ctl.settings.current
    assert s.theme == "dark" and s.source == "" and s.language == ""
    assert page.saved.text() == "Saved."
    page.proxy.setText("ftp://nope")
    page.save()
    assert "proxy cannot be 'ftp://nope'" in page.saved.text() and win.ctl.settings.current.proxy == ""
    assert page.saved.wordWrap()  # a long refusal wraps instead of widening the page


def test_the_app_has_its_icon_and_every_action_an_icon(qtbot, window):
    from PySide6.QtWidgets import QApplication, QPushButton

    win = window()
    assert not QApplication.instance().windowIcon().isNull()
    assert all(not win.sidebar.item(i).icon().isNull() for i in range(win.sidebar.count()))
    pages = (win.chat, win.completion, win.models, win.settings_page)
    buttons = [b for page in pages for b in page.findChildren(QPushButton) if b.text() and b.text() != "×"]
    without = [b.text() for b in buttons if b.icon().isNull() and not b.isCheckable()]
    assert len(buttons) > 20 and without == [], without


def test_a_machine_without_a_chinese_font_gets_the_bundled_one(qtbot, monkeypatch):
    from PySide6.QtGui import QFont, QFontDatabase, QFontMetrics

    from roost.gui.app import add_cjk_font
    from tests.conftest import ROOT

    data = (ROOT / "tests" / "data" / "cjk-sample.otf").read_bytes()
    if QFontDatabase.families(QFontDatabase.WritingSystem.SimplifiedChinese):
        assert add_cjk_font(data) is None  # a system font is there: nothing is added
    monkeypatch.setattr(QFontDatabase, "families", staticmethod(lambda *a: []))  # as on a bare desktop
    family = add_cjk_font(data)
    assert family and "Noto Sans CJK" in family
    assert family.lower() in QFont.substitutes(QFont().defaultFamily())  # (Qt keeps them in lower case)
    # (by code point: PySide6 6.11's inFont(str) answered False for a glyph the font has)
    assert QFontMetrics(QFont(family)).inFontUcs4(ord("中"))
    monkeypatch.setattr("roost.core.paths.asset", lambda name: (_ for _ in ()).throw(OSError("no such file")))
    assert add_cjk_font() is None  # a wheel install has no bundled font: nothing happens


def test_every_control_has_a_name_a_screen_reader_can_say(qtbot, window):
    """Buttons by their text, form fields by their label, the rest by an accessible name (Qt's own
    parts of a widget, such as a combo box's popup list or a line edit's clear button, aside)."""
    from PySide6.QtWidgets import (QAbstractButton, QAbstractItemView, QAbstractSpinBox, QComboBox, QFrame,
                                   QHeaderView, QLabel, QLineEdit, QPlainTextEdit, QTextEdit, QWidget)

    win = window()
    kinds = (QAbstractButton, QComboBox, QLineEdit, QAbstractSpinBox, QPlainTextEdit, QTextEdit, QAbstractItemView)
    labelled = {lab.buddy() for lab in win.findChildren(QLabel) if lab.buddy() is not None}
    nameless = []
    for w in win.findChildren(QWidget):
        if not isinstance(w, kinds) or isinstance(w, QHeaderView) or w.objectName().startswith("qt_"):
            continue
        parent = w.parent()
        if isinstance(parent, (QComboBox, QAbstractSpinBox, QLineEdit)) or type(parent) is QFrame:
            continue  # the inner parts of a composite widget
        text = w.text() if isinstance(w, QAbstractButton) else ""
        if not (w.accessibleName() or text.strip() or w in labelled):
            nameless.append(f"{type(w).__name__} in {type(parent).__name__}")
    assert not nameless, nameless


def test_the_tab_key_reaches_every_control_of_every_page(qtbot, window):
    """From the sidebar, Tab walks through every control of the page shown (enabled and visible)
    and back to the sidebar, each once: no control out of reach, no field that keeps the focus."""
    from PySide6.QtWidgets import QAbstractSpinBox, QApplication, QComboBox, QWidget

    win = window()
    win.show()
    win.resize(1280, 800)
    win.activateWindow()
    qtbot.waitExposed(win)
    for page in ("chat", "completion", "models", "settings"):
        win.show_page(page)
        qtbot.wait(20)
        controls = {w for w in win.findChildren(QWidget)
                    if w.isVisible() and w.isEnabled() and w.focusPolicy() & Qt.TabFocus == Qt.TabFocus
                    and w.window() is win and not isinstance(w.parent(), (QAbstractSpinBox, QComboBox))
                    and not w.objectName().startswith("qt_")}
        win.sidebar.setFocus()
        reached = []
        for _ in range(len(controls) + 5):
            qtbot.keyClick(QApplication.focusWidget(), Qt.Key_Tab)
            w = QApplication.focusWidget()
            while w is not None and w not in controls:  # (a spin box's or a combo box's own field)
                w = w.parentWidget()
            if w is win.sidebar:
                break
            reached.append(w)
        assert set(reached) == controls - {win.sidebar}, (page, {type(w).__name__ for w in controls - set(reached)})
        assert len(reached) == len(set(reached))  # each once


def test_converted_weights_are_kept_in_the_cache_folder_and_settings_deletes_them(qtbot, window, home,
                                                                                  make_checkpoint):
    win = window()
    load(qtbot, win, make_checkpoint("v6.0", n_layer=2, n_embd=128), "cpu int8")
    folder = home / "cache" / "weights"
    assert [p.suffix for p in folder.iterdir()] == [".rwc"]  # the user's cache folder, not the models folder
    page = win.settings_page
    page.show_weight_usage()
    assert "in 1 files" in page.weight_usage.text()
    page.clear_weights()
    assert list(folder.iterdir()) == [] and "in 0 files" in page.weight_usage.text()
    page.weight_budget.setValue(0)  # keep none: the next load writes nothing
    page.save()
    assert win.ctl.settings.current.weight_cache_mb == 0 and win.ctl.runtime.options.weight_cache is None
    load(qtbot, win, make_checkpoint("v6.0", n_layer=2, n_embd=128), "cpu int8")
    assert list(folder.iterdir()) == []


def test_the_cpu_threads_row_saves_the_setting_and_applies_it_where_the_app_owns_the_process(qtbot, window, home):
    import torch

    from roost.engine import threads

    win = window()
    page = win.settings_page
    assert page.threads.value() == 0 and page.threads.text() == "Automatic"
    before = torch.get_num_threads()
    try:
        win.ctl.owns_threads = True  # (as roost.gui.app's start_background says)
        page.threads.setValue(1)
        page.save()
        assert win.ctl.settings.current.threads == 1 and torch.get_num_threads() == 1 and not threads.automatic()
        page.threads.setValue(0)
        page.save()
        assert win.ctl.settings.current.threads == 0 and threads.automatic()
    finally:
        threads.configure(before)


def test_ctrl_q_closes_the_window_as_its_close_button_does(qtbot, window):
    from PySide6.QtCore import Qt
    from PySide6.QtWidgets import QApplication

    win = window()
    win.show()
    qtbot.waitExposed(win)
    win.raise_()
    win.activateWindow()  # (shortcuts go to the active window)
    qtbot.waitUntil(lambda: QApplication.activeWindow() is win)
    shut = []
    win.ctl.shutdown = lambda orig=win.ctl.shutdown: (shut.append(True), orig())[1]
    qtbot.keyClick(win.sidebar, Qt.Key_Q, Qt.ControlModifier)
    qtbot.waitUntil(lambda: not win.isVisible(), timeout=3000)
    assert shut == [True]  # the window's close: the chat's reply stopped and saved, the engine shut down


def test_the_status_bar_counts_memory_as_roost_doctor_does(qtbot, window):
    import psutil

    from roost.engine.memory import gib

    win = window()
    win._update_memory()
    total = psutil.virtual_memory().total
    assert f"of {gib(total)}" in win.mem_label.text()  # the same figure as `roost doctor`'s RAM line
    from roost.core.download import memory_size

    for n in (0, 1, 2 ** 30, 25_300_000_000, 7.5 * 2 ** 30):  # (the app's own copy, without torch)
        assert memory_size(n) == gib(n)


def test_the_highlighted_item_of_a_drop_down_is_visible_in_both_themes(qtbot, window):
    """The item under the mouse / keyboard in an open drop-down (Persona, Thinking, Language,
    Theme) is drawn in the accent colour; in the light theme it was white on white."""
    from PySide6.QtGui import QColor
    from PySide6.QtWidgets import QApplication

    from roost.gui.theme import ACCENT, apply_theme

    win = window()
    win.show()
    combo = win.chat.think
    combo.setVisible(True)
    try:
        for theme in ("light", "dark"):
            apply_theme(QApplication.instance(), theme)
            combo.showPopup()
            qtbot.wait(100)
            view = combo.view()
            index = combo.model().index(2, 0)
            view.setCurrentIndex(index)
            qtbot.wait(50)
            rect = view.visualRect(index)
            image = view.viewport().grab().toImage()
            color = image.pixelColor(image.width() - 4, rect.center().y())  # (beside the text)
            assert color == QColor(ACCENT), (theme, color.name())
            combo.hidePopup()
    finally:
        apply_theme(QApplication.instance(), "light")


def test_switching_to_dark_while_a_chat_is_open_redraws_its_bubbles_and_icons(qtbot, window):
    """The open chat's bubbles took the new theme only after a restart (light bubbles with light
    text in the dark theme) and the sidebar's icons stayed dark on dark."""
    from PySide6.QtWidgets import QApplication

    from roost.gui import render
    from roost.gui.theme import apply_theme

    win = window()
    win.show()
    store = win.ctl.store
    conv = store.new("Shown")
    store.append(conv.id, "user", "What is RWKV?")
    store.append(conv.id, "assistant", "An RNN with transformer-level quality.")
    win.chat.conv_id = conv.id
    win.chat.render()

    def lightest(item) -> int:
        image = item.icon().pixmap(20, 20).toImage()
        return max(image.pixelColor(x, y).lightness() for x in range(image.width()) for y in range(image.height())
                   if image.pixelColor(x, y).alpha() > 200)

    try:
        apply_theme(QApplication.instance(), "light")
        assert render.LIGHT.bot_bubble in win.chat.view.toHtml()
        apply_theme(QApplication.instance(), "dark")
        html = win.chat.view.toHtml()
        assert render.DARK.bot_bubble in html and render.LIGHT.bot_bubble not in html
        assert lightest(win._items[2]) > 160  # the Models page's icon, in the dark theme's light text colour
    finally:
        apply_theme(QApplication.instance(), "light")


def test_settings_changes_are_saved_from_a_bar_in_view_and_never_dropped_silently(qtbot, window, monkeypatch):
    """Save sat at the bottom of a long scrolling page and leaving the page dropped the changes:
    the bar stays in view and says there are changes; leaving asks (save, discard or stay)."""
    win = window()
    win.show()
    win.resize(900, 600)
    win.show_page("settings")
    page = win.settings_page
    qtbot.wait(50)
    save = page.btn["save"]
    assert not save.isEnabled() and not page.dirty()
    bottom = save.mapTo(page, save.rect().bottomLeft()).y()
    assert save.isVisible() and 0 < bottom <= page.height()  # in view at 900 x 600, no scrolling
    page.threads.setValue(3)
    assert page.dirty() and save.isEnabled() and "not saved" in page.saved.text()

    answers = []
    monkeypatch.setattr(page, "ask_unsaved", lambda: answers.pop(0))
    answers.append("cancel")
    win.show_page("chat")
    assert win.pages.currentWidget() is page and win.sidebar.currentRow() == 3 and page.threads.value() == 3
    answers.append("discard")
    win.show_page("chat")
    assert win.pages.currentWidget() is win.chat and page.threads.value() == 0
    assert win.ctl.settings.current.threads == 0 and not page.dirty()
    win.show_page("settings")
    page.threads.setValue(2)
    answers.append("save")
    win.show_page("models")
    assert win.pages.currentWidget() is win.models and win.ctl.settings.current.threads == 2 and not page.dirty()
    win.show_page("settings")
    win.show_page("chat")  # nothing changed: no question
    assert win.pages.currentWidget() is win.chat and answers == []


def test_a_new_language_offers_to_restart_roost_now(qtbot, window, monkeypatch):
    """The language applies when Roost starts again: Save says so and offers Restart now, which
    starts Roost again and closes this window as the user would (nothing written is lost)."""
    import sys

    from PySide6.QtCore import QProcess

    win = window()
    win.show()
    win.show_page("settings")
    page = win.settings_page
    assert not page.btn["restart"].isVisibleTo(page)
    page.lang.setCurrentIndex(page.lang.findData("zh"))
    page.save()
    assert win.ctl.settings.current.language == "zh" and page.btn["restart"].isVisibleTo(page)
    assert "Restart now" in page.saved.text()
    started = []
    monkeypatch.setattr(QProcess, "startDetached", staticmethod(lambda program, args: started.append((program, args))
                                                                 or True))
    qtbot.mouseClick(page.btn["restart"], Qt.LeftButton)
    assert started == [(sys.executable, list(sys.argv))]
    assert not win.isVisible() and not win.ctl.engine.thread.isRunning()  # closed as by the user
