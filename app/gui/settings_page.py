"""Settings: models folder, download source, token, proxy, language, theme, defaults; diagnostics."""

from __future__ import annotations

import os

from PySide6.QtCore import QUrl
from PySide6.QtGui import QDesktopServices, QGuiApplication
from PySide6.QtWidgets import (
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QScrollArea,
    QVBoxLayout,
    QWidget,
)

from app.gui.i18n import LANGUAGES, language, tr
from app.gui.sampling import SamplingPanel
from app.gui.theme import apply_theme


def apply_proxy(proxy: str) -> None:
    """Downloads (urllib, huggingface_hub) read the standard proxy variables."""
    for var in ("HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy"):
        if proxy:
            os.environ[var] = proxy
        else:
            os.environ.pop(var, None)


class SettingsPage(QWidget):
    def __init__(self, win):
        super().__init__()
        self.win = win
        s = win.settings
        from app.core import paths
        from app.core.sources import SOURCE_NAMES, SOURCES, suggested_source

        inner = QWidget()
        v = QVBoxLayout(inner)
        form = QFormLayout()
        folder_row = QHBoxLayout()
        self.folder = QLineEdit(str(paths.models_dir(create=False)))
        browse = QPushButton(tr("Browse…"), clicked=self.browse)
        folder_row.addWidget(self.folder, 1)
        folder_row.addWidget(browse)
        form.addRow(tr("Models folder:"), folder_row)
        self.source = QComboBox()
        for key in SOURCES:
            en, zh = SOURCE_NAMES[key]
            self.source.addItem(zh if language() == "zh" else en, key)
        self.source.setCurrentIndex(self.source.findData(s.get("source") or suggested_source()))
        form.addRow(tr("Download source:"), self.source)
        self.token = QLineEdit(s.get("hf_token", ""), echoMode=QLineEdit.Password,
                               placeholderText=tr("optional, for gated or private models"))
        form.addRow(tr("Hugging Face token:"), self.token)
        self.proxy = QLineEdit(s.get("proxy", ""), placeholderText=tr("optional, e.g. http://127.0.0.1:7890"))
        form.addRow(tr("Proxy:"), self.proxy)
        self.lang = QComboBox()
        for key, name in LANGUAGES.items():
            self.lang.addItem(name, key)
        self.lang.setCurrentIndex(self.lang.findData(s.get("language", language())))
        form.addRow(tr("Language:"), self.lang)
        self.theme = QComboBox()
        for key, name in [("system", "System"), ("light", "Light"), ("dark", "Dark")]:
            self.theme.addItem(tr(name), key)
        self.theme.setCurrentIndex(max(self.theme.findData(s.get("theme", "system")), 0))
        form.addRow(tr("Theme:"), self.theme)
        self.strategy = QComboBox(editable=True)
        self.strategy.addItem(tr("Automatic"), "auto")
        from app.gui.models_page import PRESETS

        for p in PRESETS:
            self.strategy.addItem(p, p)
        if s.get("default_strategy", "auto") != "auto":
            self.strategy.setEditText(s["default_strategy"])
        form.addRow(tr("Default strategy:"), self.strategy)
        v.addLayout(form)
        box = QGroupBox(tr("Default sampling"))
        self.sampling = SamplingPanel(s)
        self.sampling.setMaximumWidth(400)
        QVBoxLayout(box).addWidget(self.sampling)
        v.addWidget(box)
        buttons = QHBoxLayout()
        self.saved = QLabel(objectName="hint")
        buttons.addWidget(QPushButton(tr("Open log"), clicked=self.open_log))
        buttons.addWidget(QPushButton(tr("Copy diagnostics"), clicked=self.copy_diagnostics))
        buttons.addStretch(1)
        buttons.addWidget(self.saved)
        buttons.addWidget(QPushButton(tr("Save"), objectName="primary", clicked=self.save))
        v.addLayout(buttons)
        v.addStretch(1)
        scroll = QScrollArea(widgetResizable=True)
        scroll.setWidget(inner)
        QVBoxLayout(self).addWidget(scroll)

    def browse(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, tr("Models folder:"), self.folder.text())
        if folder:
            self.folder.setText(folder)

    def save(self) -> None:
        from app.core import paths
        from engine.errors import StrategyError
        from engine.strategy import parse_strategy

        s = self.win.settings
        messages = []
        folder = self.folder.text().strip()
        if folder and folder != str(paths.models_dir(create=False)):
            try:
                s["models_dir"] = str(paths.set_models_dir(folder))
            except OSError as e:
                messages.append(f"{folder}: {e.strerror or e}")
        strategy = self.strategy.currentText().strip()
        if strategy in ("", tr("Automatic")):
            s["default_strategy"] = "auto"
        else:
            try:
                parse_strategy(strategy)
                s["default_strategy"] = strategy
            except StrategyError as e:
                messages.append(str(e).splitlines()[0])
        if self.lang.currentData() != s.get("language", language()):
            messages.append(tr("The language changes the next time Roost starts."))
        s.update(source=self.source.currentData(), hf_token=self.token.text().strip(),
                 proxy=self.proxy.text().strip(), language=self.lang.currentData(),
                 theme=self.theme.currentData(), sampling=self.sampling.values())
        if "models_dir" in s and not folder:
            s.pop("models_dir")
        paths.save_settings({**paths.load_settings(), **s})
        apply_proxy(s["proxy"])
        apply_theme(QGuiApplication.instance(), s["theme"])
        if self.win.queue is not None:
            self.win.queue.source, self.win.queue.token = s["source"], s["hf_token"] or None
        self.saved.setText(" ".join(messages) or tr("Saved."))
        self.win.models.refresh()

    def open_log(self) -> None:
        from app.gui.app import log_file

        QDesktopServices.openUrl(QUrl.fromLocalFile(str(log_file())))

    def copy_diagnostics(self) -> None:
        QGuiApplication.clipboard().setText(diagnostics(self.win))
        self.saved.setText(tr("Diagnostics copied to the clipboard."))


def diagnostics(win) -> str:
    """A machine report and the end of the log, for bug reports (no token, no chats)."""
    import json
    import platform

    from app import __version__
    from app.gui.app import log_file

    lines = [f"Roost {__version__}, Python {platform.python_version()}, {platform.platform()}"]
    if win.machine is not None:
        lines.append(json.dumps(win.machine.to_dict(), ensure_ascii=False))
    if win.info is not None:
        lines.append(f"model: {win.info.name} ({win.info.label}), strategy {win.info.strategy}")
    try:
        tail = log_file().read_text(encoding="utf-8", errors="replace").splitlines()[-80:]
    except OSError:
        tail = []
    return "\n".join(lines + ["--- log ---", *tail])
