"""Chat: conversations saved in SQLite, replies streamed from the engine worker, Markdown shown."""

from __future__ import annotations

import time

from PySide6.QtCore import Qt, QTimer, QUrl
from PySide6.QtGui import QDesktopServices, QGuiApplication, QKeySequence, QShortcut, QTextCursor
from PySide6.QtWidgets import (
    QComboBox,
    QFrame,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSizePolicy,
    QSplitter,
    QStackedWidget,
    QVBoxLayout,
    QWidget,
)

from roost.gui import icons
from roost.gui.chat_conversations import PAGE, ChatConversations
from roost.gui.chat_files import ChatFiles
from roost.gui.chat_view import ChatList, ChatView, Composer
from roost.gui.i18n import tr
from roost.gui.persona_menu import PersonaMenu
from roost.gui.sampling import SamplingPanel
from roost.gui.welcome import WelcomePanel

THINK_LEVELS = [("Don't think", False), ("Think a bit", "low"), ("Think", "medium"), ("Think a lot", "high")]

class ChatPage(ChatConversations, ChatFiles, QWidget):
    SAVE_EVERY = 2.0  # seconds between saves of a reply's text while it streams
    def __init__(self, ctl):
        super().__init__()
        self.ctl = ctl
        self.conv_id: int | None = None
        self.rid: int | None = None  # the generation in flight
        self.reply_id: int | None = None  # the id of the message it writes
        self.partial = ""
        self._saved_at = 0.0  # when the reply's text was last saved while it streams
        self.read_so_far: tuple[int, int] | None = None  # a long prompt's tokens read, of how many
        self.stop_flag = None
        self.edit_pos: int | None = None
        self.expanded: set[int] = set()
        self.context_of: dict[int, int] = {}  # each chat's tokens in context after its last reply here
        self.drafts: dict[int, tuple[str, int | None]] = {}  # each chat's unsent text (and the question it edits)
        self.follow = False  # the next render scrolls to the end (a message was just sent)
        self.reply_thinks = True
        self.render_timer = QTimer(self, singleShot=True, interval=50, timeout=self._render_streaming)
        self.shown = PAGE  # how many of the last messages the view shows ("show earlier" adds more)
        self._tail_msg = None  # the view's last message (while a reply streams, the reply)
        self._build()
        self.reload_list()
        ctl.modelChanged.connect(self._model_changed)
        ctl.libraryChanged.connect(lambda: self.persona.fill())
        ctl.piece.connect(self.on_piece)
        ctl.reading.connect(self.on_reading)
        ctl.done.connect(self.on_done)
        ctl.failed.connect(self.on_failed)
        ctl.firstRun.connect(self._first_run)
        self.update_controls()

    # --- layout --------------------------------------------------------------------------------
    def _build(self) -> None:
        left = QWidget()
        lv = QVBoxLayout(left)
        self.search = QLineEdit(placeholderText=tr("Search chats…"), clearButtonEnabled=True,
                                accessibleName=tr("Search chats…"))
        self.search.textChanged.connect(self.reload_list)
        self.list = ChatList()
        self.list.setAccessibleName(tr("Chats"))
        self.list.currentItemChanged.connect(self._on_select)
        self.list.setContextMenuPolicy(Qt.CustomContextMenu)
        self.list.customContextMenuRequested.connect(self._list_menu)
        self.list.itemChanged.connect(self._renamed_inline)
        row = QHBoxLayout()
        self.new_btn = QPushButton(tr("New chat"), clicked=self.new_chat)
        self.rename_btn = QPushButton(tr("Rename"), clicked=self.rename_chat)
        self.delete_btn = QPushButton(tr("Delete"), clicked=self.delete_chat)
        for b in (self.new_btn, self.rename_btn, self.delete_btn):
            row.addWidget(b)
        # a deleted chat can be brought back until the app closes
        self.undo_bar = QFrame(objectName="card", visible=False)
        ub = QHBoxLayout(self.undo_bar)
        ub.setContentsMargins(8, 4, 8, 4)
        self.undo_label = QLabel(wordWrap=True)
        self.undo_btn = QPushButton(tr("Undo"), clicked=self.undo_delete)
        ub.addWidget(self.undo_label, 1)
        ub.addWidget(self.undo_btn)
        self.deleted: int | None = None
        self.import_btn = QPushButton(tr("Import…"), clicked=self.import_chats)
        lv.addWidget(self.search)
        lv.addWidget(self.list, 1)
        lv.addWidget(self.undo_bar)
        lv.addLayout(row)
        lv.addWidget(self.import_btn)

        right = QWidget()
        rv = QVBoxLayout(right)
        top = QHBoxLayout()
        self.persona = PersonaMenu(self.ctl, lambda: self.conv_id)
        # G1 models: how much to think before answering (the official templates' levels)
        self.think = QComboBox()
        for label, level in THINK_LEVELS:
            self.think.addItem(tr(label), level)
        self.think.setCurrentIndex(2)
        self.think.setToolTip(tr("Thinking first gives better answers to hard questions, and takes longer."))
        self.think.setAccessibleName(tr("Thinking"))
        self.sampling_btn = QPushButton(tr("Sampling"), checkable=True)
        self.export_btn = QPushButton(tr("Export…"), clicked=self.export)
        self.tokens_label = QLabel(objectName="hint")
        # (never clipped: the drop-downs beside it give way first)
        self.tokens_label.setSizePolicy(QSizePolicy.Minimum, QSizePolicy.Preferred)
        top.addWidget(QLabel(tr("Persona")))
        top.addWidget(self.persona)
        top.addWidget(self.think)
        top.addStretch(1)
        top.addWidget(self.tokens_label)
        top.addWidget(self.sampling_btn)
        top.addWidget(self.export_btn)

        self.view = ChatView(openLinks=False)
        self.view.anchorClicked.connect(self._on_link)
        self.view.actions.triggered.connect(self.message_action)
        self.sampling = SamplingPanel(self.ctl.settings.current)
        self.sampling.setVisible(False)
        self.sampling_btn.toggled.connect(self.sampling.setVisible)
        middle = QHBoxLayout()
        middle.addWidget(self.view, 1)
        middle.addWidget(self.sampling)

        self.input = Composer(self.ctl.settings.current.send_key)
        self.input.send.connect(self.send)
        self.input.stop.connect(self.escape)
        self.edit_hint = QLabel(tr("Editing a question: sending makes a new version of it. Esc cancels."),
                                objectName="hint", visible=False, wordWrap=True)
        self.input.setAccessibleName(tr("Message"))
        self.ctl.settings.subscribe(self._settings_changed)
        buttons = QVBoxLayout()
        self.send_btn = QPushButton(tr("Send"), objectName="primary", clicked=self.send)
        self.stop_btn = QPushButton(tr("Stop"), clicked=self.stop)
        self.regen_btn = QPushButton(tr("Regenerate"), clicked=lambda: self.regenerate())
        for b in (self.send_btn, self.stop_btn, self.regen_btn):
            buttons.addWidget(b)
        bottom = QHBoxLayout()
        bottom.addWidget(self.input, 1)
        bottom.addLayout(buttons)
        # the page's keys (the window has those that switch pages)
        for widget, name in [(self.new_btn, "new"), (self.rename_btn, "rename"), (self.delete_btn, "delete"),
                             (self.import_btn, "import"), (self.stop_btn, "stop"), (self.regen_btn, "regenerate"),
                             (self.sampling_btn, "sampling"), (self.export_btn, "export"), (self.undo_btn, "undo")]:
            icons.give(widget, name)
        icons.give(self.send_btn, "send", on_accent=True)
        QShortcut(QKeySequence("Ctrl+N"), self, activated=self.new_chat)
        QShortcut(QKeySequence("Ctrl+F"), self, activated=self.focus_search)
        QShortcut(QKeySequence("Ctrl+L"), self, activated=self.input.setFocus)
        # the keyboard's way to the actions shown under a message on hover (the last ones)
        QShortcut(QKeySequence("Ctrl+Shift+C"), self, activated=lambda: self._act_on_last("assistant", "copy"))
        self.input.edit_last.connect(lambda: self._act_on_last("user", "edit"))

        rv.addLayout(top)
        rv.addLayout(middle, 1)
        rv.addWidget(self.edit_hint)
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

    def _settings_changed(self, old, new) -> None:
        if new.send_key != old.send_key:
            self.input.send_key = new.send_key
            self.update_controls()

    def focus_search(self) -> None:
        self.search.setFocus()
        self.search.selectAll()

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
        self.persona.fill()
        self.update_controls()

    # --- sending -------------------------------------------------------------------------------
    def send(self) -> None:
        text = self.input.toPlainText().strip()
        if not text or self.rid is not None or self.ctl.info is None:
            return
        if self.conv_id is None:
            self.new_chat()
        store, cid = self.ctl.store, self.conv_id
        appended = self.edit_pos is None  # the view only grows: no need to draw it all again
        if self.edit_pos is not None:  # the edited question becomes a new version of the old one
            store.rewind(cid, self.edit_pos)
            self._editing(None)
        before = store.messages(cid)
        history = [(m.role, m.content) for m in before]
        if not history and store.get(cid).title == tr("New chat"):
            store.rename(cid, text.splitlines()[0][:40])
            self.reload_list()
        question = store.append(cid, "user", text)
        reply = store.append(cid, "assistant", "", writing=True)
        self.reply_id = reply.id
        self.input.clear()
        self._start(history, text, append=[question, reply] if appended else None, path=[m.id for m in before])

    def _start(self, history, text, append=None, path=None) -> None:
        """Ask for the reply (self.reply_id) to `text` after `history`; `path`: the stored ids of
        `history`'s messages (the chat resumes from the nearest saved state on it)."""
        from roost.engine.generate import StopFlag

        self.stop_flag = StopFlag()
        self.partial = ""
        self.read_so_far = None
        self._saved_at = time.monotonic()
        conv = self.ctl.store.get(self.conv_id)
        think = self.think.currentData() if self.ctl.info.reasoning else None
        self.reply_thinks = think is not None and think is not False  # how this reply is to be split
        req = {"key": self.conv_id, "history": history, "text": text, "params": self.sampling.params(),
               "system": conv.system, "think": think, "stop": self.stop_flag, "path": path,
               "message": self.reply_id,
               "persona": str(self.ctl.models_folder() / conv.persona) if conv.persona else None}
        self.rid = self.ctl.request("chat", req)
        self.update_controls()
        self.follow = True  # the user just sent: show the reply coming
        if append == [] and self.view.tail_start is not None:  # a new answer in the place of the last one
            with self.view.keeping_place(follow=True):
                self._redraw_tail(streaming=True)
            self.follow = False
        elif append and (self.view.tail_start is not None or self.view.empty):
            self._append(append)  # the chat only grows: nothing before is drawn again
        else:
            self.render()

    def stop(self) -> None:
        if self.stop_flag is not None:
            self.stop_flag.set()

    def regenerate(self, position: int | None = None) -> None:
        """A new answer to the question before `position` (default: the last answer); the answer
        it replaces stays as another version."""
        if self.rid is not None or self.conv_id is None or self.ctl.info is None:
            return
        store = self.ctl.store
        msgs = store.messages(self.conv_id)
        users = [m for m in msgs if m.role == "user" and (position is None or m.position < position)]
        if not users:
            return
        question = users[-1]
        last = question.position + 1 == len(msgs) - 1  # the answer replaced is the last message shown
        store.rewind(self.conv_id, question.position + 1)
        before = [m for m in msgs if m.position < question.position]
        history = [(m.role, m.content) for m in before]
        reply = store.append(self.conv_id, "assistant", "", writing=True)
        self.reply_id = reply.id
        path = [m.id for m in before]
        if last and self.view.tail_start is not None:  # draw the new answer in the old one's place
            self._tail_msg = reply
            self._start(history, question.content, append=[], path=path)
        else:
            self._start(history, question.content, path=path)

    # --- from the worker -----------------------------------------------------------------------
    def on_piece(self, rid: int, text: str) -> None:
        if rid != self.rid:
            return
        self.partial += text
        if not self.render_timer.isActive():
            self.render_timer.start()
        if time.monotonic() - self._saved_at >= self.SAVE_EVERY:  # what a kill -9 would leave
            self._save_partial(done=False)

    def on_reading(self, rid: int, done: int, total: int) -> None:
        """A long message is being read before the reply starts: say how far (in the reply's place)."""
        if rid != self.rid or self.partial:
            return
        self.read_so_far = (done, total)
        self._render_streaming()  # (at once: a chunk of the prompt takes a while, and the reply comes after)

    def on_done(self, rid: int, reply) -> None:
        if rid != self.rid:
            return
        self.ctl.store.update(self.conv_id, self.reply_id, reply.text, reply.reasoning)
        if self.stop_flag is not None and self.stop_flag.is_set():
            self._drop_empty_reply()
        if reply.context_tokens:
            self.context_of[self.conv_id] = reply.context_tokens
        self._finish()

    def _drop_empty_reply(self) -> None:
        """A reply stopped before it wrote anything leaves no empty bubble: that version goes (an
        earlier answer it was to replace is shown again; Regenerate asks anew)."""
        mine = next((m for m in self.ctl.store.messages(self.conv_id) if m.id == self.reply_id), None)
        if mine is not None and not mine.content.strip() and not mine.reasoning.strip():
            self.ctl.store.delete_message(self.conv_id, mine.position)

    def on_failed(self, rid: int, message: str) -> None:
        if rid != self.rid:
            return
        self._save_partial()
        self.ctl.show_error(message)
        self._finish()

    def _finish(self) -> None:
        self.rid, self.stop_flag = None, None
        self.update_controls()
        tail = self._tail_msg
        if self.view.tail_start is not None and tail is not None and tail.id == self.reply_id and self.conv_id is not None:
            done = next((m for m in reversed(self.ctl.store.messages(self.conv_id)) if m.id == tail.id), None)
            if done is not None:  # only the reply changes: draw it alone (a long chat stays as it is)
                self._tail_msg = done
                with self.view.keeping_place():
                    self._redraw_tail(streaming=False)
                return
        self.render()

    def _save_partial(self, done: bool = True) -> None:
        """The reply's text so far into the file (`done` False: while it is still being written)."""
        if self.rid is None or self.conv_id is None:
            return
        thought, answer = self._split(self.partial)
        self.ctl.store.update(self.conv_id, self.reply_id, answer, thought, done=done)
        self._saved_at = time.monotonic()

    def shutdown(self) -> None:
        """The window is closing: stop the generation and keep what it wrote."""
        self.render_timer.stop()
        self.closed = True
        if self.rid is not None:
            self.stop()
            self._save_partial()
            self.rid = None

    # --- view ----------------------------------------------------------------------------------
    @property
    def context_tokens(self) -> int:
        """The open chat's tokens in context after its last reply here (0: not known)."""
        return self.context_of.get(self.conv_id, 0)

    def update_controls(self) -> None:
        ready = self.ctl.info is not None
        busy = self.rid is not None
        self.send_btn.setEnabled(ready and not busy)
        self.regen_btn.setEnabled(ready and not busy)
        self.stop_btn.setEnabled(busy)
        self.view.busy = busy
        self.view.writing = self.reply_id if busy else None
        if self.view.hovered is not None:  # its actions say what can be done now
            self.view.show_actions(self.view.hovered)
        for w in (self.new_btn, self.delete_btn, self.list):
            w.setEnabled(not busy)
        self.think.setVisible(bool(ready and self.ctl.info.reasoning))
        self.input.setPlaceholderText(self.input.placeholder(ready))
        self.view.set_hint(self._empty_text())
        self.tokens_label.setText(tr("{n} tokens in context", n=self.context_tokens) if self.context_tokens else "")

    def _empty_text(self) -> str:
        """What an empty chat says (Qt shows it while the conversation has no message)."""
        info = self.ctl.info
        if info is None:
            return tr("No model is loaded yet. Choose one on the Models page (Ctrl+3), or drop a model file "
                      "on this window.")
        lines = [tr("Chat with {model}. It runs on this computer: nothing you write leaves it.", model=info.path.stem)]
        if info.reasoning:
            lines.append(tr("It can think before it answers: choose how much above."))
        lines.append(tr("Ctrl+N starts a new chat; Persona (above) gives the model a role."))
        return "\n\n".join(lines)

    def _split(self, raw: str) -> tuple[str, str]:
        info = self.ctl.info
        if info is not None and info.reasoning:
            from roost.engine.prompts import split_reasoning

            thinks = self.reply_thinks if self.rid is not None else self.think.currentData() is not False
            return split_reasoning(raw, thinking=thinks)
        return "", raw.strip()

    # --- the conversation view (roost.gui.chat_view) ------------------------------------------
    def _message_html(self, m, streaming: bool = False) -> str:
        content, thought = m.content, m.reasoning
        if streaming:
            thought, content = self._split(self.partial)
            content += " ▍"
            if not self.partial and self.read_so_far is not None:
                done, total = self.read_so_far
                content = "*" + tr("Reading your message… {pct}% ({done:,} of {total:,} tokens)",
                                   pct=100 * done // max(total, 1), done=done, total=total) + "* ▍"
        # a reply left unfinished in the file (Roost was killed or crashed while writing it)
        interrupted = m.writing and not streaming and not (self.rid is not None and m.id == self.reply_id)
        return self.view.message_html(m, content, thought, expanded=m.position in self.expanded,
                                      interrupted=interrupted)

    def restyle(self) -> None:
        """The theme changed: the messages again, in its colours (bubbles, text, code)."""
        if self.rid is None:
            self.render()
        else:
            self._render_streaming()

    def render(self) -> None:
        """Show the conversation (its last `shown` messages); the last message is drawn on its own,
        so that it alone is redrawn while a reply streams (`_render_streaming`)."""
        if getattr(self, "closed", False):
            return
        msgs = self.ctl.store.messages(self.conv_id) if self.conv_id is not None else []
        streaming = self.rid is not None and bool(msgs) and msgs[-1].id == self.reply_id
        earlier = max(0, len(msgs) - self.shown)
        head = []
        if earlier:
            head.append(f'<p align="center"><a href="roost:earlier/0">{tr("Show {n} earlier messages", n=earlier)}'
                        "</a></p>")
        head += [self._message_html(m) for m in msgs[earlier:-1]]
        self._tail_msg = msgs[-1] if msgs else None
        with self.view.keeping_place(follow=self.follow):
            self.view.draw(head, self._message_html(msgs[-1], streaming) if msgs else None, msgs[earlier:])
        self.follow = False
        self.update_controls()

    def _redraw_tail(self, streaming: bool) -> None:
        self.view.replace_tail(self._message_html(self._tail_msg, streaming=streaming), self._tail_msg)

    def _append(self, msgs) -> None:
        """Messages added at the end (a question sent, its reply begun): the last of them becomes
        the tail; nothing before is drawn again."""
        with self.view.keeping_place(follow=self.follow):
            if self.view.tail_start is not None and self._tail_msg is not None:
                self._redraw_tail(streaming=False)  # the former last message, with its actions
            for m in msgs:
                self._tail_msg = m
                self.view.add_tail(self._message_html(m, streaming=self.rid is not None and m.id == self.reply_id), m)
        self.follow = False

    def _render_streaming(self) -> None:
        """A new piece of the reply: redraw its message only (a long chat is not laid out again)."""
        if getattr(self, "closed", False) or self.rid is None:
            return  # (a reply that ended was drawn by _finish)
        if self.view.tail_start is None or self._tail_msg is None or self._tail_msg.id != self.reply_id:
            return self.render()
        with self.view.keeping_place():
            self._redraw_tail(streaming=True)

    def _copy_code(self, ref: str) -> None:
        from roost.gui.render import markdown_html

        where, _, n = ref.partition("-")
        thinking = where.endswith("t")
        where = where.rstrip("t")
        if not (where.isdigit() and n.isdigit()) or self.conv_id is None:
            return
        msg = next((m for m in self.ctl.store.messages(self.conv_id) if m.position == int(where)), None)
        if msg is None:
            return
        base = f"{where}{'t' if thinking else ''}-"
        _html, blocks = markdown_html(msg.reasoning if thinking else msg.content, self.view.colours(), base)
        if int(n) < len(blocks):
            self._copied(blocks[int(n)])

    def _copied(self, text: str) -> None:
        """``text`` on the clipboard, and a "Copied" beside the pointer to say so."""
        from PySide6.QtGui import QCursor
        from PySide6.QtWidgets import QToolTip

        QGuiApplication.clipboard().setText(text)
        QToolTip.showText(QCursor.pos(), tr("Copied"), self.view)

    def _on_link(self, url: QUrl) -> None:
        if url.scheme() in ("http", "https"):
            QDesktopServices.openUrl(url)
            return
        if url.scheme() != "roost":
            return
        action, _, pos = url.toString()[len("roost:"):].partition("/")
        if action == "code":  # a code block's copy link: roost:code/<position>-<n> (t: in the thinking)
            self._copy_code(pos)
            return
        if action == "earlier":
            bar = self.view.verticalScrollBar()
            from_end = bar.maximum() - bar.value()
            self.shown += PAGE
            self.render()
            bar.setValue(bar.maximum() - from_end)  # the same message stays in view
            return
        if pos.isdigit():
            self.message_action(action, int(pos))

    def _act_on_last(self, role: str, action: str) -> None:
        """`action` on the open chat's last message of `role` (Ctrl+Shift+C copies the last reply; Up
        in the empty message box edits the last question)."""
        msgs = self.ctl.store.messages(self.conv_id) if self.conv_id is not None else []
        last = next((m for m in reversed(msgs) if m.role == role), None)
        if last is not None:
            self.message_action(action, last.position)

    def message_action(self, action: str, pos: int) -> None:
        """What a message's links, actions (on hover) or context menu ask for the message at `pos`."""
        if self.conv_id is None:
            return
        msg = next((m for m in self.ctl.store.messages(self.conv_id) if m.position == pos), None)
        if msg is None:
            return
        if action == "copy":
            self._copied(msg.content)
        elif action == "edit" and self.rid is None:
            self._editing(pos)
            self.input.setPlainText(msg.content)
            self.input.moveCursor(QTextCursor.End)
            self.input.setFocus()
        elif action == "think":
            self.expanded ^= {pos}
            self.render()
        elif self.rid is not None:
            return
        elif action in ("prev", "next"):
            self.ctl.store.switch(self.conv_id, pos, -1 if action == "prev" else 1)
            self.render()
        elif action == "regen":
            self.regenerate(pos)
        elif action == "delete":
            self.ctl.store.delete_message(self.conv_id, pos)
            self.render()
