"""The window's background tasks: results and errors come back on the UI thread."""

from __future__ import annotations

import threading


def test_results_and_errors_arrive_on_the_ui_thread(qtbot, window):
    win = window()
    got = []

    def work():
        return threading.current_thread().name

    win.ctl.tasks.run(work, on_done=lambda v: got.append(("done", v, threading.current_thread().name)), name="t1")
    win.ctl.tasks.run(lambda: 1 / 0, on_error=lambda e: got.append(("error", type(e).__name__,
                                                                  threading.current_thread().name)), name="t2")
    qtbot.waitUntil(lambda: len(got) == 2, timeout=5000)
    ui = threading.current_thread().name
    assert ("done", "roost-t1", ui) in got and ("error", "ZeroDivisionError", ui) in got
    assert not win.ctl.tasks.running


def test_no_page_starts_threads_of_its_own():
    """Background work goes through the controller's Tasks (or the engine's worker, the download queue)."""
    from pathlib import Path

    gui = Path(__file__).resolve().parents[2] / "app" / "gui"
    offenders = [p.name for p in gui.glob("*.py") if p.name != "tasks.py" and "threading.Thread(" in p.read_text()]
    assert offenders == []


def test_an_unexpected_engine_failure_is_said_plainly(qtbot, caplog):
    from roost.gui.worker import EngineWorker

    class Broken:
        def load(self, *a, **k):
            raise RuntimeError("internal detail 0x1234")

    worker = EngineWorker(Broken())
    said = []
    worker.loadFailed.connect(said.append)
    worker.load("/models/x.pth", "cpu fp32")
    assert said and "details are in the log" in said[0] and "0x1234" not in said[0]
    assert "internal detail 0x1234" in caplog.text
