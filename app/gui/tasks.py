"""Background work for the app: run a function off the UI thread, get its result (or its error)
back on the UI thread. One helper instead of a thread and a bridge signal per feature.

    ctl.tasks.run(probe_machine, on_done=show_machine, on_error=show_problem, name="probe")

The function runs on a plain Python thread (never the engine's worker, which is busy with the
model); callbacks run on the UI thread through a queued Qt signal. An error's traceback goes to the
log; `on_error` gets the exception.
"""

from __future__ import annotations

import logging
import threading
import traceback
from collections.abc import Callable

from PySide6.QtCore import QObject, Signal, Slot

log = logging.getLogger("roost.tasks")


class Tasks(QObject):
    _finished = Signal(object, object)  # callback, value: delivered on the thread this object lives in

    def __init__(self, parent=None):
        super().__init__(parent)
        self._finished.connect(self._deliver)
        self.running: set[str] = set()

    def run(self, fn: Callable[[], object], *, on_done: Callable[[object], None] | None = None,
            on_error: Callable[[BaseException], None] | None = None, name: str = "task") -> threading.Thread:
        def work():
            try:
                value = fn()
            except Exception as e:  # noqa: BLE001 -- handed to on_error on the UI thread, and logged
                log.warning("%s failed: %s", name, traceback.format_exc())
                self._finished.emit(on_error, e)
            else:
                self._finished.emit(on_done, value)
            finally:
                self.running.discard(name)

        self.running.add(name)
        thread = threading.Thread(target=work, name=f"roost-{name}", daemon=True)
        thread.start()
        return thread

    @Slot(object, object)
    def _deliver(self, callback, value) -> None:
        if callback is not None:
            callback(value)
