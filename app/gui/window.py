"""The main window: a sidebar of pages, a status area, model control and clean shutdown."""

from __future__ import annotations

import psutil
from PySide6.QtCore import QByteArray, QEvent, QSize, Qt, QTimer
from PySide6.QtGui import QKeySequence, QShortcut
from PySide6.QtWidgets import (
    QFrame,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QMainWindow,
    QProgressBar,
    QPushButton,
    QStackedWidget,
    QVBoxLayout,
    QWidget,
)

from roost.gui.controller import Controller
from roost.gui.i18n import tr


class MainWindow(QMainWindow):
    """The frame around the pages: the sidebar, the error banner and the status bar. Everything the
    pages do goes through the controller (`self.ctl`); the window only shows its state."""

    def __init__(self, controller=None, *, settings=None):
        super().__init__()
        self.setWindowTitle("Roost")
        self.ctl = controller or Controller(settings, parent=self)
        self._build()
        self._restore_geometry()
        self.setAcceptDrops(True)  # a model file dropped anywhere on the window is imported
        self.ctl.statusChanged.connect(self.update_status)
        self.ctl.navigate.connect(self.show_page)
        self.ctl.closeRequested.connect(self.close)
        self.ctl.personaImported.connect(self._persona_imported)
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
        self.sidebar.setFixedWidth(172)
        self.sidebar.setHorizontalScrollBarPolicy(Qt.ScrollBarAlwaysOff)
        self.pages = QStackedWidget()
        self.chat = ChatPage(self.ctl)
        self.completion = CompletionPage(self.ctl)
        self.models = ModelsPage(self.ctl)
        self.settings_page = SettingsPage(self.ctl)
        from PySide6.QtWidgets import QListWidgetItem

        from roost.gui import icons

        self.sidebar.setIconSize(QSize(20, 20))
        self._items = []
        for key, title, page in [("chat", tr("Chat"), self.chat), ("completion", tr("Completion"), self.completion),
                                 ("models", tr("Models"), self.models), ("settings", tr("Settings"), self.settings_page)]:
            item = QListWidgetItem(title)
            self.sidebar.addItem(item)
            icons.give(item, key)
            self._items.append(item)  # (icons.give keeps only a weak reference)
            self.pages.addWidget(page)
        self.sidebar.currentRowChanged.connect(self._page_chosen)
        self.sidebar.setCurrentRow(0)
        self.sidebar.setAccessibleName(tr("Pages"))
        for n, name in enumerate(("chat", "completion", "models", "settings"), 1):  # Ctrl+1 ... Ctrl+4
            QShortcut(QKeySequence(f"Ctrl+{n}"), self, activated=lambda name=name: self.show_page(name))
        # Ctrl+Q (Cmd+Q on macOS) quits as closing the window does: a reply stops, what it wrote is kept
        QShortcut(QKeySequence("Ctrl+Q"), self, activated=self.close, context=Qt.ApplicationShortcut)
        row.addWidget(self.sidebar)
        right = QVBoxLayout()
        right.setContentsMargins(0, 0, 0, 0)
        self.banner = QFrame(objectName="banner", visible=False)
        bl = QHBoxLayout(self.banner)
        self.banner_text = QLabel(wordWrap=True, textInteractionFlags=Qt.TextSelectableByMouse)
        close = QPushButton("×", flat=True, clicked=self.ctl.clear_error)
        close.setFixedWidth(28)
        self.banner_action = QPushButton(visible=False, clicked=self.ctl.run_error_action)
        bl.addWidget(self.banner_text, 1)
        bl.addWidget(self.banner_action, 0, Qt.AlignTop)
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

    def restyle(self) -> None:
        """The theme changed (roost.gui.theme.restyle): the pages that draw in colours of their own."""
        self.chat.restyle()

    def changeEvent(self, event) -> None:
        if event.type() == QEvent.ApplicationPaletteChange:  # the theme changed: icons in its colours
            from roost.gui import icons

            icons.refresh()
        super().changeEvent(event)

    # --- drag and drop a model file -----------------------------------------------------------------
    @staticmethod
    def _model_files(mime) -> list[str]:
        return [u.toLocalFile() for u in mime.urls()
                if u.isLocalFile() and u.toLocalFile().lower().endswith((".pth", ".safetensors"))]

    def dragEnterEvent(self, event) -> None:
        if self._model_files(event.mimeData()):
            event.acceptProposedAction()
        else:
            event.ignore()

    def dragMoveEvent(self, event) -> None:
        self.dragEnterEvent(event)

    def dropEvent(self, event) -> None:
        files = self._model_files(event.mimeData())
        if not files:
            event.ignore()
            return
        event.acceptProposedAction()
        imported = [p for p in (self.ctl.import_model(f) for f in files) if p is not None]
        if imported:
            self.show_page("models")

    def _persona_imported(self, path) -> None:
        """A state file was dropped or chosen: it is a persona, offered in the chat's Persona menu."""
        self.show_page("chat")
        self.status_label.setText(tr("Persona {name} added: choose it in the chat's Persona menu (with a model it "
                                     "fits).", name=path.stem))

    def _page_chosen(self, row: int) -> None:
        """Another page: from Settings with changes not saved, the user says first what becomes of them."""
        leaving = self.pages.currentWidget()
        if leaving is self.settings_page and row != self.pages.indexOf(self.settings_page) \
                and self.settings_page.dirty():
            answer = self.settings_page.ask_unsaved()
            if answer == "cancel":
                self.sidebar.blockSignals(True)
                self.sidebar.setCurrentRow(self.pages.indexOf(self.settings_page))
                self.sidebar.blockSignals(False)
                return
            self.settings_page.save() if answer == "save" else self.settings_page.discard()
        self.pages.setCurrentIndex(row)

    def show_page(self, name: str) -> None:
        index = {"chat": 0, "completion": 1, "models": 2, "settings": 3}[name]
        self.sidebar.setCurrentRow(index)

    # --- status --------------------------------------------------------------------------------
    def update_status(self) -> None:
        """The banner shows the whole error (it says what to do); the status bar one line of state."""
        ctl = self.ctl
        self.banner_text.setText(ctl.error or "")
        self.banner.setVisible(bool(ctl.error))
        self.banner_action.setText(ctl.error_action[0] if ctl.error_action else "")
        self.banner_action.setVisible(ctl.error_action is not None)
        self.load_bar.setVisible(ctl.loading is not None)
        self.load_bar.setValue(int(ctl.load_fraction * 100))
        if ctl.loading:
            text = tr("Loading {name} … {pct}%", name=ctl.loading, pct=int(ctl.load_fraction * 100))
        elif ctl.error:
            text = tr("Error: {msg}", msg=ctl.error.splitlines()[0])
        elif ctl.generating and ctl.read_fraction is not None:  # a long prompt: no token yet
            text = tr("Reading the message… {pct}%", pct=int(ctl.read_fraction * 100))
        elif ctl.generating:
            text = tr("Generating… {tps:.1f} tokens/s", tps=ctl.tps)
        elif ctl.info:
            text = tr("Ready: {name} ({strategy})", name=ctl.info.name, strategy=ctl.info.strategy)
        else:
            text = tr("No model loaded")
        self.status_label.setText(text)
        self.status_label.setToolTip(ctl.error or "")

    def _update_memory(self) -> None:
        vm = psutil.virtual_memory()
        from roost.core.download import memory_size

        text = tr("RAM {used} used of {total}", used=memory_size(vm.total - vm.available), total=memory_size(vm.total))
        import sys

        torch = sys.modules.get("torch")  # only when already imported: never pay for it here
        if torch is not None and torch.cuda.is_available():
            free, total = torch.cuda.mem_get_info()
            text += "   " + tr("VRAM {used} used of {total}", used=memory_size(total - free), total=memory_size(total))
        self.mem_label.setText(text)

    # --- geometry and shutdown -----------------------------------------------------------------
    def _restore_geometry(self) -> None:
        geo = self.ctl.settings.current.geometry
        if geo:
            self.restoreGeometry(QByteArray.fromBase64(geo.encode()))
        else:
            self.resize(1100, 720)

    def closeEvent(self, event) -> None:
        self.chat.shutdown()  # stops a generation and saves what it wrote
        self.completion.shutdown()
        self.ctl.remember(geometry=bytes(self.saveGeometry().toBase64()).decode())
        self.ctl.shutdown()
        super().closeEvent(event)
