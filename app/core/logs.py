"""Roost's log file (the data folder's ``roost.log``): the app and the command line write details there
that a user should not have to read in a message (library errors, tracebacks)."""

from __future__ import annotations

import logging
from logging.handlers import RotatingFileHandler
from pathlib import Path

from roost.core import paths

_HANDLER: logging.Handler | None = None


def log_file() -> Path:
    return paths.data_dir() / "roost.log"


def setup_logging() -> Path | None:
    """Send INFO and above to the log file (once per process). Returns the file, or None when the
    data folder cannot be written (then nothing is logged, and nothing fails)."""
    global _HANDLER
    if _HANDLER is not None:
        return Path(_HANDLER.baseFilename)
    path = log_file()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handler = RotatingFileHandler(path, maxBytes=1_000_000, backupCount=2, encoding="utf-8")
    except OSError:
        return None
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    _HANDLER = handler
    return path
