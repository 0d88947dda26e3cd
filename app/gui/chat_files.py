"""A chat page's files: the open chat exported as Markdown (readable) or JSON (every version), and
exported chats imported again. A mixin of `ChatPage` (it uses its controller, open chat, list and view)."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QStandardPaths
from PySide6.QtWidgets import QFileDialog

from roost.gui.i18n import tr

_last_folder: list[str] = []  # the folder of the last export or import this session


def start_path(name: str = "") -> str:
    """Where the export and import dialogs open: the last folder used this session, else the
    user's Documents folder (else home), never the program's own folder."""
    if _last_folder:
        folder = Path(_last_folder[-1])
    else:
        docs = QStandardPaths.writableLocation(QStandardPaths.DocumentsLocation)
        folder = Path(docs) if docs and Path(docs).is_dir() else Path.home()
    return str(folder / name) if name else str(folder)


def _used(path: str) -> None:
    _last_folder[:] = [str(Path(path).parent)]


class ChatFiles:
    def export(self) -> None:
        """The open chat as Markdown (readable) or JSON (every version, to import again)."""
        conv = self.ctl.store.get(self.conv_id) if self.conv_id else None
        if conv is None:
            return
        md, js = tr("Markdown (*.md)"), tr("Roost chat (*.json)")
        name = "".join(ch if ch.isalnum() or ch in " -_" else "_" for ch in conv.title).strip() or "chat"
        path, kind = QFileDialog.getSaveFileName(self, tr("Export…"), start_path(name + ".md"), f"{md};;{js}")
        if path:
            _used(path)
            self.export_to(path, json_format=kind == js or path.lower().endswith(".json"))

    def export_to(self, path: str, json_format: bool) -> None:
        store = self.ctl.store
        text = store.export_json([self.conv_id]) if json_format else store.to_markdown(self.conv_id, (tr("You"), "RWKV"))
        try:
            with open(path, "w", encoding="utf-8") as f:
                f.write(text)
        except OSError as e:
            self.ctl.show_error(tr("Could not write {path}: {why}", path=path, why=e.strerror or str(e)))

    def import_chats(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, tr("Import…"), start_path(),
                                              f'{tr("Roost chat (*.json)")};;{tr("Markdown (*.md)")}')
        if path:
            _used(path)
            self.import_from(path)

    def import_from(self, path: str) -> list[int]:
        """Add the chats of an exported file; a file that is not one is refused whole, said plainly."""
        from roost.core.conversations import ConversationFileError

        try:
            with open(path, "rb") as f:
                data = f.read()
            if path.lower().endswith((".md", ".markdown", ".txt")):
                ids = [self.ctl.store.import_markdown(data.decode("utf-8", errors="replace"))]
            else:
                ids = self.ctl.store.import_json(data)
        except (OSError, ConversationFileError) as e:
            self.ctl.show_error(str(e) if isinstance(e, ConversationFileError)
                                else tr("Could not read {path}: {why}", path=path, why=e.strerror or str(e)))
            return []
        if ids:
            self.conv_id = ids[0]
            self.reload_list()
            self.render()
        return ids
