"""Roost's log file (the data folder's ``roost.log``): the app and the command line write details there
that a user should not have to read in a message (library errors, tracebacks).

A crash that Python cannot catch (a segmentation fault in compiled code, an abort) is written there
too: :mod:`faulthandler` dumps every thread's Python stack into the log file before the process
dies, so that a program that vanished leaves the line of code it died in."""

from __future__ import annotations

import faulthandler
import logging
from logging.handlers import RotatingFileHandler
from pathlib import Path

from roost.core import paths

_HANDLER: logging.Handler | None = None


class _LogFile(RotatingFileHandler):
    """The rotating log file, which faulthandler writes into as well: pointed at the new file each
    time the log rotates (it keeps a file descriptor, not a name). Where faulthandler was already
    on (``python -X faulthandler``, PYTHONFAULTHANDLER, a test runner), it stays where it was."""

    dumps = False

    def crash_dumps_here(self) -> None:
        if not self.dumps and faulthandler.is_enabled():
            return
        if self.stream is None:
            self.stream = self._open()
        faulthandler.enable(file=self.stream, all_threads=True)
        self.dumps = True

    def doRollover(self) -> None:
        super().doRollover()
        if self.dumps:
            self.crash_dumps_here()


def log_file() -> Path:
    return paths.data_dir() / "roost.log"


def setup_logging() -> Path | None:
    """Send INFO and above to the log file (once per process), and a fatal crash's Python stacks
    (faulthandler). Returns the file, or None when the data folder cannot be written (then nothing
    is logged, and nothing fails)."""
    global _HANDLER
    if _HANDLER is not None:
        return Path(_HANDLER.baseFilename)
    path = log_file()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handler = _LogFile(path, maxBytes=1_000_000, backupCount=2, encoding="utf-8")
        handler.crash_dumps_here()
    except OSError:
        return None
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    _HANDLER = handler
    return path
