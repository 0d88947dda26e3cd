"""The Qt binding installed does not corrupt the interpreter.

PySide6 6.12.0 on Python 3.11 drops a reference to None on every void method called from Python
(QLabel.setText, QApplication.processEvents, QTest.qWait, ...). None's count starts in the tens of
thousands, so the app aborts ("Fatal Python error: none_dealloc") after that many calls: a long
chat session, a screenshot script, a test that waits long. pyproject.toml excludes that release;
this test catches any other that does the same, in a child process (the damage is global). On
Python 3.12+ None is immortal and its count does not move.
"""

from __future__ import annotations

import os
import subprocess
import sys

CHECK = """
import sys
from PySide6.QtCore import QCoreApplication
from PySide6.QtWidgets import QApplication, QLabel
app = QApplication([])
label = QLabel()
before = sys.getrefcount(None)
for _ in range(300):
    label.setText("x")
    QCoreApplication.processEvents()
print(before - sys.getrefcount(None))
"""


def test_void_calls_keep_none_alive():
    r = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "QT_QPA_PLATFORM": "offscreen"})
    assert r.returncode == 0, r.stderr[-2000:]
    lost = int(r.stdout.split()[-1])
    assert lost < 60, f"the Qt binding drops {lost} references to None in 600 calls: pin another PySide6"
