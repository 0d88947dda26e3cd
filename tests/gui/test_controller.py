"""The pages work from the application controller alone: no page imports or touches the main window."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from PySide6.QtCore import Qt

GUI = Path(__file__).resolve().parents[2] / "app" / "gui"
PAGES = ["chat_page.py", "chat_conversations.py", "chat_view.py", "completion_page.py", "models_page.py", "settings_page.py", "welcome.py", "sampling.py"]
WINDOW_WAYS = {"window", "parent", "parentWidget", "nativeParentWidget", "topLevelWidgets", "activeWindow",
               "win", "main_window"}


@pytest.mark.parametrize("name", PAGES)
def test_no_page_imports_or_reaches_the_main_window(name):
    tree = ast.parse((GUI / name).read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            assert node.module not in ("roost.gui.window", "roost.gui.app"), f"{name} imports {node.module}"
            assert all(a.name != "MainWindow" for a in node.names), name
        if isinstance(node, ast.Attribute):
            assert node.attr not in WINDOW_WAYS, f"{name}:{node.lineno} uses .{node.attr}"
        if isinstance(node, ast.arg):
            assert node.arg not in ("win", "window"), f"{name}:{node.lineno} takes the window"


@pytest.fixture
def ctl(qtbot, home):
    """A controller with its engine thread and no main window at all."""
    from roost.gui.controller import Controller
    from roost.gui.worker import EngineThread

    c = Controller()
    c.attach_engine(EngineThread(c))
    yield c
    c.shutdown()
    import gc

    gc.collect()


def test_the_pages_run_on_the_controller_without_a_window(qtbot, ctl, make_checkpoint, home):
    from roost.core.catalog import load_catalog
    from roost.gui.chat_page import ChatPage
    from roost.gui.completion_page import CompletionPage
    from roost.gui.models_page import ModelsPage
    from roost.gui.settings_page import SettingsPage
    from tests.gui.test_models_gui import MACHINE

    chat, completion, models, settings = ChatPage(ctl), CompletionPage(ctl), ModelsPage(ctl), SettingsPage(ctl)
    for page in (chat, completion, models, settings):
        qtbot.addWidget(page)
    seen = []
    ctl.modelChanged.connect(lambda: seen.append(ctl.info is not None))

    ctl.set_machine(MACHINE, load_catalog(refreshed=False))  # nothing installed: the first-run card
    assert chat.stack.currentIndex() == 1 and chat.welcome.model is not None
    assert models.table.rows and not chat.send_btn.isEnabled() and not completion.gen_btn.isEnabled()

    imported = models.import_path(str(make_checkpoint("v6.0")))  # the Models page lists it at once
    assert imported is not None and models.current().file == imported.name
    qtbot.mouseClick(models.btn["load"], Qt.LeftButton)
    qtbot.waitUntil(lambda: ctl.info is not None or ctl.error is not None, timeout=60000)
    assert ctl.info is not None, ctl.error
    assert seen == [True] and chat.stack.currentIndex() == 0 and chat.send_btn.isEnabled()
    completion.text.setPlainText("Once")
    assert models.status_text(models.current()) == "loaded" and completion.gen_btn.isEnabled()

    chat.sampling.set_values({"max_tokens": 8})
    chat.input.setPlainText("Hello")
    qtbot.mouseClick(chat.send_btn, Qt.LeftButton)
    assert ctl.generating and not models.btn["load"].isEnabled()  # the engine is busy
    qtbot.waitUntil(lambda: chat.rid is None, timeout=60000)
    assert not ctl.generating and models.btn["load"].isEnabled()
    assert ctl.store.messages(chat.conv_id)[1].content

    settings.folder.setText(str(home / "elsewhere"))
    settings.save()  # the Models page follows the new folder by itself
    assert ctl.models_folder() == (home / "elsewhere").resolve()
    assert imported.name not in [r.file for r in models.table.rows]


def test_an_error_is_kept_in_one_place_and_cleared_by_the_next_load(qtbot, ctl, make_checkpoint, tmp_path):
    statuses = []
    ctl.statusChanged.connect(lambda: statuses.append(ctl.error))
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a model")
    ctl.load_model(junk, "cpu fp32")
    qtbot.waitUntil(lambda: ctl.error is not None, timeout=30000)
    assert ctl.info is None and ctl.loading is None and "junk.pth is not a PyTorch file" in ctl.error
    ctl.load_model(make_checkpoint("v5.2"))  # no strategy: the settings' rule (automatic here)
    assert ctl.error is None and ctl.loading == "model-v5.2.pth"
    qtbot.waitUntil(lambda: ctl.info is not None, timeout=60000)
    assert ctl.settings.current.last_model == str(ctl.info.path) and None in statuses


@pytest.mark.skipif(__import__("sys").platform == "win32", reason="the crash is a POSIX signal here")
def test_after_a_load_that_ended_the_app_it_says_which_and_offers_another_strategy(qtbot, window, home, make_checkpoint):
    from roost.core.catalog import load_catalog
    from tests.app.test_loadmarks import crash
    from tests.gui.test_models_gui import MACHINE

    win = window()
    ctl = win.ctl
    path = ctl.import_model(make_checkpoint("v6.0"))
    ctl.remember(last_model=str(path))  # the app reloads it on start: here is where it crashed
    r = crash(home, f"from roost.core.runtime import Runtime; Runtime(mark_loads='app').load({str(path)!r}, 'cpu int8')")
    assert r.returncode < 0, r.stderr

    ctl.set_machine(MACHINE, load_catalog(refreshed=False))  # what the app does on start
    assert ctl.loading is None and ctl.info is None  # not loaded again by itself
    assert ctl.settings.current.last_model == ""  # nor on later starts
    assert f"while loading {path.name} with the strategy “cpu int8”" in ctl.error
    win.show()
    assert win.banner.isVisible() and win.banner_action.isVisible() and win.banner_action.text() == "Load with cpu bf16"
    qtbot.mouseClick(win.banner_action, Qt.LeftButton)
    qtbot.waitUntil(lambda: ctl.info is not None or ctl.error is not None, timeout=60000)
    assert ctl.info is not None and ctl.info.strategy == "cpu bf16", ctl.error
    assert not win.banner.isVisible()
    ctl.set_machine(MACHINE, load_catalog(refreshed=False))  # said once
    assert ctl.error is None
