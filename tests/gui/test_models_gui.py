"""Models page and first run, downloading from the local Hub test server."""

from __future__ import annotations

import hashlib
from dataclasses import replace

import pytest
from PySide6.QtCore import Qt

from roost.core.advisor import RUNS_WELL
from roost.core.catalog import load_catalog
from roost.core.hardware import Machine
from roost.core.queue import DownloadQueue
from tests.hubserver import HubServer

MACHINE = Machine(os="Linux", cpu_name="Test CPU", cpu_cores=8, ram_total=16 << 30, ram_free=12 << 30,
                  disk_free=100 << 30)


@pytest.fixture
def served(make_checkpoint):
    """A catalog whose RWKV-7 G1 entry is a small random checkpoint served by a local Hub."""
    data = make_checkpoint("v7.0", n_layer=2, n_embd=128).read_bytes()
    g1 = [m for m in load_catalog(refreshed=False) if m.family == "RWKV-7 G1"]
    base = max(g1, key=lambda m: (m.billions, m.date))  # the one recommended on a roomy machine
    model = replace(base, host="hf", repo="BlinkDL/rwkv7-g1", sha256=hashlib.sha256(data).hexdigest(),
                    size_bytes=len(data), n_layer=2, n_embd=128)
    others = [m for m in load_catalog(refreshed=False) if m.family != "RWKV-7 G1"]
    hub = HubServer()
    hub.add(model.repo, model.file, data)
    hub.faults.rate = 2_000_000
    hub.start()
    yield model, [model, *others], hub
    hub.stop()


def with_queue(win, hub, home):
    from roost.core import paths

    q = DownloadQueue(paths.models_dir(), endpoints={"hf": hub.hub_url}, backoff=0.01)
    win.ctl.attach_queue(q)
    return q


def test_first_run_downloads_the_recommendation_and_opens_the_chat(qtbot, window, served, home):
    model, catalog, hub = served
    win = window()
    with_queue(win, hub, home)
    win.ctl.set_machine(MACHINE, catalog)
    assert win.chat.stack.currentIndex() == 1  # the welcome card
    welcome = win.chat.welcome
    assert welcome.model == model and welcome.advice.label == RUNS_WELL
    assert model.display in welcome.name.text() and welcome.reason.text()
    qtbot.mouseClick(welcome.button, Qt.LeftButton)
    qtbot.waitUntil(lambda: welcome.bar.value() > 0, timeout=20000)
    qtbot.waitUntil(lambda: win.ctl.info is not None, timeout=60000)
    assert win.chat.stack.currentIndex() == 0 and win.ctl.info.name == model.file
    assert win.chat.send_btn.isEnabled()
    assert (home / "models" / model.file).is_file()


def test_models_page_lists_fit_downloads_pauses_resumes_deletes(qtbot, window, served, home, monkeypatch):
    model, catalog, hub = served
    win = window()
    with_queue(win, hub, home)
    (home / "models").mkdir(parents=True, exist_ok=True)
    (home / "models" / "keep.pth").write_bytes(b"")  # something installed: no welcome card
    win.ctl.set_machine(MACHINE, catalog)
    page = win.models
    win.show_page("models")
    table = page.table
    names = [r.file for r in table.rows]
    assert model.file in names and "keep.pth" in names
    big = next(r for r in table.rows if r.model and r.model.billions >= 14 and r.model.version == 6)
    # RWKV-6 14B does not fit 16 GB with 8-bit weights: it is offered with 4-bit ones, and slow
    assert big.advice.strategy == "cpu int4" and big.advice.fit == "slow"

    page.search.setText(model.params + " G1")
    page.select_file(model.file)
    assert page.current().file == model.file
    qtbot.mouseClick(page.btn["download"], Qt.LeftButton)
    def downloading():
        job = page.jobs.get(model.file)
        return bool(job and job.progress and job.progress.phase == "downloading" and job.progress.done > 500_000)

    qtbot.waitUntil(downloading, timeout=20000)
    assert "%" in page.status_text(page.current()) and "/s" in page.status_text(page.current())
    qtbot.mouseClick(page.btn["pause"], Qt.LeftButton)
    qtbot.waitUntil(lambda: page.status_text(page.current()) == "paused", timeout=20000)
    qtbot.waitUntil(page.btn["resume"].isEnabled, timeout=5000)  # (the queue's news arrives just after)
    hub.faults.rate = None
    qtbot.mouseClick(page.btn["resume"], Qt.LeftButton)
    qtbot.waitUntil(lambda: page.status_text(page.current()) == "downloaded", timeout=30000)
    assert hub.range_starts("cdn")[-1] > 0  # resumed, not restarted

    page.select_file(model.file)
    # the file lands, then the page learns of it: on a busy machine the row's path comes a moment later
    qtbot.waitUntil(lambda: page.btn["load"].isEnabled() and page.current().path is not None, timeout=20000)
    qtbot.mouseClick(page.btn["load"], Qt.LeftButton)
    assert win.ctl.loading  # the click asked the engine thread (a busy engine would refuse it)
    qtbot.waitUntil(lambda: win.ctl.info is not None or win.ctl.error is not None, timeout=60000)
    assert win.ctl.info is not None, win.ctl.error
    assert page.status_text(page.current()) == "loaded" and not page.btn["delete"].isEnabled()
    win.ctl.unload_model()
    qtbot.waitUntil(lambda: win.ctl.info is None, timeout=10000)
    monkeypatch.setattr("roost.gui.dialogs.confirm", lambda *a: True)
    page.select_file(model.file)
    qtbot.mouseClick(page.btn["delete"], Qt.LeftButton)
    assert not (home / "models" / model.file).exists()


def test_strategy_override_and_import(qtbot, window, make_checkpoint, home, tmp_path):
    win = window()
    win.ctl.set_catalog(load_catalog(refreshed=False))
    page = win.models
    ckpt = make_checkpoint("v6.0")
    page.import_path(str(ckpt))
    assert page.current().file == ckpt.name
    page.strategy.setEditText("cpu bf16")
    page._strategy_edited()
    assert win.ctl.settings.current.strategy_overrides[ckpt.name] == "cpu bf16"
    page.strategy.setEditText("gpu turbo")
    page._strategy_edited()
    assert win.ctl.settings.current.strategy_overrides[ckpt.name] == "cpu bf16" and page.reason.text()
    qtbot.mouseClick(page.btn["load"], Qt.LeftButton)
    qtbot.waitUntil(lambda: win.ctl.info is not None, timeout=60000)
    assert win.ctl.info.strategy == "cpu bf16"
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"garbage")
    page.import_path(str(junk))
    assert win.ctl.error and "junk.pth" not in [r.file for r in page.table.rows]


def test_a_download_stopped_in_an_earlier_session_shows_as_paused(qtbot, window, home):
    import json

    model = next(m for m in load_catalog(refreshed=False) if m.family == "RWKV-7 G1")
    folder = home / "models"
    folder.mkdir(parents=True)
    (folder / (model.file + ".part")).write_bytes(b"x" * (model.size_bytes // 4 + 1000))
    (folder / (model.file + ".part.json")).write_text(json.dumps({"sha256": model.sha256, "size": model.size_bytes}))
    win = window()
    win.ctl.set_catalog(load_catalog(refreshed=False))
    row = next(r for r in win.models.table.rows if r.file == model.file)
    assert win.models.status_text(row) == "paused · 25%"


# --- the app's spine: settings reach their users, a model loaded any way opens the chat -------------
def test_importing_and_loading_a_model_opens_the_chat_without_a_restart(qtbot, window, make_checkpoint, home):
    win = window()
    win.ctl.set_machine(MACHINE, load_catalog(refreshed=False))  # nothing downloaded: the welcome card
    assert win.chat.stack.currentIndex() == 1
    page = win.models
    page.import_path(str(make_checkpoint("v7.0")))
    qtbot.mouseClick(page.btn["load"], Qt.LeftButton)
    qtbot.waitUntil(lambda: win.ctl.info is not None, timeout=60000)
    assert win.chat.stack.currentIndex() == 0 and win.chat.send_btn.isEnabled()


def test_a_new_models_folder_takes_the_next_download(qtbot, window, served, home, tmp_path):
    model, catalog, hub = served
    hub.faults.rate = None
    win = window()
    with_queue(win, hub, home)
    win.ctl.set_catalog(catalog)
    settings_page = win.settings_page
    new_folder = tmp_path / "new-models"
    settings_page.folder.setText(str(new_folder))
    settings_page.save()
    assert win.ctl.settings.current.models_dir == str(new_folder.resolve())
    page = win.models
    page.select_file(model.file)
    qtbot.mouseClick(page.btn["download"], Qt.LeftButton)
    qtbot.waitUntil(lambda: page.status_text(page.current()) == "downloaded", timeout=30000)
    assert (new_folder / model.file).is_file() and not (home / "models" / model.file).exists()


def test_a_damaged_settings_file_starts_with_defaults_and_says_so(qtbot, window, home):
    home.mkdir(parents=True, exist_ok=True)
    (home / "settings.json").write_text("{not json")
    win = window()
    assert win.ctl.error and "damaged" in win.ctl.error
    assert win.ctl.settings.current.theme == "system"
    assert len(list(home.glob("settings.json.unreadable-*"))) == 1


def test_an_offline_first_run_says_so_once_in_the_card(qtbot, window, served, home):

    model, catalog, hub = served
    win = window()
    q = with_queue(win, hub, home)
    q.endpoints = {"hf": "http://roost-offline.invalid", "mirror": "http://roost-offline.invalid",
                   "modelscope": "http://roost-offline.invalid"}
    win.ctl.set_machine(MACHINE, catalog)
    welcome = win.chat.welcome
    qtbot.mouseClick(welcome.button, Qt.LeftButton)
    qtbot.waitUntil(lambda: welcome.problem.isVisibleTo(welcome), timeout=5000)  # no half-minute of retries
    message = welcome.problem.text()
    assert message.startswith("Could not reach Hugging Face to download") and "offline" in message
    assert "Errno" not in message and "urlopen" not in message
    assert not welcome.bar.isVisibleTo(welcome) and welcome.button.isEnabled()
    assert welcome.button.text() == "Try again" and welcome.settings_btn.isVisibleTo(welcome)
    assert win.ctl.error is None and not win.banner.isVisibleTo(win)  # one place: the card
    assert "Could not" not in win.status_label.text()


def test_the_models_list_reads_plainly(qtbot, window, home):
    """The recommended model comes first, marked and selected; the fit label tells models apart;
    strategy words only appear under 'Technical details', each explained."""
    from dataclasses import replace as with_

    from roost.core.catalog import recommend

    win = window()
    machine = with_(MACHINE, ram_total=24 << 30, ram_free=20 << 30, read_rate=40e9)
    catalog = load_catalog(refreshed=False)
    (home / "models").mkdir(parents=True, exist_ok=True)
    (home / "models" / "keep.pth").write_bytes(b"")
    win.ctl.set_machine(machine, catalog)
    page = win.models
    win.show_page("models")
    rec, _ = recommend(catalog, machine)
    first = page.table.rows[page.proxy.mapToSource(page.proxy.index(0, 0)).row()]
    assert first.model == rec and page.current().model == rec
    assert page.table.text(first, 0) == "★ " + rec.display
    headers = [page.table.headerData(c, Qt.Horizontal) for c in range(page.table.columnCount())]
    assert "Strategy" not in headers and "On this computer" in headers
    fits = {page.table.text(r, 3) for r in page.table.rows if r.model}
    assert {"Fast", "Slow"} <= fits and len(fits) >= 3  # not the same word on every row
    assert not page.tech.isVisibleTo(page) and "int8" not in page.details.text()
    # cards under a heading per group: the recommended one, then each family in one run
    from roost.gui.model_cards import GROUP

    groups = [page.proxy.index(r, 0).data(GROUP) for r in range(page.proxy.rowCount())]
    runs = [g for i, g in enumerate(groups) if i == 0 or g != groups[i - 1]]
    assert runs[0] == "Recommended for this computer" and len(runs) == len(set(runs)) >= 4
    assert "Local file" in runs and "RWKV-7 G1" in runs
    view = page.view
    inside = next(i for i in range(1, len(groups)) if groups[i] == groups[i - 1])  # not a group's first
    heights = [view.visualRect(page.proxy.index(i, 0)).height() for i in (0, inside)]
    assert heights[0] > heights[1] > 0  # a heading above a group's first card
    said = page.proxy.index(1, 0).data(Qt.AccessibleTextRole)
    assert page.table.text(page.current(), 0) not in said and " · " in said  # a screen reader hears the card
    view.setFocus()
    qtbot.keyClick(view, Qt.Key_Down)  # the keyboard walks the cards
    assert page.current() is not None and page.current().model != rec
    qtbot.keyClick(view, Qt.Key_Up)
    assert page.current().model == rec
    qtbot.mouseClick(page.tech_btn, Qt.LeftButton)
    assert page.tech.isVisibleTo(page) and "int8 / i8: weights kept in 8 bits" in page.terms.text()


def test_a_model_file_dropped_on_the_window_is_imported(qtbot, window, make_checkpoint, home):
    from PySide6.QtCore import QMimeData, QPointF, QUrl
    from PySide6.QtGui import QDragEnterEvent, QDropEvent

    win = window()
    win.ctl.set_catalog(load_catalog(refreshed=False))
    ckpt = make_checkpoint("v7.0")

    def mime(*paths):
        data = QMimeData()
        data.setUrls([QUrl.fromLocalFile(str(p)) for p in paths])
        return data

    notes = mime(home / "notes.txt")
    enter = QDragEnterEvent(win.rect().center(), Qt.CopyAction, notes, Qt.LeftButton, Qt.NoModifier)
    win.dragEnterEvent(enter)
    assert not enter.isAccepted()  # not a model file: refused before the drop
    models = mime(ckpt)
    enter = QDragEnterEvent(win.rect().center(), Qt.CopyAction, models, Qt.LeftButton, Qt.NoModifier)
    win.dragEnterEvent(enter)
    assert enter.isAccepted()
    win.dropEvent(QDropEvent(QPointF(win.rect().center()), Qt.CopyAction, models, Qt.LeftButton, Qt.NoModifier))
    assert (home / "models" / ckpt.name).exists()
    assert win.pages.currentWidget() is win.models and win.models.current().file == ckpt.name


def test_a_model_that_cannot_be_deleted_says_so_and_stays_listed(qtbot, window, make_checkpoint, home, monkeypatch):
    """A file another program holds open cannot be deleted on Windows (nor one on a read-only
    disk anywhere): the app says so in a sentence and keeps the model, instead of an error
    escaping the button's handler."""
    from pathlib import Path

    win = window()
    win.ctl.set_catalog(load_catalog(refreshed=False))
    page = win.models
    page.import_path(str(make_checkpoint("v6.0")))
    name = page.current().file
    real_unlink = Path.unlink

    def held_open(self, *args, **kwargs):
        if self.name == name:
            raise PermissionError(13, "The process cannot access the file because it is being used by another process")
        return real_unlink(self, *args, **kwargs)

    monkeypatch.setattr(Path, "unlink", held_open)
    monkeypatch.setattr("roost.gui.dialogs.confirm", lambda *a: True)
    page.select_file(name)
    qtbot.mouseClick(page.btn["delete"], Qt.LeftButton)
    assert (home / "models" / name).exists() and name in [r.file for r in page.table.rows]
    assert win.ctl.error is not None and f"{name} could not be deleted" in str(win.ctl.error)


def test_the_models_folder_is_watched_and_a_damaged_file_says_what_to_do(qtbot, window, make_checkpoint, home):
    """A file copied into the models folder by hand appears without a restart or a click; a file
    that does not open as a model is listed as damaged, with what to do, and cannot be loaded."""
    win = window()
    folder = home / "models"
    folder.mkdir(parents=True, exist_ok=True)
    win.ctl._watch_models_folder()
    win.ctl.set_machine(MACHINE, load_catalog(refreshed=False))
    page = win.models
    win.show_page("models")
    good = make_checkpoint("v7.0", n_layer=2, n_embd=128).read_bytes()
    (folder / "copied-by-hand.pth").write_bytes(good)
    qtbot.waitUntil(lambda: any(r.file == "copied-by-hand.pth" for r in page.table.rows), timeout=5000)
    (folder / "half-copied.pth").write_bytes(good[:4096])
    qtbot.waitUntil(lambda: any(r.file == "half-copied.pth" for r in page.table.rows), timeout=5000)
    page.select_file("half-copied.pth")
    row = page.current()
    assert page.status_text(row) == "damaged" and not page.btn["load"].isEnabled()
    assert "does not open as an RWKV model" in page.reason.text()
    page.select_file("copied-by-hand.pth")
    assert page.status_text(page.current()) == "downloaded"
    (folder / "half-copied.pth").write_bytes(good)  # the copy finishes: whole now
    qtbot.waitUntil(lambda: page.status_text(next(r for r in page.table.rows if r.file == "half-copied.pth"))
                    == "downloaded", timeout=5000)
    (folder / "copied-by-hand.pth").unlink()  # deleted elsewhere
    qtbot.waitUntil(lambda: all(r.file != "copied-by-hand.pth" for r in page.table.rows), timeout=5000)
