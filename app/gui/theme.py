"""Light and dark themes (Qt's Fusion style with our palette), or the system's."""

from __future__ import annotations

from PySide6.QtGui import QColor, QPalette
from PySide6.QtWidgets import QApplication, QStyleFactory

ACCENT = "#3b7ddd"

_DARK = {
    QPalette.Window: "#202124", QPalette.WindowText: "#e8eaed", QPalette.Base: "#17181a",
    QPalette.AlternateBase: "#26272b", QPalette.Text: "#e8eaed", QPalette.Button: "#2d2e31",
    QPalette.ButtonText: "#e8eaed", QPalette.ToolTipBase: "#2d2e31", QPalette.ToolTipText: "#e8eaed",
    QPalette.Highlight: ACCENT, QPalette.HighlightedText: "#ffffff", QPalette.Link: "#8ab4f8",
    QPalette.PlaceholderText: "#8a8d91",
}
_LIGHT = {
    QPalette.Window: "#f4f5f7", QPalette.WindowText: "#1f2328", QPalette.Base: "#ffffff",
    QPalette.AlternateBase: "#f0f2f5", QPalette.Text: "#1f2328", QPalette.Button: "#e9ebef",
    QPalette.ButtonText: "#1f2328", QPalette.ToolTipBase: "#ffffff", QPalette.ToolTipText: "#1f2328",
    QPalette.Highlight: ACCENT, QPalette.HighlightedText: "#ffffff", QPalette.Link: "#1a5fb4",
    QPalette.PlaceholderText: "#8a8d91",
}

SHEET = """
QListWidget#sidebar { border: none; font-size: 15px; padding-top: 8px; outline: 0; }
QListWidget#sidebar::item { padding: 10px 16px; border-radius: 6px; margin: 2px 6px; }
QListWidget#sidebar::item:selected, QListWidget#sidebar::item:selected:active,
QListWidget#sidebar::item:selected:!active { background: %(accent)s; color: white; border: none; }
QLabel#title { font-size: 20px; font-weight: 600; }
QFrame#banner { background: #f8d7da; border: 1px solid #e0a4aa; border-radius: 6px; margin: 6px; }
QFrame#banner QLabel, QFrame#banner QPushButton { color: #6b1a22; }
QLabel#hint { color: palette(placeholder-text); }
QFrame#card { border: 1px solid palette(mid); border-radius: 8px; background: palette(base); }
QPushButton#primary { background: %(accent)s; color: white; border-radius: 5px; padding: 6px 14px;
                      min-height: 20px; }
QPushButton#primary:disabled { background: palette(button); color: palette(placeholder-text); }
QLineEdit, QPlainTextEdit, QComboBox, QSpinBox, QDoubleSpinBox {
    border: 1px solid palette(mid); border-radius: 6px; padding: 4px 6px; background: palette(base); }
QLineEdit:focus, QPlainTextEdit:focus, QComboBox:focus, QSpinBox:focus, QDoubleSpinBox:focus {
    border: 1px solid %(accent)s; }
QComboBox::drop-down { border: none; width: 22px; }
QComboBox QAbstractItemView { border: 1px solid palette(mid); background: palette(base); color: palette(text);
    selection-background-color: %(accent)s; selection-color: white; outline: 0; }
QComboBox::item:selected { background: %(accent)s; color: white; padding-left: 0px; }
QComboBox::down-arrow { image: url(%(down)s); width: 14px; height: 14px; }
QSpinBox::up-button, QSpinBox::down-button, QDoubleSpinBox::up-button, QDoubleSpinBox::down-button {
    border: none; width: 18px; }
QSpinBox::up-arrow, QDoubleSpinBox::up-arrow { image: url(%(up)s); width: 12px; height: 12px; }
QSpinBox::down-arrow, QDoubleSpinBox::down-arrow { image: url(%(down)s); width: 12px; height: 12px; }
QTextBrowser { border: 1px solid palette(mid); border-radius: 8px; background: palette(base); padding: 4px; }
QListWidget { border: 1px solid palette(mid); border-radius: 8px; background: palette(base); padding: 2px; }
QListWidget#sidebar { background: transparent; }
QListWidget#chatList { outline: 0; }
QListView#modelList { outline: 0; }
"""


def _icon_path(name: str) -> str:
    """A bundled icon's file path for a style sheet ("" if it is not a plain file)."""
    from roost.core.paths import asset

    try:
        path = str(asset("icons/" + name))
    except (OSError, ModuleNotFoundError):
        return ""
    return path.replace("\\", "/")


def is_dark(palette: QPalette) -> bool:
    return palette.color(QPalette.Window).lightness() < 128


def apply_theme(app: QApplication, theme: str) -> str:
    """theme: "light", "dark" or "system". Returns the one applied ("light" or "dark")."""
    app.setStyle(QStyleFactory.create("Fusion"))
    if theme == "system":
        try:
            from PySide6.QtCore import Qt

            scheme = app.styleHints().colorScheme()
            theme = "dark" if scheme == Qt.ColorScheme.Dark else "light"
        except AttributeError:
            theme = "light"
    colors = _DARK if theme == "dark" else _LIGHT
    pal = QPalette()
    for role, color in colors.items():
        pal.setColor(role, QColor(color))
    pal.setColor(QPalette.Disabled, QPalette.Text, QColor("#7f8388"))
    pal.setColor(QPalette.Disabled, QPalette.ButtonText, QColor("#7f8388"))
    app.setPalette(pal)
    app.setStyleSheet(SHEET % {"accent": ACCENT, "down": _icon_path("chevron-down.svg"),
                               "up": _icon_path("chevron-up.svg")})
    restyle(app)
    return theme


def restyle(app) -> None:
    """After a theme change while Roost runs: every icon in the new text colour, and what a window
    draws in colours of its own (the chat's bubbles) drawn again (its ``restyle``)."""
    from roost.gui import icons

    icons.refresh()
    for widget in app.topLevelWidgets():
        again = getattr(widget, "restyle", None)
        if callable(again):
            again()
