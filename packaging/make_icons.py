"""Render the app icon (assets/icons/roost.svg) to the files the app and the bundles use:
assets/icons/roost.png (256 px: the window icon, Linux) and, for the bundles only,
packaging/icons/roost.ico (Windows) and roost.icns (macOS).

    QT_QPA_PLATFORM=offscreen python packaging/make_icons.py

Run it after changing the SVG and commit what it writes (the build does not need it)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
HERE = Path(__file__).resolve().parents[1] / "assets" / "icons"
BUNDLE = Path(__file__).resolve().parent / "icons"


def render(size: int):
    from PySide6.QtCore import Qt
    from PySide6.QtGui import QImage, QPainter
    from PySide6.QtSvg import QSvgRenderer

    image = QImage(size, size, QImage.Format_ARGB32_Premultiplied)
    image.fill(Qt.transparent)
    painter = QPainter(image)
    QSvgRenderer(str(HERE / "roost.svg")).render(painter)
    painter.end()
    return image


def main() -> int:
    from PySide6.QtGui import QGuiApplication

    app = QGuiApplication.instance() or QGuiApplication(sys.argv)  # noqa: F841 -- painting needs one
    render(256).save(str(HERE / "roost.png"))
    BUNDLE.mkdir(exist_ok=True)
    render(256).save(str(BUNDLE / "roost.ico"))
    render(512).save(str(BUNDLE / "roost.icns"))
    for path in (HERE / "roost.png", BUNDLE / "roost.ico", BUNDLE / "roost.icns"):
        print(path.name, path.stat().st_size, "bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
