"""Chat: conversations saved in SQLite, replies streamed from the engine worker, Markdown shown."""

from __future__ import annotations

from PySide6.QtCore import Qt, QTimer, QUrl
from PySide6.QtGui import QGuiApplication, QKeySequence, QShortcut
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QHBoxLayout,
    QInputDialog,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QPlainTextEdit,
    QPushButton,
    QSplitter,
    QStackedWidget,
    QTextBrowser,
    QVBoxLayout,
    QWidget,
)

from roost.gui import dialogs
from roost.gui.i18n import tr
from roost.gui.sampling import SamplingPanel
from roost.gui.welcome import WelcomePanel

PERSONAS = {
    "Assistant": "",
    "Concise": "You are a helpful assistant. Answer briefly and precisely.",
    "Translator": "You translate the user's text between Chinese and English, faithfully and fluently.",
    "Writer": "You are a creative writer. Write vivid, original prose in the language of the request.",
}


class ChatPage(QWidget):
    def __init__(self, ctl):
        super().__init__()
        self.ctl = ctl
        self.conv_id: int | None = None
        self.rid: int | None = None  # the generation in flight
        self.reply_pos: int | None = None  # its message position
        self.partial = ""
        self.stop_flag = None
        self.edit_pos: int | None = None
        self.expanded: set[int] = set()
        self.context_tokens = 0
        self.render_timer = QTimer(self, singleShot=True, interval=50, timeout=self.render)
        self._build()
        self.reload_list()
        ctl.modelChanged.connect(self._model_changed)
        ctl.piece.connect(self.on_piece)
        ctl.done.connect(self.on_done)
        ctl.failed.connect(self.on_failed)
        ctl.firstRun.connect(self._first_run)
        self.update_controls()

    # --- layout --------------------------------------------------------------------------------
    def _build(self) -> None:
        left = QWidget()
        lv = QVBoxLayout(left)
        self.search = QLineEdit(placeholderText=tr("Search chats…"), clearButtonEnabled=True)
        self.search.textChanged.connect(self.reload_list)
        self.list = QListWidget()
        self.list.currentItemChanged.connect(self._on_select)
        row = QHBoxLayout()
        self.new_btn = QPushButton(tr("New chat"), clicked=self.new_chat)
        self.rename_btn = QPushButton(tr("Rename"), clicked=self.rename_chat)
        self.delete_btn = QPushButton(tr("Delete"), clicked=self.delete_chat)
        for b in (self.new_btn, self.rename_btn, self.delete_btn):
            row.addWidget(b)
        lv.addWidget(self.search)
        lv.addWidget(self.list, 1)
        lv.addLayout(row)

        right = QWidget()
        rv = QVBoxLayout(right)
        top = QHBoxLayout()
        self.persona = QComboBox()
        for name, prompt in PERSONAS.items():
            self.persona.addItem(tr(name), prompt)
        self.persona.currentIndexChanged.connect(self._on_persona)
        self.think = QCheckBox(tr("Think before answering"), checked=True)
        self.sampling_btn = QPushButton(tr("Sampling"), checkable=True)
        self.export_btn = QPushButton(tr("Export…"), clicked=self.export)
        self.tokens_label = QLabel(objectName="hint")
        top.addWidget(QLabel(tr("Persona")))
        top.addWidget(self.persona)
        top.addWidget(self.think)
        top.addStretch(1)
        top.addWidget(self.tokens_label)
        top.addWidget(self.sampling_btn)
        top.addWidget(self.export_btn)

        self.view = QTextBrowser(openLinks=False)
        self.view.anchorClicked.connect(self._on_link)
        self.sampling = SamplingPanel(self.ctl.settings.current)
        self.sampling.setVisible(False)
        self.sampling_btn.toggled.connect(self.sampling.setVisible)
        middle = QHBoxLayout()
        middle.addWidget(self.view, 1)
        middle.addWidget(self.sampling)

        self.input = QPlainTextEdit(placeholderText=tr("Type a message (Ctrl+Enter to send)"))
        self.input.setFixedHeight(90)
        buttons = QVBoxLayout()
        self.send_btn = QPushButton(tr("Send"), objectName="primary", clicked=self.send)
        self.stop_btn = QPushButton(tr("Stop"), clicked=self.stop)
        self.regen_btn = QPushButton(tr("Regenerate"), clicked=self.regenerate)
        for b in (self.send_btn, self.stop_btn, self.regen_btn):
            buttons.addWidget(b)
        bottom = QHBoxLayout()
        bottom.addWidget(self.input, 1)
        bottom.addLayout(buttons)
        QShortcut(QKeySequence("Ctrl+Return"), self.input, activated=self.send)

        rv.addLayout(top)
        rv.addLayout(middle, 1)
        rv.addLayout(bottom)

        split = QSplitter()
        split.addWidget(left)
        split.addWidget(right)
        split.setSizes([230, 800])
        self.welcome = WelcomePanel(self.ctl)
        self.welcome.started.connect(self._welcome_done)
        self.stack = QStackedWidget()
        self.stack.addWidget(split)
        self.stack.addWidget(self.welcome)
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        outer.addWidget(self.stack)

    def show_welcome(self, on: bool) -> None:
        self.stack.setCurrentIndex(1 if on else 0)

    def _first_run(self, machine, model, advice) -> None:
        self.welcome.set_recommendation(machine, model, advice)
        if self.ctl.info is None and self.ctl.loading is None:
            self.show_welcome(True)

    def _welcome_done(self) -> None:
        """The welcome panel's download landed and its model is loading: the chat takes over."""
        self.show_welcome(False)
        self.new_chat()

    def _model_changed(self) -> None:
        if self.ctl.info is not None:  # any model loaded (import, the Models page, a download): chat now
            self.show_welcome(False)
        self.update_controls()

    # --- conversations -------------------------------------------------------------------------
    def reload_list(self) -> None:
        self.list.blockSignals(True)
        self.list.clear()
        for c in self.ctl.store.list(self.search.text().strip()):
            item = QListWidgetItem(c.title)
            item.setData(Qt.UserRole, c.id)
            self.list.addItem(item)
            if c.id == self.conv_id:
                self.list.setCurrentItem(item)
        self.list.blockSignals(False)
        if self.conv_id is None and self.list.count():
            self.list.setCurrentRow(0)
        elif self.conv_id is None:
            self.render()

    def _on_select(self, item, _prev=None) -> None:
        if item is None or self.rid is not None:
            return
        self.conv_id = item.data(Qt.UserRole)
        self.edit_pos, self.expanded = None, set()
        conv = self.ctl.store.get(self.conv_id)
        idx = max(self.persona.findData(conv.system), 0) if conv else 0
        self.persona.blockSignals(True)
        self.persona.setCurrentIndex(idx)
        self.persona.blockSignals(False)
        self.render()

    def new_chat(self) -> None:
        if self.rid is not None:
            return
        conv = self.ctl.store.new(tr("New chat"), self.persona.currentData() or "")
        self.conv_id = conv.id
        self.reload_list()
        self.render()
        self.input.setFocus()

    def rename_chat(self) -> None:
        conv = self.ctl.store.get(self.conv_id) if self.conv_id else None
        if conv is None:
            return
        title, ok = QInputDialog.getText(self, tr("Rename chat"), tr("Title:"), text=conv.title)
        if ok and title.strip():
            self.ctl.store.rename(conv.id, title)
            self.reload_list()

    def delete_chat(self) -> None:
        if self.conv_id is None or self.rid is not None or not dialogs.confirm(self, tr("Delete"), tr("Delete this chat?")):
            return
        self.ctl.store.delete(self.conv_id)
        self.ctl.forget(self.conv_id)
        self.conv_id = None
        self.reload_list()

    def _on_persona(self) -> None:
        if self.conv_id is not None:
            self.ctl.store.set_system(self.conv_id, self.persona.currentData() or "")

    def export(self) -> None:
        if self.conv_id is None:
            return
        path, _ = QFileDialog.getSaveFileName(self, tr("Export…"), "chat.md", tr("Markdown (*.md)"))
        if path:
            with open(path, "w", encoding="utf-8") as f:
                f.write(self.ctl.store.to_markdown(self.conv_id, (tr("You"), "RWKV")))

    # --- sending -------------------------------------------------------------------------------
    def send(self) -> None:
        text = self.input.toPlainText().strip()
        if not text or self.rid is not None or self.ctl.info is None:
            return
        if self.conv_id is None:
            self.new_chat()
        store, cid = self.ctl.store, self.conv_id
        if self.edit_pos is not None:
            store.truncate(cid, self.edit_pos)
            self.edit_pos = None
        history = [(m.role, m.content) for m in store.messages(cid)]
        if not history and store.get(cid).title == tr("New chat"):
            store.rename(cid, text.splitlines()[0][:40])
            self.reload_list()
        store.append(cid, "user", text)
        self.reply_pos = store.append(cid, "assistant", "").position
        self.input.clear()
        self._start(history, text)

    def _start(self, history, text) -> None:
        from roost.engine.generate import StopFlag

        self.stop_flag = StopFlag()
        self.partial = ""
        conv = self.ctl.store.get(self.conv_id)
        think = self.think.isChecked() if self.ctl.info.reasoning else None
        req = {"key": self.conv_id, "history": history, "text": text, "params": self.sampling.params(),
               "system": conv.system, "think": think, "stop": self.stop_flag}
        self.rid = self.ctl.request("chat", req)
        self.update_controls()
        self.render()

    def stop(self) -> None:
        if self.stop_flag is not None:
            self.stop_flag.set()

    def regenerate(self) -> None:
        if self.rid is not None or self.conv_id is None or self.ctl.info is None:
            return
        msgs = self.ctl.store.messages(self.conv_id)
        users = [m for m in msgs if m.role == "user"]
        if not users:
            return
        last = users[-1]
        self.ctl.store.truncate(self.conv_id, last.position)
        history = [(m.role, m.content) for m in msgs if m.position < last.position]
        self.ctl.store.append(self.conv_id, "user", last.content)
        self.reply_pos = self.ctl.store.append(self.conv_id, "assistant", "").position
        self._start(history, last.content)

    # --- from the worker -----------------------------------------------------------------------
    def on_piece(self, rid: int, text: str) -> None:
        if rid != self.rid:
            return
        self.partial += text
        if not self.render_timer.isActive():
            self.render_timer.start()

    def on_done(self, rid: int, reply) -> None:
        if rid != self.rid:
            return
        self.ctl.store.update(self.conv_id, self.reply_pos, reply.text, reply.reasoning)
        self.context_tokens = reply.context_tokens
        self._finish()

    def on_failed(self, rid: int, message: str) -> None:
        if rid != self.rid:
            return
        self._save_partial()
        self.ctl.show_error(message)
        self._finish()

    def _finish(self) -> None:
        self.rid, self.stop_flag = None, None
        self.update_controls()
        self.render()

    def _save_partial(self) -> None:
        if self.rid is None or self.conv_id is None:
            return
        thought, answer = self._split(self.partial)
        self.ctl.store.update(self.conv_id, self.reply_pos, answer, thought)

    def shutdown(self) -> None:
        """The window is closing: stop the generation and keep what it wrote."""
        self.render_timer.stop()
        self.closed = True
        if self.rid is not None:
            self.stop()
            self._save_partial()
            self.rid = None

    # --- view ----------------------------------------------------------------------------------
    def update_controls(self) -> None:
        ready = self.ctl.info is not None
        busy = self.rid is not None
        self.send_btn.setEnabled(ready and not busy)
        self.regen_btn.setEnabled(ready and not busy)
        self.stop_btn.setEnabled(busy)
        for w in (self.new_btn, self.delete_btn, self.list):
            w.setEnabled(not busy)
        self.think.setVisible(bool(ready and self.ctl.info.reasoning))
        self.input.setPlaceholderText(tr("Type a message (Ctrl+Enter to send)") if ready
                                      else tr("Load a model to start chatting."))
        self.tokens_label.setText(tr("{n} tokens in context", n=self.context_tokens) if self.context_tokens else "")

    def _split(self, raw: str) -> tuple[str, str]:
        info = self.ctl.info
        if info is not None and info.reasoning and self.think.isChecked():
            from roost.engine.prompts import split_reasoning

            return split_reasoning(raw)
        return "", raw.strip()

    def markdown(self) -> str:
        if self.conv_id is None:
            return ""
        out = []
        for m in self.ctl.store.messages(self.conv_id):
            content, thought = m.content, m.reasoning
            if self.rid is not None and m.position == self.reply_pos:
                thought, content = self._split(self.partial)
                content += " ▍"
            who = tr("You") if m.role == "user" else "RWKV"
            links = f"[{tr('copy')}](roost:copy/{m.position})"
            if m.role == "user" and self.rid is None:
                links += f" · [{tr('edit')}](roost:edit/{m.position})"
            out.append(f"**{who}** &nbsp; <small>{links}</small>\n")
            if thought:
                if m.position in self.expanded:
                    quoted = "\n".join("> " + line for line in thought.splitlines())
                    out.append(f"*{tr('Thinking')}* [{tr('hide')}](roost:think/{m.position})\n\n{quoted}\n")
                else:
                    words = len(thought.split())
                    out.append(f"*{tr('Thinking')} ({words})* [{tr('show')}](roost:think/{m.position})\n")
            out.append(content + "\n\n---\n")
        return "\n".join(out)

    def render(self) -> None:
        if getattr(self, "closed", False):
            return
        bar = self.view.verticalScrollBar()
        at_end = bar.value() >= bar.maximum() - 4
        self.view.setMarkdown(self.markdown())
        if at_end or self.rid is not None:
            bar.setValue(bar.maximum())
        self.update_controls()

    def _on_link(self, url: QUrl) -> None:
        if url.scheme() != "roost":
            return
        action, _, pos = url.toString()[len("roost:"):].partition("/")
        if not pos.isdigit() or self.conv_id is None:
            return
        pos = int(pos)
        msg = next((m for m in self.ctl.store.messages(self.conv_id) if m.position == pos), None)
        if msg is None:
            return
        if action == "copy":
            QGuiApplication.clipboard().setText(msg.content)
        elif action == "edit" and self.rid is None:
            self.edit_pos = pos
            self.input.setPlainText(msg.content)
            self.input.setFocus()
        elif action == "think":
            self.expanded ^= {pos}
            self.render()
