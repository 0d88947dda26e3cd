"""The chat page's widgets: the list of chats, the conversation view and the composer.

The view is rich text (a QTextBrowser: no web engine in the bundle) with avatars as images of its
own. It is drawn whole when a conversation opens, and afterwards only its last message (the
"tail") is redrawn or a message added after it, so that a long chat is not laid out again for each
piece of a reply. What the messages say is the page's business; the HTML is roost.gui.render's.
"""

from __future__ import annotations

import contextlib
import html
import time

from PySide6.QtCore import QDate, QEvent, QLocale, QPoint, QRect, QRectF, QSize, Qt, Signal
from PySide6.QtGui import QColor, QCursor, QFont, QImage, QPainter, QPalette, QTextCursor, QTextTable
from PySide6.QtWidgets import (
    QFrame,
    QHBoxLayout,
    QListWidget,
    QListWidgetItem,
    QPlainTextEdit,
    QStyle,
    QStyledItemDelegate,
    QTextBrowser,
    QToolButton,
)

from roost.gui import render
from roost.gui.i18n import language, tr


GROUPS = {"pinned": "Pinned", "today": "Today", "yesterday": "Yesterday", "week": "Previous 7 days",
          "month": "Previous 30 days", "earlier": "Earlier"}


UPDATED, PINNED = Qt.UserRole + 1, Qt.UserRole + 2  # a chat item's time of last change, and whether pinned


def when(updated: float, now: float | None = None) -> str:
    """A chat's last change as its list shows it: the time today, "Yesterday", else the date."""
    from roost.core.conversations import date_group

    group = date_group(updated, now)
    t = time.localtime(updated)
    if group == "today":
        return f"{t.tm_hour:02d}:{t.tm_min:02d}"
    if group == "yesterday":
        return tr("Yesterday")
    locale = QLocale(QLocale.Chinese if language() == "zh" else QLocale.English)
    this_year = t.tm_year == time.localtime(now if now is not None else time.time()).tm_year
    fmt = ("M月d日" if this_year else "yyyy年M月d日") if language() == "zh" else ("MMM d" if this_year else "MMM d, yyyy")
    return locale.toString(QDate(t.tm_year, t.tm_mon, t.tm_mday), fmt)


class ChatListDelegate(QStyledItemDelegate):
    """Draws the chat list: a chat as its title over when it last changed (a pin when pinned), on a
    rounded background when selected or under the mouse; a date heading as small grey text."""

    PAD = 8

    def sizeHint(self, option, index) -> QSize:
        fm = option.fontMetrics
        if index.data(Qt.UserRole) is None:  # a heading
            return QSize(100, fm.height() + 12)
        return QSize(100, 2 * fm.height() + 14)

    def paint(self, painter, option, index) -> None:
        from roost.gui import icons

        painter.save()
        painter.setRenderHint(QPainter.Antialiasing)
        pal, rect, fm = option.palette, option.rect, option.fontMetrics
        if index.data(Qt.UserRole) is None:  # a heading
            font = QFont(option.font)
            font.setBold(True)
            font.setPointSizeF(font.pointSizeF() * 0.85)
            painter.setFont(font)
            painter.setPen(pal.color(QPalette.PlaceholderText))
            painter.drawText(rect.adjusted(self.PAD, 6, -self.PAD, 0), Qt.AlignLeft | Qt.AlignVCenter,
                             index.data(Qt.DisplayRole))
            painter.restore()
            return
        selected = bool(option.state & QStyle.State_Selected)
        box = rect.adjusted(2, 1, -2, -1)
        if selected or option.state & QStyle.State_MouseOver:
            colour = pal.color(QPalette.Highlight)
            if not selected:
                colour.setAlpha(40)
            painter.setPen(Qt.NoPen)
            painter.setBrush(colour)
            painter.drawRoundedRect(box, 6, 6)
        text = pal.color(QPalette.HighlightedText if selected else QPalette.Text)
        muted = QColor(text)
        muted.setAlpha(150)
        inner = box.adjusted(self.PAD, 6, -self.PAD, -6)
        title_rect = QRect(inner.left(), inner.top(), inner.width(), fm.height())
        if index.data(PINNED):  # a pin at the end of the title line
            size = fm.height() - 2
            pin = icons.icon("pin").pixmap(size, size)
            painter.drawPixmap(inner.right() - size, inner.top() + 1, pin)
            title_rect.setRight(inner.right() - size - 4)
        painter.setFont(option.font)
        painter.setPen(text)
        title = fm.elidedText(index.data(Qt.DisplayRole) or "", Qt.ElideRight, title_rect.width())
        painter.drawText(title_rect, Qt.AlignLeft | Qt.AlignVCenter, title)
        updated = index.data(UPDATED)
        if updated:
            small = QFont(option.font)
            small.setPointSizeF(small.pointSizeF() * 0.85)
            painter.setFont(small)
            painter.setPen(muted)
            painter.drawText(QRect(inner.left(), title_rect.bottom() + 2, inner.width(), fm.height()),
                             Qt.AlignLeft | Qt.AlignVCenter, when(updated))
        painter.restore()

    def updateEditorGeometry(self, editor, option, index) -> None:
        """Renaming in place: the field over the title line."""
        box = option.rect.adjusted(4, 3, -4, 0)
        editor.setGeometry(box.left(), box.top(), box.width(), option.fontMetrics.height() + 8)


class ChatList(QListWidget):
    """The chats (their ids as Qt.UserRole), under headings by date when `grouped`."""

    def __init__(self):
        super().__init__()
        self.setItemDelegate(ChatListDelegate(self))
        self.setMouseTracking(True)  # (the row under the mouse is lit)
        self.setObjectName("chatList")

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
            item = QListWidgetItem(c.title)
            item.setData(Qt.UserRole, c.id)
            item.setData(UPDATED, c.updated)
            item.setData(PINNED, c.pinned)
            item.setData(Qt.AccessibleTextRole, f"{c.title}, {when(c.updated)}" + (f", {tr('Pinned')}" if c.pinned else ""))
            item.setFlags(item.flags() | Qt.ItemIsEditable)
            self.addItem(item)
            if c.id == current:
                self.setCurrentItem(item)
        self.blockSignals(False)

    def say(self, text: str) -> None:
        """A line of text in the list, not a chat (a search without hits says so)."""
        self.addItem(self._heading(text))

    @staticmethod
    def _heading(text: str) -> QListWidgetItem:
        head = QListWidgetItem(text)
        head.setFlags(Qt.NoItemFlags)
        head.setData(Qt.AccessibleDescriptionRole, "heading")
        return head

    def item_for(self, conv_id) -> QListWidgetItem | None:
        return next((self.item(i) for i in range(self.count()) if self.item(i).data(Qt.UserRole) == conv_id), None)

    def first_chat(self) -> QListWidgetItem | None:
        return next((self.item(i) for i in range(self.count()) if self.item(i).data(Qt.UserRole) is not None), None)


class Composer(QPlainTextEdit):
    """Where a message is written: grows with the text (up to 8 lines), sends on Enter (Shift+Enter:
    a new line) or on Ctrl+Enter, as the setting `send_key` says; Esc stops a reply being written;
    Up while it is empty asks to edit the last question (as messengers do)."""

    send = Signal()
    stop = Signal()
    edit_last = Signal()

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
        if key == Qt.Key_Up and not mods and self.document().isEmpty():
            self.edit_last.emit()
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


class MessageActions(QFrame):
    """The actions of one message, shown under its bubble while the mouse is over it: copy, edit
    (a question) or regenerate (an answer), delete. The same are in the message's context menu,
    and the keyboard has shortcuts for the last ones (ChatPage: Ctrl+Shift+C, Up)."""

    triggered = Signal(str, int)  # the action ("copy", "edit", "regen", "delete"), the message's position

    ACTIONS = (("copy", "copy", "Copy"), ("edit", "rename", "Edit"), ("regen", "regenerate", "Regenerate"),
               ("delete", "delete", "Delete"))

    def __init__(self, parent):
        super().__init__(parent, objectName="messageActions")
        from roost.gui import icons

        self.position: int | None = None
        row = QHBoxLayout(self)
        row.setContentsMargins(0, 0, 0, 0)
        row.setSpacing(2)
        self.buttons: dict[str, QToolButton] = {}
        for action, icon_name, label in self.ACTIONS:
            b = QToolButton(self, autoRaise=True, toolTip=tr(label), accessibleName=tr(label))
            b.setIconSize(QSize(15, 15))
            b.setFocusPolicy(Qt.NoFocus)  # (no tab stop per message: ChatPage's keys)
            icons.give(b, icon_name)
            b.clicked.connect(lambda _checked=False, a=action: self._trigger(a))
            row.addWidget(b)
            self.buttons[action] = b
        self.hide()

    def _trigger(self, action: str) -> None:
        if self.position is not None:
            self.triggered.emit(action, self.position)

    def set_message(self, role: str, position: int, busy: bool) -> None:
        """Show the actions of this message (while a reply is written only copy can be used)."""
        self.position = position
        self.buttons["edit"].setVisible(role == "user")
        self.buttons["regen"].setVisible(role != "user")
        for action in ("edit", "regen", "delete"):
            self.buttons[action].setEnabled(not busy)
        self.adjustSize()


class ChatView(QTextBrowser):
    """The conversation: rich text whose images (avatars) come from `images`, not from files.

    `messages` are the StoredMessages drawn, in order: each is one top-level table of the document,
    which is how the message under the mouse is found (its actions, `MessageActions`, are shown
    under its bubble)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.images: dict[str, QImage] = {}
        self.tail_start: int | None = None  # where the last message begins in the document
        self.messages: list = []  # the messages drawn (a StoredMessage each: position, role, versions)
        self.writing: int | None = None  # the id of a message being written: no actions over it
        self.busy = False  # a reply is being written: the actions that change the chat wait
        self.actions = MessageActions(self.viewport())
        self.hovered: int | None = None  # the index in `messages` whose actions are shown
        self.viewport().setMouseTracking(True)
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

    def message_html(self, m, content: str, thought: str, *, expanded: bool, interrupted: bool = False) -> str:
        """One message (a StoredMessage `m`, showing `content` and `thought`): its bubble and its
        thought, folded unless `expanded` (its actions are `MessageActions`, over it on hover);
        `interrupted`: a reply cut off when Roost ended (said under its text)."""
        palette = self.colours()
        body, _code = render.markdown_html(content, palette, f"{m.position}-")
        if interrupted:
            body += (f'<p style="color:{palette.muted};"><i>'
                     f'{html.escape(tr("Interrupted: Roost closed before this reply was finished."))}</i></p>')
        thought_html = ""
        if thought:
            if expanded:
                inner, _ = render.markdown_html(thought, palette, f"{m.position}t-")
                thought_html = (f'<p style="color:{palette.muted};"><i>{tr("Thinking")}</i> '
                                f'<a href="roost:think/{m.position}">{tr("hide")}</a></p>'
                                f'<div style="color:{palette.muted};">{inner}</div><hr>')
            else:
                # (its length in characters, which mean the same in every language; words do not)
                size = tr("Thinking ({n} characters)", n=f"{len(''.join(thought.split())):,}")
                thought_html = (f'<p style="color:{palette.muted};"><i>{size}'
                                f'</i> <a href="roost:think/{m.position}">{tr("show")}</a></p>')
        versions = None
        if m.versions > 1:  # other versions here: regenerated answers, edited questions
            versions = (m.version, m.versions, f"roost:prev/{m.position}" if m.version > 1 else "",
                        f"roost:next/{m.position}" if m.version < m.versions else "")
        who = tr("You") if m.role == "user" else "RWKV"
        return render.message_html(who=who, role=m.role, body_html=body, palette=palette,
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

    def draw(self, head: list[str], tail: str | None, messages: list | None = None) -> None:
        """The whole conversation: `head` (HTML pieces), then the last message `tail` on its own;
        nothing at all: the hint. `messages`: the messages these draw (one top-level table each)."""
        self.messages = list(messages or [])
        self._hide_actions()
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

    def replace_tail(self, html: str, message=None) -> None:
        """The last message drawn again (as `message`, when another takes its place)."""
        if message is not None and self.messages:
            self.messages[-1] = message
        self._hide_actions()
        cursor = QTextCursor(self.document())
        cursor.setPosition(self.tail_start)
        cursor.movePosition(QTextCursor.End, QTextCursor.KeepAnchor)
        cursor.insertHtml(html)

    def add_tail(self, html: str, message=None) -> None:
        """A message after the last one, which it becomes."""
        self._hide_actions()
        if message is not None:
            self.messages.append(message)
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

    # --- the actions of the message under the mouse --------------------------------------------
    def message_at(self, point: QPoint) -> int | None:
        """The index in `messages` of the message at a point of the viewport (None: none there)."""
        frames = self.document().rootFrame().childFrames()
        if not self.messages or len(frames) != len(self.messages):
            return None  # (not drawn by draw/add_tail: nothing to say)
        layout = self.document().documentLayout()
        y = point.y() + self.verticalScrollBar().value()
        lo, hi = 0, len(frames) - 1
        while lo <= hi:  # the messages are one under another
            mid = (lo + hi) // 2
            rect = layout.frameBoundingRect(frames[mid])
            if y < rect.top():
                hi = mid - 1
            elif y >= rect.bottom():
                lo = mid + 1
            else:
                return mid
        return None

    def bubble_rect(self, index: int) -> QRectF:
        """Where the bubble of `messages[index]` is, in viewport coordinates."""
        frame = self.document().rootFrame().childFrames()[index]
        bubble = next(f for f in frame.childFrames() if isinstance(f, QTextTable))  # (the avatar is a frame too)
        rect = self.document().documentLayout().frameBoundingRect(bubble)
        # (Qt counts a table's own first cell in its position: its padding and border)
        inset = render.BUBBLE_INSET
        return rect.translated(-inset - self.horizontalScrollBar().value(), -inset - self.verticalScrollBar().value())

    def show_actions(self, index: int | None) -> None:
        """Show the actions of `messages[index]` under its bubble (None, or a message being
        written: none)."""
        if index is None or index >= len(self.messages) or self.messages[index].id == self.writing:
            self._hide_actions()
            return
        m = self.messages[index]
        self.hovered = index
        self.actions.set_message(m.role, m.position, self.busy)
        bubble = self.bubble_rect(index)
        skip = 0  # the version switch ("‹ 2/3 ›") keeps its place at the row's start
        if m.versions > 1:
            skip = self.fontMetrics().horizontalAdvance(f"‹ {m.version}/{m.versions} ›") + 10
        size = self.actions.sizeHint()
        x = bubble.right() - skip - size.width() if m.role == "user" else bubble.left() + skip
        self.actions.move(int(max(0, x)), int(bubble.bottom()) + 2)
        self.actions.resize(size)
        self.actions.show()
        self.actions.raise_()

    def _hide_actions(self) -> None:
        self.hovered = None
        self.actions.hide()

    def mouseMoveEvent(self, event) -> None:
        super().mouseMoveEvent(event)
        index = self.message_at(event.position().toPoint())
        if index != self.hovered:
            self.show_actions(index)

    def viewportEvent(self, event) -> bool:
        if event.type() == QEvent.Leave:  # the mouse left the conversation (not for the actions on it)
            inside = self.actions.geometry().contains(self.viewport().mapFromGlobal(QCursor.pos()))
            if not inside:
                self._hide_actions()
        return super().viewportEvent(event)

    def scrollContentsBy(self, dx: int, dy: int) -> None:
        super().scrollContentsBy(dx, dy)
        if self.hovered is not None:  # the message moved: the actions go with it, or to the one now there
            self.show_actions(self.message_at(self.viewport().mapFromGlobal(QCursor.pos())))

    def resizeEvent(self, event) -> None:
        super().resizeEvent(event)
        self._hide_actions()

    def contextMenuEvent(self, event) -> None:
        menu = self.menu_at(event.pos())
        menu.exec(event.globalPos())
        menu.deleteLater()

    def menu_at(self, point: QPoint):
        """The text's menu, and the actions of the message at `point`."""
        menu = self.createStandardContextMenu(point)
        index = self.message_at(point)
        if index is not None and self.messages[index].id != self.writing:
            m = self.messages[index]
            menu.addSeparator()
            for action, _icon, label in MessageActions.ACTIONS:
                if (action == "edit" and m.role != "user") or (action == "regen" and m.role == "user"):
                    continue
                item = menu.addAction(tr(label), lambda a=action, p=m.position: self.actions.triggered.emit(a, p))
                item.setEnabled(action == "copy" or not self.busy)
        return menu
