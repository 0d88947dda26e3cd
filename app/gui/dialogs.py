"""Questions asked of the user, in one place (tests answer them by replacing `confirm`)."""

from __future__ import annotations

from PySide6.QtWidgets import QFileDialog, QMessageBox, QWidget

from roost.gui.i18n import tr


def confirm(parent: QWidget, title: str, text: str) -> bool:
    return QMessageBox.question(parent, title, text) == QMessageBox.Yes


def choose_model_file(parent: QWidget) -> str:
    """A model file the user picks ("" when they cancel)."""
    path, _ = QFileDialog.getOpenFileName(parent, tr("Choose an RWKV model file"), "",
                                          tr("RWKV models (*.pth *.safetensors)"))
    return path
