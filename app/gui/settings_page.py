"""Settings: models folder, download source, token, proxy, language, theme, defaults; diagnostics."""

from __future__ import annotations

from PySide6.QtCore import Qt, QUrl
from PySide6.QtGui import QDesktopServices, QGuiApplication
from PySide6.QtWidgets import (
    QAbstractSpinBox,
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QFrame,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QMessageBox,
    QPushButton,
    QScrollArea,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from roost.gui import icons
from roost.gui.i18n import LANGUAGES, language, split_bilingual, tr
from roost.gui.sampling import SamplingPanel
from roost.gui.theme import apply_theme


class SettingsPage(QWidget):
    def __init__(self, ctl):
        super().__init__()
        self.ctl = ctl
        s = ctl.settings.current
        from roost.core.sources import SOURCE_NAMES, SOURCES

        inner = QWidget()
        v = QVBoxLayout(inner)
        form = QFormLayout()
        folder_row = QHBoxLayout()
        self.folder = QLineEdit(str(s.models_folder()), accessibleName=tr("Models folder:").rstrip(":："))
        browse = QPushButton(tr("Browse…"), clicked=self.browse)
        icons.give(browse, "browse")
        folder_row.addWidget(self.folder, 1)
        folder_row.addWidget(browse)
        form.addRow(tr("Models folder:"), folder_row)
        self.source = QComboBox()
        for key in SOURCES:
            en, zh = SOURCE_NAMES[key]
            self.source.addItem(zh if language() == "zh" else en, key)
        self.source.setCurrentIndex(self.source.findData(s.download_source()))
        form.addRow(tr("Download source:"), self.source)
        self.token = QLineEdit(s.hf_token, echoMode=QLineEdit.Password,
                               placeholderText=tr("optional, for gated or private models"))
        form.addRow(tr("Hugging Face token:"), self.token)
        self.proxy = QLineEdit(s.proxy, placeholderText=tr("optional, e.g. http://127.0.0.1:7890"))
        form.addRow(tr("Proxy:"), self.proxy)
        self.lang = QComboBox()
        for key, name in LANGUAGES.items():
            self.lang.addItem(name, key)
        self.lang.setCurrentIndex(self.lang.findData(s.language or language()))
        form.addRow(tr("Language:"), self.lang)
        self.theme = QComboBox()
        for key, name in [("system", "System"), ("light", "Light"), ("dark", "Dark")]:
            self.theme.addItem(tr(name), key)
        self.theme.setCurrentIndex(max(self.theme.findData(s.theme), 0))
        form.addRow(tr("Theme:"), self.theme)
        self.send_key = QComboBox()
        self.send_key.addItem(tr("Enter (Shift+Enter for a new line)"), "enter")
        self.send_key.addItem(tr("Ctrl+Enter (Enter for a new line)"), "ctrl+enter")
        self.send_key.setCurrentIndex(max(self.send_key.findData(s.send_key), 0))
        form.addRow(tr("Send a message with:"), self.send_key)
        self.strategy = QComboBox(editable=True)
        self.strategy.addItem(tr("Automatic"), "auto")
        from roost.gui.models_page import PRESETS

        for p in PRESETS:
            self.strategy.addItem(p, p)
        if s.default_strategy != "auto":
            self.strategy.setEditText(s.default_strategy)
        form.addRow(tr("Default strategy:"), self.strategy)
        self.threads = QSpinBox(minimum=0, maximum=1024, value=s.threads)
        self.threads.setSpecialValueText(tr("Automatic"))
        self.threads.setToolTip(tr("Automatic: the physical cores other programs leave free, looked at again "
                                   "every second. On a busy computer fewer threads run faster."))
        form.addRow(tr("CPU threads:"), self.threads)
        v.addLayout(form)
        box = QGroupBox(tr("Default sampling"))
        self.sampling = SamplingPanel(s)
        self.sampling.setMaximumWidth(400)
        QVBoxLayout(box).addWidget(self.sampling)
        v.addWidget(box)
        v.addWidget(self._api_box(s))
        v.addWidget(self._states_box(s))
        v.addWidget(self._weights_box(s))
        v.addStretch(1)
        scroll = QScrollArea(widgetResizable=True, accessibleName=tr("Settings"))  # (a tab stop: arrows scroll)
        scroll.setWidget(inner)
        # the bar under the page, always in view: what Save did (a refusal can be long and wraps),
        # whether there are changes not saved yet, and the buttons
        bar = QFrame(objectName="card")
        bv = QVBoxLayout(bar)
        bv.setContentsMargins(8, 6, 8, 6)
        self.saved = QLabel(objectName="hint", wordWrap=True, textInteractionFlags=Qt.TextSelectableByMouse)
        buttons = QHBoxLayout()
        self.btn = {}
        for label, slot, name, accent in [("Open log", self.open_log, "log", False),
                                          ("Copy diagnostics", self.copy_diagnostics, "diagnostics", False),
                                          (None, None, None, False), ("Restart now", self.restart, "restart", False),
                                          ("Discard changes", self.discard, "undo", False),
                                          ("Save", self.save, "save", True)]:
            if label is None:
                buttons.addStretch(1)
                continue
            b = QPushButton(tr(label), clicked=slot, objectName="primary" if accent else "")
            icons.give(b, name, on_accent=accent)
            buttons.addWidget(b)
            self.btn[name] = b
        self.btn["restart"].hide()  # (after a new language is saved)
        bv.addWidget(self.saved)
        bv.addLayout(buttons)
        outer = QVBoxLayout(self)
        outer.addWidget(scroll, 1)
        outer.addWidget(bar)
        self._snapshot = self._form()
        for w in inner.findChildren(QLineEdit):
            if w not in (self.api_host, self.api_key, self.api_origins):  # (the API box applies its own)
                w.textChanged.connect(self._edited)
        for w in inner.findChildren(QComboBox):
            w.currentIndexChanged.connect(self._edited)
        for w in inner.findChildren(QAbstractSpinBox):
            if w is not self.api_port:
                w.valueChanged.connect(self._edited)
        self._edited()

    # --- changes not saved yet -------------------------------------------------------------------
    def _form(self) -> dict:
        """What the page's fields show now (Save's fields; the API box applies its own at once)."""
        return {"folder": self.folder.text(), "source": self.source.currentIndex(), "token": self.token.text(),
                "proxy": self.proxy.text(), "lang": self.lang.currentIndex(), "theme": self.theme.currentIndex(),
                "send_key": self.send_key.currentIndex(), "strategy": self.strategy.currentText(),
                "threads": self.threads.value(), "sampling": self.sampling.values(),
                "states": self.state_budget.value(), "weights": self.weight_budget.value()}

    def dirty(self) -> bool:
        """Whether a field was changed since the page was shown, saved or its changes discarded."""
        return self._form() != self._snapshot

    def _edited(self, *_args) -> None:
        dirty = self.dirty()
        self.btn["save"].setEnabled(dirty)
        self.btn["undo"].setEnabled(dirty)
        if dirty:
            self.saved.setText(tr("Changes not saved yet."))
        elif self.saved.text() == tr("Changes not saved yet."):
            self.saved.setText("")

    def discard(self) -> None:
        """Back to what was saved."""
        f = self._snapshot
        self.folder.setText(f["folder"])
        for box, key in ((self.source, "source"), (self.lang, "lang"), (self.theme, "theme"),
                         (self.send_key, "send_key")):
            box.setCurrentIndex(f[key])
        self.token.setText(f["token"])
        self.proxy.setText(f["proxy"])
        self.strategy.setEditText(f["strategy"])
        self.threads.setValue(f["threads"])
        self.sampling.set_values(f["sampling"])
        self.state_budget.setValue(f["states"])
        self.weight_budget.setValue(f["weights"])
        self._edited()

    def ask_unsaved(self) -> str:
        """Leaving the page with changes not saved: "save", "discard" or "cancel" (stay)."""
        box = QMessageBox(QMessageBox.Question, tr("Settings"), tr("Save the changes to Settings?"),
                          QMessageBox.Save | QMessageBox.Discard | QMessageBox.Cancel, self)
        box.setDefaultButton(QMessageBox.Save)
        answer = box.exec()
        return {QMessageBox.Save: "save", QMessageBox.Discard: "discard"}.get(answer, "cancel")

    # --- the local API server --------------------------------------------------------------------
    def _api_box(self, s) -> QGroupBox:
        """A switch that serves the loaded model through an OpenAI-compatible API (app/server)."""
        box = QGroupBox(tr("Local API server"))
        form = QFormLayout(box)
        self.api_switch = QCheckBox(tr("Local API server (OpenAI-compatible)"))
        self.api_switch.toggled.connect(self._api_toggled)
        form.addRow(self.api_switch)
        self.api_host = QLineEdit(s.api_host)
        self.api_host.setMaximumWidth(220)
        form.addRow(tr("Host:"), self.api_host)
        self.api_port = QSpinBox(minimum=1, maximum=65535, value=s.api_port)
        self.api_port.setMaximumWidth(140)
        form.addRow(tr("Port:"), self.api_port)
        self.api_key = QLineEdit(s.api_key, echoMode=QLineEdit.Password,
                                 placeholderText=tr("required when the host is not 127.0.0.1"))
        self.api_key.setMaximumWidth(320)
        form.addRow(tr("API key:"), self.api_key)
        self.api_origins = QLineEdit(", ".join(s.api_allow_origins),
                                     placeholderText=tr("e.g. https://chat.example.org (comma-separated)"))
        self.api_origins.setToolTip(tr("Pages of this computer, desktop apps (Obsidian, VS Code, Tauri) and browser "
                                       "extensions may always call the API; other websites only when listed here."))
        form.addRow(tr("Also allow web pages from:"), self.api_origins)
        self.api_status = QLabel(objectName="hint", wordWrap=True,
                                 textInteractionFlags=Qt.TextSelectableByMouse)
        form.addRow(self.api_status)
        self.ctl.apiChanged.connect(self._api_changed)
        return box

    # --- disk space kept for faster starts -------------------------------------------------------
    def _budget_box(self, title: str, explain: str, mb: int, step: int, tip: str, label: str,
                    clear_text: str, clear) -> tuple[QGroupBox, QSpinBox, QLabel]:
        """A box with what a disk cache is for, its budget in MB, what it uses now and a button
        that empties it (texts already translated)."""
        box = QGroupBox(title)
        form = QFormLayout(box)
        form.addRow(QLabel(explain, objectName="hint", wordWrap=True))
        budget = QSpinBox(minimum=0, maximum=1 << 20, singleStep=step, value=mb, suffix=" MB")
        budget.setMaximumWidth(160)
        budget.setToolTip(tip)
        form.addRow(label, budget)
        row = QHBoxLayout()
        usage = QLabel(objectName="hint")
        button = QPushButton(clear_text, clicked=clear)
        icons.give(button, "delete")
        row.addWidget(usage, 1)
        row.addWidget(button)
        form.addRow(row)
        return box, budget, usage

    def _states_box(self, s) -> QGroupBox:
        """The disk space for the model states saved after each reply (chats go on after a restart
        without reading their whole history again), what they use now, and a button to clear them."""
        box, self.state_budget, self.state_usage = self._budget_box(
            tr("Saved chat states"),
            tr("After each reply Roost keeps the model's state on disk, so a long chat continues at once after a "
               "restart instead of reading its whole history again."),
            s.state_budget_mb, 256, tr("0 keeps none; the least recently used states go first."),
            tr("Disk space for saved states:"), tr("Clear saved states"), self.clear_states)
        box.setEnabled(self.ctl.states is not None)
        self.show_state_usage()
        return box

    def show_state_usage(self) -> None:
        states = self.ctl.states
        if states is None:
            self.state_usage.setText(tr("Not available (the chats are not saved to disk)."))
            return
        u = states.usage()
        self.state_usage.setText(tr("In use: {size} MB in {n} files").format(size=f"{u.bytes / 2 ** 20:.0f}",
                                                                            n=u.files))

    def clear_states(self) -> None:
        if self.ctl.states is not None:
            self.ctl.states.clear()
        self.show_state_usage()

    # --- converted weights ------------------------------------------------------------------------
    def _weights_box(self, s) -> QGroupBox:
        """The disk space for converted 8-bit and 4-bit weights (a second load of the model reads
        them instead of converting again), what they use now, and a button to delete them."""
        box, self.weight_budget, self.weight_usage = self._budget_box(
            tr("Converted weights"),
            tr("Models run with 8-bit or 4-bit weights are converted when they load. Roost keeps the converted "
               "weights in its cache folder, so the next load is faster."),
            s.weight_cache_mb, 1024, tr("0 keeps none; the least recently used models go first."),
            tr("Disk space for converted weights:"), tr("Delete converted weights"), self.clear_weights)
        self.show_weight_usage()
        return box

    def _weight_cache(self):
        from roost.core.paths import weights_cache_dir
        from roost.engine.weight_cache import WeightCache

        return WeightCache(weights_cache_dir(), self.ctl.settings.current.weight_cache_mb << 20)

    def show_weight_usage(self) -> None:
        u = self._weight_cache().usage()
        self.weight_usage.setText(tr("In use: {size} MB in {n} files").format(size=f"{u.bytes / 2 ** 20:.0f}",
                                                                             n=u.files))

    def clear_weights(self) -> None:
        self._weight_cache().clear()
        self.show_weight_usage()

    def showEvent(self, event) -> None:  # noqa: N802 (Qt)
        super().showEvent(event)
        if hasattr(self, "state_usage"):
            self.show_state_usage()
        if hasattr(self, "weight_usage"):
            self.show_weight_usage()

    def _api_toggled(self, on: bool) -> None:
        if on:
            self.ctl.start_api(self.api_host.text().strip(), self.api_port.value(), self.api_key.text().strip(),
                               self.api_origins.text().strip())
        else:
            self.ctl.stop_api(wait=False)
        self._api_changed()

    def _api_changed(self) -> None:
        """The switch, the fields (fixed while the server starts or runs) and its status line."""
        busy = self.ctl.api_busy()
        for w in (self.api_host, self.api_port, self.api_key, self.api_origins):
            w.setEnabled(not busy)
        if self.api_switch.isChecked() != busy:
            self.api_switch.blockSignals(True)
            self.api_switch.setChecked(busy)
            self.api_switch.blockSignals(False)
        self.api_status.setText(self.ctl.api_status)

    def browse(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, tr("Models folder:"), self.folder.text())
        if folder:
            self.folder.setText(folder)

    def save(self) -> None:
        from roost.core.settings import SettingsError

        store = self.ctl.settings
        old = store.current
        # what the page showed for an unset value (the suggested source, the system's language)
        # stays unset unless the user picked something else
        source = self.source.currentData()
        lang = self.lang.currentData()
        changes = dict(source=old.source if source == old.download_source() else source,
                       hf_token=self.token.text().strip(), proxy=self.proxy.text().strip(),
                       language=old.language if lang == (old.language or language()) else lang,
                       theme=self.theme.currentData(), send_key=self.send_key.currentData(),
                       sampling=self.sampling.values(), state_budget_mb=self.state_budget.value(),
                       weight_cache_mb=self.weight_budget.value(), threads=self.threads.value())
        folder = self.folder.text().strip()
        if folder != str(old.models_folder()):
            changes["models_dir"] = folder  # "" goes back to the default folder
        strategy = self.strategy.currentText().strip()
        changes["default_strategy"] = "auto" if strategy in ("", tr("Automatic")) else strategy
        messages = []
        for key, value in changes.items():  # each on its own: one bad value keeps the others
            try:
                store.update(**{key: value})
            except (SettingsError, OSError) as e:
                messages.append(split_bilingual(str(e)))
        new = store.current
        if new.language != old.language:
            messages.append(tr("The language changes when Roost starts again: Restart now, or later."))
            self.btn["restart"].show()
        apply_theme(QGuiApplication.instance(), new.theme)  # (the controller applies the proxy and the folder)
        self.folder.setText(str(new.models_folder()))
        self.show_state_usage()
        self.show_weight_usage()
        self._snapshot = self._form()
        self._edited()
        self.saved.setText(" ".join(messages) or tr("Saved."))

    def restart(self) -> None:
        """Start Roost again (the new language), then close this window as the user would: a
        reply being written is stopped and kept, downloads resume in the new one."""
        import sys

        from PySide6.QtCore import QProcess

        args = sys.argv[1:] if getattr(sys, "frozen", False) else sys.argv  # (a bundle: its own binary)
        if not QProcess.startDetached(sys.executable, list(args)):
            self.saved.setText(tr("Roost could not start again; close it and start it yourself."))
            return
        self.ctl.closeRequested.emit()

    def open_log(self) -> None:
        from roost.core.logs import log_file

        QDesktopServices.openUrl(QUrl.fromLocalFile(str(log_file())))

    def copy_diagnostics(self) -> None:
        QGuiApplication.clipboard().setText(self.ctl.diagnostics())
        self.saved.setText(tr("Diagnostics copied to the clipboard."))

