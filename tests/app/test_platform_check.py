"""Before Qt starts: missing X11 libraries are named with the packages that bring them, instead of
Qt's abort (a bare Debian 12 lacked libxcb-icccm4 and libxcb-keysyms1)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from roost.gui import platform_check as pc
from tests.conftest import ROOT

LDD_BARE_DEBIAN = """\
\tlinux-vdso.so.1 (0x00007ffd)
\tlibQt6XcbQpa.so.6 => /opt/roost/PySide6/Qt/lib/libQt6XcbQpa.so.6 (0x00007f43)
\tlibxcb-cursor.so.0 => /lib/x86_64-linux-gnu/libxcb-cursor.so.0 (0x00007f43)
\tlibxcb-icccm.so.4 => not found
\tlibxcb-keysyms.so.1 => not found
\tlibxcb-xinput.so.0 => not found
\tlibxcb-icccm.so.4 => not found
"""
X11 = {"DISPLAY": ":0"}


def test_missing_libraries_are_named_with_the_packages_for_debian_and_fedora(tmp_path):
    plugin = tmp_path / "libqxcb.so"
    plugin.write_bytes(b"\x7fELF")
    said = pc.problem(X11, plugin, ldd=lambda p: LDD_BARE_DEBIAN if p == plugin else None)
    assert said is not None
    assert "libxcb-icccm.so.4, libxcb-keysyms.so.1, libxcb-xinput.so.0" in said
    assert "sudo apt install libxcb-icccm4 libxcb-keysyms1 libxcb-xinput0" in said
    assert "sudo dnf install xcb-util-wm xcb-util-keysyms libxcb" in said
    assert "roost --help" in said and "请先安装" in said


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the X11 plugin is Linux's")
def test_nothing_is_said_where_qt_will_not_use_x11_or_nothing_is_missing(tmp_path):
    plugin = tmp_path / "libqxcb.so"
    plugin.write_bytes(b"\x7fELF")
    ldd = lambda p: LDD_BARE_DEBIAN  # noqa: E731
    assert pc.problem({"QT_QPA_PLATFORM": "offscreen"}, plugin, ldd) is None  # tests, CI
    assert pc.problem({"QT_QPA_PLATFORM": "wayland"}, plugin, ldd) is None
    assert pc.problem({"XDG_SESSION_TYPE": "wayland", "WAYLAND_DISPLAY": "wayland-0"}, plugin, ldd) is None
    assert pc.problem({"QT_QPA_PLATFORM": "xcb"}, plugin, ldd) is not None
    assert pc.problem(X11, plugin, lambda p: "\tlibxcb.so.1 => /lib/libxcb.so.1 (0x1)\n") is None
    assert pc.problem(X11, plugin, lambda p: None) is None  # no ldd: Qt has its say


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the X11 plugin is Linux's")
def test_roost_exits_1_with_the_packages_instead_of_qts_abort(tmp_path):
    """`roost` (the app) with X11 and a plugin whose libraries are missing: one message, exit 1,
    no Qt window attempted (a fake ldd on PATH says what a bare Debian's says)."""
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "ldd").write_text("#!/bin/sh\ncat <<'EOF'\n" + LDD_BARE_DEBIAN + "EOF\n")
    (fake / "ldd").chmod(0o755)
    env = {"PATH": f"{fake}:/usr/bin:/bin", "DISPLAY": ":99", "HOME": str(tmp_path),
           "ROOST_HOME": str(tmp_path / "home")}
    run = subprocess.run([sys.executable, "-m", "roost"], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 1, run.stderr
    assert "sudo apt install libxcb-icccm4 libxcb-keysyms1" in run.stderr
    assert "Aborted" not in run.stderr and "core dumped" not in run.stderr
