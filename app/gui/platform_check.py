"""Before Qt starts on Linux: can its X11 platform plugin load? Qt aborts the process (exit 134,
a core dump and a line about "xcb-cursor0") when a library the plugin needs is missing; a bare
Debian 12 lacked libxcb-icccm4 and libxcb-keysyms1. Roost looks first (ldd on the plugin, which
lists every library it needs, its own Qt ones included) and, when some are missing, says which
packages to install and exits 1. No Qt is imported here."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

# library -> (Debian / Ubuntu package, Fedora package)
PACKAGES = {
    "libxcb-cursor.so.0": ("libxcb-cursor0", "xcb-util-cursor"),
    "libxcb-icccm.so.4": ("libxcb-icccm4", "xcb-util-wm"),
    "libxcb-keysyms.so.1": ("libxcb-keysyms1", "xcb-util-keysyms"),
    "libxcb-image.so.0": ("libxcb-image0", "xcb-util-image"),
    "libxcb-render-util.so.0": ("libxcb-render-util0", "xcb-util-renderutil"),
    "libxcb-util.so.1": ("libxcb-util1", "xcb-util"),
    "libxkbcommon-x11.so.0": ("libxkbcommon-x11-0", "libxkbcommon-x11"),
    "libxkbcommon.so.0": ("libxkbcommon0", "libxkbcommon"),
    "libX11-xcb.so.1": ("libx11-xcb1", "libX11-xcb"),
    "libX11.so.6": ("libx11-6", "libX11"),
    "libEGL.so.1": ("libegl1", "libglvnd-egl"),
    "libGL.so.1": ("libgl1", "libglvnd-glx"),
    "libOpenGL.so.0": ("libopengl0", "libglvnd-opengl"),
    "libfontconfig.so.1": ("libfontconfig1", "fontconfig"),
    "libfreetype.so.6": ("libfreetype6", "freetype"),
    "libdbus-1.so.3": ("libdbus-1-3", "dbus-libs"),
    "libglib-2.0.so.0": ("libglib2.0-0", "glib2"),
}
# the rest of xcb's libraries: libxcb-NAME.so.N comes in libxcb-NAMEN (Debian) and libxcb (Fedora)
_XCB = re.compile(r"libxcb(-[a-z-]+)?\.so\.(\d+)$")


def packages_for(library: str) -> tuple[str, str]:
    if library in PACKAGES:
        return PACKAGES[library]
    m = _XCB.match(library)
    if m:
        return f"libxcb{m.group(1) or ''}{m.group(2)}", "libxcb"
    stem = library.split(".so")[0]
    return stem, stem


def xcb_plugin() -> Path | None:
    """Qt's X11 platform plugin in the PySide6 that this Roost uses (a bundle's too)."""
    try:
        import PySide6
    except ImportError:
        return None
    plugin = Path(PySide6.__file__).parent / "Qt" / "plugins" / "platforms" / "libqxcb.so"
    return plugin if plugin.is_file() else None


def _ldd(path: Path) -> str | None:
    ldd = shutil.which("ldd")
    if ldd is None:
        return None
    try:
        return subprocess.run([ldd, str(path)], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return None


def missing_libraries(plugin: Path, ldd: Callable[[Path], str | None] = _ldd) -> list[str]:
    """The libraries `plugin` needs that the dynamic loader does not find ([] when ldd cannot say)."""
    out = ldd(plugin) or ""
    return sorted({m.group(1) for m in re.finditer(r"^\s*(\S+)\s+=>\s+not found", out, re.M)})


def uses_xcb(env: Mapping[str, str]) -> bool:
    """Whether Qt will start with its X11 plugin: on Linux, unless told another platform
    (QT_QPA_PLATFORM: offscreen in tests, wayland) or in a Wayland session."""
    if not sys.platform.startswith("linux"):
        return False
    chosen = env.get("QT_QPA_PLATFORM", "").strip().lower()
    if chosen:
        return chosen.split(";")[0].split(":")[0] == "xcb"
    return env.get("XDG_SESSION_TYPE", "").lower() != "wayland" or not env.get("WAYLAND_DISPLAY")


def problem(env: Mapping[str, str] | None = None, plugin: Path | None = None,
            ldd: Callable[[Path], str | None] = _ldd) -> str | None:
    """What keeps the window from opening, in words with the fix (English and Chinese); None
    when nothing does, or when it cannot be told (no ldd, no plugin)."""
    env = os.environ if env is None else env
    if not uses_xcb(env):
        return None
    plugin = plugin or xcb_plugin()
    if plugin is None:
        return None
    missing = missing_libraries(plugin, ldd)
    if not missing:
        return None
    debian = " ".join(dict.fromkeys(packages_for(lib)[0] for lib in missing))
    fedora = " ".join(dict.fromkeys(packages_for(lib)[1] for lib in missing))
    libs = ", ".join(missing)
    return (f"Roost's window cannot open: Qt's X11 platform plugin needs libraries this system does not have "
            f"({libs}). Install them, then start Roost again:\n"
            f"  Debian / Ubuntu:  sudo apt install {debian}\n"
            f"  Fedora:           sudo dnf install {fedora}\n"
            f"The command line works without them (roost --help).\n"
            f"Roost 的窗口无法打开：Qt 的 X11 平台插件需要本系统缺少的库（{libs}）。请先安装，再启动 Roost：\n"
            f"  Debian / Ubuntu：sudo apt install {debian}\n"
            f"  Fedora：sudo dnf install {fedora}\n"
            f"命令行不需要这些库（roost --help）。")
