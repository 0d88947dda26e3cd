"""A chat page's conversations: the list beside the chat (search, pin, rename, delete and undo),
choosing one, starting a new one, and what each chat keeps while another is open: its unsent text
and the question being edited. A mixin of `ChatPage` (it uses its controller, list, message box and
view)."""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtGui import QTextCursor

from roost.gui.i18n import tr

PAGE = 100  # messages shown at first in a long chat, and added by each "show earlier"


class ChatConversations:
    def reload_list(self) -> None:
        """The chats, pinned first, then grouped by when they last changed (a search lists the best
        matches first, without groups)."""
        query = self.search.text().strip()
        found = self.ctl.store.list(query)
        self.list.fill(found, self.conv_id, grouped=not query)
        if query and not found:  # a search without hits says so, rather than showing nothing
            self.list.say(tr("No chat contains “{query}”.", query=query))
        if self.conv_id is None:
            first = self.list.first_chat()
            if first is not None:
                self.list.setCurrentItem(first)
            else:
                self.render()

    def _item_for(self, conv_id):
        return self.list.item_for(conv_id)

    def _list_menu(self, pos) -> None:
        from PySide6.QtWidgets import QMenu

        item = self.list.itemAt(pos)
        conv = self.ctl.store.get(item.data(Qt.UserRole)) if item is not None and item.data(Qt.UserRole) else None
        if conv is None:
            return
        menu = QMenu(self)
        menu.addAction(tr("Unpin") if conv.pinned else tr("Pin"), lambda: self.pin_chat(conv.id, not conv.pinned))
        menu.addAction(tr("Rename"), lambda: self.list.editItem(item))
        menu.addAction(tr("Export…"), self.export)
        menu.addAction(tr("Delete"), self.delete_chat)
        self.list.setCurrentItem(item)
        menu.exec(self.list.viewport().mapToGlobal(pos))

    def pin_chat(self, conv_id: int, on: bool = True) -> None:
        self.ctl.store.pin(conv_id, on)
        self.reload_list()

    def _renamed_inline(self, item) -> None:
        conv_id = item.data(Qt.UserRole)
        if conv_id is None:
            return
        title = item.text().strip()
        if title:
            self.ctl.store.rename(conv_id, title)
        self.reload_list()

    def _on_select(self, item, _prev=None) -> None:
        if item is None or self.rid is not None:
            return
        if item.data(Qt.UserRole) == self.conv_id:
            return
        self._keep_draft()
        self.conv_id = item.data(Qt.UserRole)
        self.expanded, self.shown = set(), PAGE
        self._show_draft()
        self.persona.show_for(self.conv_id)
        self.update_controls()
        self.render()

    # --- drafts: each chat keeps what was typed in it, and the question being edited -------------
    def _keep_draft(self) -> None:
        if self.conv_id is None:
            return
        text = self.input.toPlainText()
        if text.strip() or self.edit_pos is not None:
            self.drafts[self.conv_id] = (text, self.edit_pos)
        else:
            self.drafts.pop(self.conv_id, None)

    def _show_draft(self) -> None:
        text, pos = self.drafts.pop(self.conv_id, ("", None)) if self.conv_id is not None else ("", None)
        self.input.setPlainText(text)
        self.input.moveCursor(QTextCursor.End)
        self._editing(pos)

    def _editing(self, pos: int | None) -> None:
        """Whether the message box edits the question at `pos` (None: it writes a new one)."""
        self.edit_pos = pos
        self.edit_hint.setVisible(pos is not None)

    def escape(self) -> None:
        """Esc in the message box: stops a reply being written, else cancels an edit (the box empties)."""
        if self.rid is not None:
            self.stop()
        elif self.edit_pos is not None:
            self._editing(None)
            self.input.clear()

    def new_chat(self) -> None:
        if self.rid is not None:
            return
        conv = self.ctl.store.new(tr("New chat"))
        self.persona.apply_to(conv.id)  # the menu's choice
        self._keep_draft()
        self.conv_id = conv.id
        self._show_draft()
        self.reload_list()
        self.render()
        self.input.setFocus()

    def rename_chat(self) -> None:
        item = self._item_for(self.conv_id) if self.conv_id else None
        if item is not None:
            self.list.editItem(item)  # in place; Enter keeps the new title

    def delete_chat(self) -> None:
        """Delete the open chat at once; Undo (beside the list) brings it back until Roost closes."""
        if self.conv_id is None or self.rid is not None:
            return
        conv = self.ctl.store.get(self.conv_id)
        self.ctl.store.delete(self.conv_id)
        self.ctl.forget(self.conv_id)
        self.drafts.pop(self.conv_id, None)
        self.context_of.pop(self.conv_id, None)
        self.input.clear()
        self._editing(None)
        self.deleted, self.conv_id = self.conv_id, None
        self.undo_label.setText(tr("Deleted “{title}”.", title=conv.title if conv else ""))
        self.undo_bar.show()
        self.reload_list()

    def undo_delete(self) -> None:
        if self.deleted is None:
            return
        self.ctl.store.restore(self.deleted)
        self.conv_id, self.deleted = self.deleted, None
        self.undo_bar.hide()
        self.reload_list()
        self.render()
