"""Loads that ended their program: a mark per loading process in the data folder.

Before a model starts loading, its process writes ``loads/<pid>.json`` (the model, the strategy,
the program, when); whatever way the load ends in Python (loaded, refused, an exception, Ctrl+C)
the mark is removed. A mark whose process is gone therefore means that the process died while it
was loading: a crash in compiled code (a segmentation fault), the operating system killing it for
memory, or a forced close. The app then does not load that model again by itself on its next
start, and says which model and strategy it was, offering another strategy
(roost.gui.controller); the command line says it too. Qt-free.

    with marked_load(path, "cpu int8", program="app"):
        model = engine.load_model(path, "cpu int8")
    for load in unfinished():          # next start: loads that never came back
        ...; forget(load)
"""

from __future__ import annotations

import json
import logging
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from roost.core import paths

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class UnfinishedLoad:
    path: str  # the model file
    strategy: str
    program: str  # "app", "serve", "chat", "generate", ...
    started: float  # time.time() when the load began
    mark: Path  # the mark file (forget() removes it)

    @property
    def name(self) -> str:
        return Path(self.path).name


def marks_folder() -> Path:
    return paths.data_dir() / "loads"


def _process_start(pid: int) -> float | None:
    """When process ``pid`` started (None: there is no such process)."""
    import psutil

    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess, ValueError):
        return None


@contextmanager
def marked_load(path: str | os.PathLike, strategy: str, *, program: str, folder: Path | None = None):
    """Mark a load for as long as the ``with`` block runs. A data folder that cannot be written
    only means no mark (logged): the load goes on."""
    folder = folder or marks_folder()
    mark = folder / f"{os.getpid()}.json"
    record = {"path": str(path), "strategy": strategy, "program": program, "started": time.time(),
              "pid": os.getpid(), "process_started": _process_start(os.getpid())}
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tmp = mark.with_suffix(".tmp")
        tmp.write_text(json.dumps(record), encoding="utf-8")
        os.replace(tmp, mark)
    except OSError as e:
        log.warning("could not mark the load of %s: %s", path, e)
        mark = None
    try:
        yield
    finally:
        if mark is not None:
            try:
                mark.unlink()
            except OSError as e:
                log.warning("could not remove the load mark %s: %s", mark, e)


def unfinished(folder: Path | None = None) -> list[UnfinishedLoad]:
    """Loads whose process ended before they did, oldest first (loads still going on in a running
    process are not among them; a mark that cannot be read is removed)."""
    folder = folder or marks_folder()
    out = []
    try:
        marks = sorted(folder.glob("*.json"))
    except OSError:
        return []
    for mark in marks:
        try:
            r = json.loads(mark.read_text(encoding="utf-8"))
            pid, began = int(r["pid"]), r.get("process_started")
            load = UnfinishedLoad(str(r["path"]), str(r["strategy"]), str(r.get("program", "")),
                                  float(r.get("started", 0.0)), mark)
        except (OSError, ValueError, KeyError, TypeError):
            _remove(mark)
            continue
        now_started = _process_start(pid)
        # the same process still running (a pid taken again later by another program is not it)
        if now_started is not None and (began is None or abs(now_started - float(began)) < 1.0):
            continue
        out.append(load)
    return sorted(out, key=lambda u: u.started)


def forget(load: UnfinishedLoad) -> None:
    """Said once: remove its mark."""
    _remove(load.mark)


def _remove(mark: Path) -> None:
    try:
        mark.unlink()
    except OSError:
        pass


def other_strategy(strategy: str) -> str | None:
    """A simpler way to run a model whose load with ``strategy`` ended the program: the plain
    PyTorch path in 16 bits on the CPU for anything converted or on a GPU, float32 for bf16; None
    for `cpu fp32`, the simplest there is. (The memory check still refuses what would not fit.)"""
    from roost.engine.errors import StrategyError
    from roost.engine.strategy import parse_strategy

    try:
        stages = parse_strategy(strategy).stages
    except StrategyError:
        return "cpu bf16"
    if any(s.device != "cpu" or s.int8 or s.int4 for s in stages):
        return "cpu bf16"
    if any(s.dtype != "fp32" for s in stages):
        return "cpu fp32"
    return None
