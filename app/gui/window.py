"""The main window: a sidebar of pages, a status area, model control and clean shutdown."""

from __future__ import annotations

import itertools
import logging

import psutil
from PySide6.QtCore import QByteArray, QObject, Qt, QTimer, Signal
from PySide6.QtWidgets import (
    QFrame,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QMainWindow,
    QMessageBox,
    QProgressBar,
    QPushButton,
    QStackedWidget,
    QVBoxLayout,
    QWidget,
)

from roost.core import paths
from roost.core.conversations import ConversationStore
from roost.gui.i18n import split_bilingual, tr
from roost.gui.tasks import Tasks

log = logging.getLogger("roost")


def human(n: float) -> str:
    return f"{n / 1e9:.1f} GB"


class Bridge(QObject):
    """Carries callbacks from non-Qt threads (the download queue) to the UI thread."""

    job = Signal(object)


class MainWindow(QMainWindow):
    modelChanged = Signal()  # loaded, unloaded or failed: pages update their controls

    def __init__(self, *, engine=None, queue=None, catalog=None, settings=None):
        super().__init__()
        self.setWindowTitle("Roost")
        from roost.core.settings import SettingsStore

        self.settings = settings or SettingsStore()  # the typed settings; .current is a Settings
        self.store = ConversationStore(paths.data_dir() / "conversations.sqlite")
        self._rids = itertools.count(1)
        self.engine = engine  # EngineThread, started after the window is shown (heavy imports)
        self.queue = queue
        self.catalog = catalog
        self.machine = None
        self.info = None  # LoadedInfo of the loaded model
        self.strategy_reason = ""
        self.loading: str | None = None  # name of the model being loaded
        self.generating = False
        self.tps = 0.0  # tokens/s of the running generation, shown in the status bar
        self._pieces, self._first_piece, self._shown_tps = 0, 0.0, 0.0
        self.error: str | None = None
        self.bridge = Bridge()
        self.tasks = Tasks(self)  # background work whose results come back on this thread
        self._build()
        self._restore_geometry()
        self.mem_timer = QTimer(self, interval=2000, timeout=self._update_memory)
        self.mem_timer.start()
        self._update_memory()
        self.update_status()

    # --- layout --------------------------------------------------------------------------------
    def _build(self) -> None:
        from roost.gui.chat_page import ChatPage
        from roost.gui.completion_page import CompletionPage
        from roost.gui.models_page import ModelsPage
        from roost.gui.settings_page import SettingsPage

        central = QWidget()
        row = QHBoxLayout(central)
        row.setContentsMargins(0, 0, 0, 0)
        row.setSpacing(0)
        self.sidebar = QListWidget(objectName="sidebar")
        self.sidebar.setFixedWidth(150)
        self.pages = QStackedWidget()
        self.chat = ChatPage(self)
        self.completion = CompletionPage(self)
        self.models = ModelsPage(self)
        self.settings_page = SettingsPage(self)
        for title, page in [(tr("Chat"), self.chat), (tr("Completion"), self.completion),
                            (tr("Models"), self.models), (tr("Settings"), self.settings_page)]:
            self.sidebar.addItem(title)
            self.pages.addWidget(page)
        self.sidebar.currentRowChanged.connect(self.pages.setCurrentIndex)
        self.sidebar.setCurrentRow(0)
        row.addWidget(self.sidebar)
        right = QVBoxLayout()
        right.setContentsMargins(0, 0, 0, 0)
        self.banner = QFrame(objectName="banner", visible=False)
        bl = QHBoxLayout(self.banner)
        self.banner_text = QLabel(wordWrap=True, textInteractionFlags=Qt.TextSelectableByMouse)
        close = QPushButton("×", flat=True, clicked=self.clear_error)
        close.setFixedWidth(28)
        bl.addWidget(self.banner_text, 1)
        bl.addWidget(close, 0, Qt.AlignTop)
        right.addWidget(self.banner)
        right.addWidget(self.pages, 1)
        row.addLayout(right, 1)
        self.setCentralWidget(central)

        self.status_label = QLabel()
        self.status_label.setTextInteractionFlags(Qt.TextSelectableByMouse)
        self.load_bar = QProgressBar(maximumWidth=160, maximum=100, visible=False)
        self.mem_label = QLabel()
        self.statusBar().addWidget(self.status_label, 1)
        self.statusBar().addPermanentWidget(self.load_bar)
        self.statusBar().addPermanentWidget(self.mem_label)

    def show_page(self, name: str) -> None:
        index = {"chat": 0, "completion": 1, "models": 2, "settings": 3}[name]
        self.sidebar.setCurrentRow(index)

    # --- engine --------------------------------------------------------------------------------
    def attach_engine(self, engine) -> None:
        self.engine = engine
        w = engine.worker
        w.loadProgress.connect(self._on_load_progress)
        w.loaded.connect(self._on_loaded)
        w.loadFailed.connect(self._on_load_failed)
        w.unloaded.connect(self._on_unloaded)
        w.piece.connect(self._on_piece)
        w.done.connect(self._on_done)
        w.failed.connect(self._on_failed)

    def next_rid(self) -> int:
        return next(self._rids)

    def load_model(self, path: str, strategy: str = "auto") -> None:
        """Load a model (the one loaded before is unloaded first: never two at once)."""
        if self.engine is None or self.generating:
            return
        from pathlib import Path

        self.clear_error()
        self.loading = Path(path).name
        self.load_bar.setValue(0)
        self.load_bar.show()
        self.update_status()
        self.engine.requestLoad.emit(str(path), strategy or "auto")

    def unload_model(self) -> None:
        if self.engine is not None and not self.generating:
            self.engine.requestUnload.emit()

    def _on_load_progress(self, fraction: float) -> None:
        self.load_bar.setValue(int(fraction * 100))
        self.update_status()

    def _on_loaded(self, info, why: str) -> None:
        self.info, self.strategy_reason, self.loading = info, why, None
        self.load_bar.hide()
        self._save(last_model=str(info.path))
        self.chat.show_welcome(False)  # any model loaded (import, Models page, a download): chat now
        self.update_status()
        self.modelChanged.emit()

    def _on_load_failed(self, message: str) -> None:
        self.loading, self.info = None, None
        self.load_bar.hide()
        self.show_error(message)
        self.modelChanged.emit()

    def _on_unloaded(self) -> None:
        self.info = None
        self.update_status()
        self.modelChanged.emit()

    def _on_piece(self, rid: int, text: str) -> None:
        import time

        now = time.monotonic()
        self._pieces += 1
        if self._pieces == 1:
            self._first_piece = now
        elif now - self._shown_tps > 0.5:  # pieces are about one token each
            self._shown_tps = now
            self.tps = (self._pieces - 1) / max(now - self._first_piece, 1e-6)
            self.update_status()
        for page in (self.chat, self.completion):
            page.on_piece(rid, text)

    def _on_done(self, rid: int, reply) -> None:
        for page in (self.chat, self.completion):
            page.on_done(rid, reply)

    def _on_failed(self, rid: int, message: str) -> None:
        for page in (self.chat, self.completion):
            page.on_failed(rid, message)

    def set_generating(self, on: bool, tps: float = 0.0) -> None:
        self.generating = on
        self.tps = tps
        self._pieces = 0
        self.update_status()

    # --- status --------------------------------------------------------------------------------
    def show_error(self, message: str) -> None:
        """The whole message in a banner above the page (it says what to do), its first line below."""
        self.error = split_bilingual(message)
        log.error("%s", message)
        self.banner_text.setText(self.error)
        self.banner.show()
        self.update_status()

    def clear_error(self) -> None:
        self.error = None
        self.banner.hide()
        self.update_status()

    def update_status(self) -> None:
        if self.loading:
            text = tr("Loading {name} … {pct}%", name=self.loading, pct=self.load_bar.value())
        elif self.error:
            text = tr("Error: {msg}", msg=self.error.splitlines()[0])
        elif self.generating:
            text = tr("Generating… {tps:.1f} tokens/s", tps=self.tps)
        elif self.info:
            text = tr("Ready: {name} ({strategy})", name=self.info.name, strategy=self.info.strategy)
        else:
            text = tr("No model loaded")
        self.status_label.setText(text)
        self.status_label.setToolTip(self.error or "")

    def _update_memory(self) -> None:
        vm = psutil.virtual_memory()
        text = tr("RAM {used} used of {total}", used=human(vm.total - vm.available), total=human(vm.total))
        import sys

        torch = sys.modules.get("torch")  # only when already imported: never pay for it here
        if torch is not None and torch.cuda.is_available():
            free, total = torch.cuda.mem_get_info()
            text += "   " + tr("VRAM {used} used of {total}", used=human(total - free), total=human(total))
        self.mem_label.setText(text)

    # --- geometry and shutdown -----------------------------------------------------------------
    def _restore_geometry(self) -> None:
        geo = self.settings.current.geometry
        if geo:
            self.restoreGeometry(QByteArray.fromBase64(geo.encode()))
        else:
            self.resize(1100, 720)

    def closeEvent(self, event) -> None:
        self.chat.shutdown()  # stops a generation and saves what it wrote
        self.completion.shutdown()
        self._save(geometry=bytes(self.saveGeometry().toBase64()).decode())
        if self.queue is not None:
            self.queue.close(timeout=5)
        if self.engine is not None:
            self.engine.stop()
        self.store.close()
        super().closeEvent(event)

    def _save(self, **changes) -> None:
        """Remember the app's own state (last model, window geometry); a failed write is logged."""
        try:
            self.settings.update(**changes)
        except (OSError, ValueError) as e:
            import logging

            logging.getLogger("roost.gui").warning("could not save settings: %s", e)

    def ask(self, title: str, text: str) -> bool:
        return QMessageBox.question(self, title, text) == QMessageBox.Yes
