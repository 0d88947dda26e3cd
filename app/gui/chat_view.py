"""The chat page's widgets: the list of chats, the conversation view and the composer.

The view is rich text (a QTextBrowser: no web engine in the bundle) with avatars as images of its
own. It is drawn whole when a conversation opens, and afterwards only its last message (the
"tail") is redrawn or a message added after it, so that a long chat is not laid out again for each
piece of a reply. What the messages say is the page's business; the HTML is roost.gui.render's.
"""

from __future__ import annotations

import contextlib
import html

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QColor, QFont, QImage, QPainter, QPalette, QTextCursor
from PySide6.QtWidgets import QListWidget, QListWidgetItem, QPlainTextEdit, QTextBrowser

from roost.gui import render
from roost.gui.i18n import tr


GROUPS = {"pinned": "Pinned", "today": "Today", "yesterday": "Yesterday", "week": "Previous 7 days",
          "month": "Previous 30 days", "earlier": "Earlier"}


class ChatList(QListWidget):
    """The chats (their ids as Qt.UserRole), under headings by date when `grouped`."""

    def fill(self, conversations, current: int | None, *, grouped: bool) -> None:
        from roost.core.conversations import date_group

        self.blockSignals(True)
        self.clear()
        heading = None
        for c in conversations:
            group = ("pinned" if c.pinned else date_group(c.updated)) if grouped else None
            if group != heading and group is not None:
                heading = group
                self.addItem(self._heading(tr(GROUPS[group])))
            item = QListWidgetItem(("📌 " if c.pinned and not grouped else "") + c.title)
            item.setData(Qt.UserRole, c.id)
            item.setFlags(item.flags() | Qt.ItemIsEditable)
            self.addItem(item)
            if c.id == current:
                self.setCurrentItem(item)
        self.blockSignals(False)

    @staticmethod
    def _heading(text: str) -> QListWidgetItem:
        head = QListWidgetItem(text)
        head.setFlags(Qt.NoItemFlags)
        head.setData(Qt.AccessibleDescriptionRole, "heading")
        font = head.font()
        font.setBold(True)
        font.setPointSizeF(font.pointSizeF() * 0.9)
        head.setFont(font)
        head.setForeground(QColor("#8a8f98"))
        return head

    def item_for(self, conv_id) -> QListWidgetItem | None:
        return next((self.item(i) for i in range(self.count()) if self.item(i).data(Qt.UserRole) == conv_id), None)

    def first_chat(self) -> QListWidgetItem | None:
        return next((self.item(i) for i in range(self.count()) if self.item(i).data(Qt.UserRole) is not None), None)


class Composer(QPlainTextEdit):
    """Where a message is written: grows with the text (up to 8 lines), sends on Enter (Shift+Enter:
    a new line) or on Ctrl+Enter, as the setting `send_key` says; Esc stops a reply being written."""

    send = Signal()
    stop = Signal()

    def __init__(self, send_key: str = "enter"):
        super().__init__()
        self.send_key = send_key
        self.setTabChangesFocus(True)
        self.document().documentLayout().documentSizeChanged.connect(lambda _size: self._fit())
        self._fit()

    def placeholder(self, ready: bool) -> str:
        if not ready:
            return tr("Load a model to start chatting.")
        if self.send_key == "enter":
            return tr("Type a message (Enter to send, Shift+Enter for a new line)")
        return tr("Type a message (Ctrl+Enter to send)")

    def keyPressEvent(self, event) -> None:
        key, mods = event.key(), event.modifiers()
        if key == Qt.Key_Escape:
            self.stop.emit()
            return
        if key in (Qt.Key_Return, Qt.Key_Enter):
            ctrl = bool(mods & Qt.ControlModifier)
            shift = bool(mods & Qt.ShiftModifier)
            if ctrl or (self.send_key == "enter" and not shift):
                self.send.emit()
                return
        super().keyPressEvent(event)

    def _fit(self) -> None:
        lines = max(2, min(8, int(self.document().documentLayout().documentSize().height())))
        margins = self.contentsMargins()
        doc_margin = 2 * self.document().documentMargin()
        self.setFixedHeight(int(lines * self.fontMetrics().lineSpacing() + doc_margin + margins.top()
                                + margins.bottom() + 4))


class ChatView(QTextBrowser):
    """The conversation: rich text whose images (avatars) come from `images`, not from files."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.images: dict[str, QImage] = {}
        self.tail_start: int | None = None  # where the last message begins in the document
        self.hint = ""  # what an empty conversation shows (plain text; paragraphs split by blank lines)
        self.hint_shown = False
        self.setAccessibleName(tr("Conversation"))
        for key, letter, colour in (("user", tr("You")[:1], "#4c7bd9"), ("assistant", "R", "#2e9b6f")):
            self.images[f"roost:avatar/{key}"] = self._avatar(letter, colour)

    def _avatar(self, letter: str, colour: str) -> QImage:
        """A round avatar: a letter on a colour."""
        img = QImage(60, 60, QImage.Format_ARGB32_Premultiplied)
        img.fill(Qt.transparent)
        p = QPainter(img)
        p.setRenderHint(QPainter.Antialiasing)
        p.setBrush(QColor(colour))
        p.setPen(Qt.NoPen)
        p.drawEllipse(0, 0, 60, 60)
        p.setPen(QColor("white"))
        font = QFont(self.font())
        font.setPixelSize(28)
        font.setBold(True)
        p.setFont(font)
        p.drawText(img.rect(), Qt.AlignCenter, letter)
        p.end()
        return img

    def loadResource(self, kind, url):
        image = self.images.get(url.toString())
        return image if image is not None else super().loadResource(kind, url)

    def colours(self) -> render.Palette:
        return render.DARK if self.palette().color(QPalette.ColorRole.Base).lightness() < 128 else render.LIGHT

    def message_html(self, m, content: str, thought: str, *, expanded: bool, streaming: bool) -> str:
        """One message (a StoredMessage `m`, showing `content` and `thought`): its bubble, its
        thought folded unless `expanded`, its actions unless it is still being written."""
        palette = self.colours()
        body, _code = render.markdown_html(content, palette, f"{m.position}-")
        thought_html = ""
        if thought:
            if expanded:
                inner, _ = render.markdown_html(thought, palette, f"{m.position}t-")
                thought_html = (f'<p style="color:{palette.muted};"><i>{tr("Thinking")}</i> '
                                f'<a href="roost:think/{m.position}">{tr("hide")}</a></p>'
                                f'<div style="color:{palette.muted};">{inner}</div><hr>')
            else:
                thought_html = (f'<p style="color:{palette.muted};"><i>{tr("Thinking")} ({len(thought.split())})'
                                f'</i> <a href="roost:think/{m.position}">{tr("show")}</a></p>')
        versions = None
        if m.versions > 1:  # other versions here: regenerated answers, edited questions
            versions = (m.version, m.versions, f"roost:prev/{m.position}" if m.version > 1 else "",
                        f"roost:next/{m.position}" if m.version < m.versions else "")
        actions: list[tuple[str, str]] = []
        if not streaming:  # (shown while another reply is written; the page ignores them until it ends)
            actions.append((tr("copy"), f"roost:copy/{m.position}"))
            if m.role == "user":
                actions.append((tr("edit"), f"roost:edit/{m.position}"))
            else:
                actions.append((tr("regenerate"), f"roost:regen/{m.position}"))
            actions.append((tr("delete"), f"roost:delete/{m.position}"))
        who = tr("You") if m.role == "user" else "RWKV"
        return render.message_html(who=who, role=m.role, body_html=body, actions=actions, palette=palette,
                                   avatar=f"roost:avatar/{m.role}", thought_html=thought_html,
                                   anchor=f"m{m.position}", versions=versions)

    # --- drawing ---------------------------------------------------------------------------------
    @contextlib.contextmanager
    def keeping_place(self, follow: bool = False):
        """Redraw without moving the reader: at the end if they were there (or `follow`), else
        where they were."""
        bar = self.verticalScrollBar()
        at_end, where = bar.value() >= bar.maximum() - 4, bar.value()
        yield
        bar.setValue(bar.maximum() if at_end or follow else where)

    def set_hint(self, text: str) -> None:
        """What an empty conversation says; shown at once if the conversation is empty."""
        if text != self.hint:
            self.hint = text
            if self.empty:
                self.draw([], None)

    def draw(self, head: list[str], tail: str | None) -> None:
        """The whole conversation: `head` (HTML pieces), then the last message `tail` on its own;
        nothing at all: the hint."""
        self.hint_shown = not head and tail is None and bool(self.hint)
        if self.hint_shown:
            paragraphs = "".join(f"<p>{html.escape(p)}</p>" for p in self.hint.split("\n\n"))
            self.setHtml(f'<div align="center" style="color: #8a8f98; font-size: 15px;"><br><br>{paragraphs}</div>')
            self.tail_start = None
            return
        self.setHtml("".join(head))
        self.tail_start = None
        if tail is not None:
            self.tail_start = self.document().characterCount() - 1
            self.replace_tail(tail)

    def replace_tail(self, html: str) -> None:
        cursor = QTextCursor(self.document())
        cursor.setPosition(self.tail_start)
        cursor.movePosition(QTextCursor.End, QTextCursor.KeepAnchor)
        cursor.insertHtml(html)

    def add_tail(self, html: str) -> None:
        """A message after the last one, which it becomes."""
        if self.hint_shown:  # the first message of an empty conversation takes the hint's place
            self.clear()
            self.hint_shown = False
        cursor = QTextCursor(self.document())
        cursor.movePosition(QTextCursor.End)
        self.tail_start = cursor.position()
        cursor.insertHtml(html)

    @property
    def empty(self) -> bool:
        return self.hint_shown or self.document().characterCount() <= 1
