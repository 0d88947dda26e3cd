"""Settings: models folder, download source, token, proxy, language, theme, defaults; diagnostics."""

from __future__ import annotations

from PySide6.QtCore import Qt, QUrl
from PySide6.QtGui import QDesktopServices, QGuiApplication
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QScrollArea,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from roost.gui.i18n import LANGUAGES, language, split_bilingual, tr
from roost.gui.sampling import SamplingPanel
from roost.gui.theme import apply_theme


class SettingsPage(QWidget):
    def __init__(self, win):
        super().__init__()
        self.win = win
        s = win.settings.current
        from roost.core.sources import SOURCE_NAMES, SOURCES

        inner = QWidget()
        v = QVBoxLayout(inner)
        form = QFormLayout()
        folder_row = QHBoxLayout()
        self.folder = QLineEdit(str(s.models_folder()))
        browse = QPushButton(tr("Browse…"), clicked=self.browse)
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
        self.strategy = QComboBox(editable=True)
        self.strategy.addItem(tr("Automatic"), "auto")
        from roost.gui.models_page import PRESETS

        for p in PRESETS:
            self.strategy.addItem(p, p)
        if s.default_strategy != "auto":
            self.strategy.setEditText(s.default_strategy)
        form.addRow(tr("Default strategy:"), self.strategy)
        v.addLayout(form)
        box = QGroupBox(tr("Default sampling"))
        self.sampling = SamplingPanel(s)
        self.sampling.setMaximumWidth(400)
        QVBoxLayout(box).addWidget(self.sampling)
        v.addWidget(box)
        v.addWidget(self._api_box(s))
        buttons = QHBoxLayout()
        # what Save did, on a row of its own: a refusal can be long and must wrap, not widen the page
        self.saved = QLabel(objectName="hint", wordWrap=True, textInteractionFlags=Qt.TextSelectableByMouse)
        buttons.addWidget(QPushButton(tr("Open log"), clicked=self.open_log))
        buttons.addWidget(QPushButton(tr("Copy diagnostics"), clicked=self.copy_diagnostics))
        buttons.addStretch(1)
        buttons.addWidget(QPushButton(tr("Save"), objectName="primary", clicked=self.save))
        v.addLayout(buttons)
        v.addWidget(self.saved)
        v.addStretch(1)
        scroll = QScrollArea(widgetResizable=True)
        scroll.setWidget(inner)
        QVBoxLayout(self).addWidget(scroll)

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
        form.addRow(tr("Port:"), self.api_port)
        self.api_key = QLineEdit(s.api_key, echoMode=QLineEdit.Password,
                                 placeholderText=tr("required when the host is not 127.0.0.1"))
        self.api_key.setMaximumWidth(320)
        form.addRow(tr("API key:"), self.api_key)
        self.api_status = QLabel(objectName="hint", wordWrap=True,
                                 textInteractionFlags=Qt.TextSelectableByMouse)
        form.addRow(self.api_status)
        self.api_server = None  # roost.server.run.ApiServer while it runs
        self._api_open = False  # listening beyond this computer
        app = QGuiApplication.instance()
        if app is not None:
            app.aboutToQuit.connect(self.stop_api_server)
        return box

    def _api_toggled(self, on: bool) -> None:
        if on:
            self.start_api_server()
        else:
            self.stop_api_server(wait=False)

    def start_api_server(self) -> None:
        """Start the server for the model the app has loaded (binding, imports and start-up run in
        the background; the result comes back on the UI thread)."""
        from roost.server.run import ServerError, check_bind, is_loopback

        engine = self.win.engine
        host, port, key = self.api_host.text().strip(), self.api_port.value(), self.api_key.text().strip()
        if engine is None:
            return self._api_failed(tr("The engine is still starting. Try again in a moment."))
        try:
            check_bind(host, port, key)
        except ServerError as e:
            return self._api_failed(split_bilingual(str(e)))
        try:
            self.win.settings.update(api_host=host, api_port=port, api_key=key)
        except (ValueError, OSError) as e:
            return self._api_failed(split_bilingual(str(e)))
        for w in (self.api_host, self.api_port, self.api_key):
            w.setEnabled(False)
        self.api_status.setText(tr("Starting…"))
        from roost.gui.sampling import defaults

        sampling = defaults(self.win.settings.current)
        chat_defaults = {k: sampling[k] for k in ("temperature", "top_p", "top_k", "presence_penalty",
                                                  "frequency_penalty", "penalty_decay") if k in sampling}
        runtime = engine.worker.runtime
        self._api_open = not is_loopback(host)

        def start():
            from roost.server.run import ApiServer

            return ApiServer(runtime, host=host, port=port, api_key=key or None, chat_defaults=chat_defaults,
                             chat_max_tokens=int(sampling.get("max_tokens", 1024))).start()

        def failed(e: BaseException) -> None:  # shown beside the switch; a bug's details are in the log
            from roost.engine.errors import RoostError

            self._api_failed(split_bilingual(str(e)) if isinstance(e, RoostError)
                             else tr("The server could not start; the details are in the log."))

        self.win.tasks.run(start, on_done=self._api_started, on_error=failed, name="api-start")

    def _api_started(self, server) -> None:
        if not self.api_switch.isChecked():  # switched off while it was starting
            self.api_server = server
            self.stop_api_server(wait=False)
            return
        self.api_server = server
        text = tr("Running at {url}", url=server.base_url)
        if self.win.info is None:
            text += " " + tr("No model is loaded yet: requests get an error until one is.")
        if self._api_open:
            text += " " + tr("Other computers can reach it; keep the API key secret.")
        self.api_status.setText(text)

    def _api_failed(self, message: str) -> None:
        self.api_status.setText(tr("Error: {msg}", msg=message))
        for w in (self.api_host, self.api_port, self.api_key):
            w.setEnabled(True)
        if self.api_switch.isChecked():
            self.api_switch.blockSignals(True)
            self.api_switch.setChecked(False)
            self.api_switch.blockSignals(False)

    def stop_api_server(self, wait: bool = True) -> None:
        """Stop the server (its running generations end within a token)."""
        server, self.api_server = self.api_server, None
        for w in (self.api_host, self.api_port, self.api_key):
            w.setEnabled(True)
        if server is None:
            return
        self.api_status.setText(tr("Stopping…"))
        if wait:
            server.stop()
            self.api_status.setText(tr("Stopped."))
            return
        self.win.tasks.run(server.stop, on_done=lambda _: self.api_status.setText(tr("Stopped.")),
                           name="api-stop")

    def browse(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, tr("Models folder:"), self.folder.text())
        if folder:
            self.folder.setText(folder)

    def save(self) -> None:
        from roost.core.settings import SettingsError, apply_proxy

        store = self.win.settings
        old = store.current
        # what the page showed for an unset value (the suggested source, the system's language)
        # stays unset unless the user picked something else
        source = self.source.currentData()
        lang = self.lang.currentData()
        changes = dict(source=old.source if source == old.download_source() else source,
                       hf_token=self.token.text().strip(), proxy=self.proxy.text().strip(),
                       language=old.language if lang == (old.language or language()) else lang,
                       theme=self.theme.currentData(), sampling=self.sampling.values())
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
            messages.append(tr("The language changes the next time Roost starts."))
        apply_proxy(new.proxy)
        apply_theme(QGuiApplication.instance(), new.theme)
        self.folder.setText(str(new.models_folder()))
        self.saved.setText(" ".join(messages) or tr("Saved."))
        self.win.models.refresh()

    def open_log(self) -> None:
        from roost.core.logs import log_file

        QDesktopServices.openUrl(QUrl.fromLocalFile(str(log_file())))

    def copy_diagnostics(self) -> None:
        QGuiApplication.clipboard().setText(diagnostics(self.win))
        self.saved.setText(tr("Diagnostics copied to the clipboard."))


def diagnostics(win) -> str:
    """A machine report and the end of the log, for bug reports (no token, no chats)."""
    import json
    import platform

    from roost import __version__
    from roost.core.logs import log_file

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
