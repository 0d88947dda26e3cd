"""Icons of the app: the Phosphor set through qtawesome (a maintained icon-font package), in the
colour of the current palette's text; an empty icon if qtawesome is missing, never an error."""

from __future__ import annotations

import functools

from PySide6.QtGui import QGuiApplication, QIcon, QPalette

NAMES = {  # what the app calls an action -> the Phosphor icon
    "chat": "ph.chats-circle", "completion": "ph.pencil-simple", "models": "ph.cube", "settings": "ph.gear-six",
    "send": "ph.paper-plane-right", "stop": "ph.stop", "regenerate": "ph.arrow-clockwise",
    "new": "ph.plus", "rename": "ph.pencil-simple", "delete": "ph.trash", "export": "ph.export",
    "import": "ph.upload-simple", "download": "ph.download-simple", "pause": "ph.pause", "resume": "ph.play",
    "cancel": "ph.x", "load": "ph.play", "unload": "ph.eject", "refresh": "ph.arrow-clockwise",
    "file": "ph.file-plus", "sampling": "ph.sliders-horizontal", "undo": "ph.arrow-counter-clockwise",
    "restart": "ph.arrows-clockwise",
    "browse": "ph.folder-open", "log": "ph.file-text", "diagnostics": "ph.clipboard-text", "save": "ph.floppy-disk",
    "generate": "ph.magic-wand", "copy": "ph.copy", "pin": "ph.push-pin",
}


def icon(name: str, *, on_accent: bool = False) -> QIcon:
    """The icon for an action (`on_accent`: white, for the accent-coloured buttons)."""
    app = QGuiApplication.instance()
    colour = "white" if on_accent else (app.palette().color(QPalette.ButtonText).name() if app else "#333333")
    disabled = app.palette().color(QPalette.Disabled, QPalette.ButtonText).name() if app else "#999999"
    return _drawn(NAMES.get(name, name), colour, disabled)


@functools.lru_cache(maxsize=256)
def _drawn(name: str, colour: str, disabled: str) -> QIcon:
    """Drawn once per name and colours (every window and theme change asks again)."""
    import os

    os.environ.setdefault("QT_API", "pyside6")  # qtawesome (through QtPy) must use Roost's binding
    try:
        import qtawesome
    except ImportError:  # pragma: no cover - a broken installation still runs, without icons
        return QIcon()
    try:
        drawn = qtawesome.icon(name, color=colour, color_disabled=disabled)
    except Exception:  # noqa: BLE001 -- an unknown name shows no icon rather than stopping the app
        return QIcon()
    # Kept as plain pixmaps, and qtawesome's caches emptied: its cached icons (a Python icon engine)
    # and QRawFonts, freed at interpreter exit after the QApplication, crashed the process as it ended.
    out = QIcon()
    for size in (16, 24, 32):  # (Qt scales the nearest; active and selected look as normal)
        for mode in (QIcon.Normal, QIcon.Disabled):
            out.addPixmap(drawn.pixmap(size, size, mode), mode)
    del drawn
    font = qtawesome._instance()
    font.icon_cache.clear()
    font.rawfont_cache.clear()
    return out


_given: list = []  # (weak reference to the widget, name, on_accent) for each icon handed out by `give`


def give(widget, name: str, *, on_accent: bool = False) -> None:
    """Set a button's (or list item's) icon, and again whenever the palette changes (`refresh`)."""
    import weakref

    widget.setIcon(icon(name, on_accent=on_accent))
    _given.append((weakref.ref(widget), name, on_accent))


def refresh() -> None:
    """The theme changed: redraw every icon given in the new text colour."""
    alive = []
    for ref, name, on_accent in _given:
        widget = ref()
        if widget is None:
            continue
        try:
            widget.setIcon(icon(name, on_accent=on_accent))
        except RuntimeError:  # its C++ side was deleted
            continue
        alive.append((ref, name, on_accent))
    _given[:] = alive
