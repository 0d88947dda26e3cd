"""The engine on a background thread. The UI sends requests through queued signals and gets
pieces of text, progress and results back the same way; it never waits on the model.

Stopping does not go through the (busy) worker's event loop: the UI sets the request's StopFlag,
which the generation checks before every token.

Each load and reply runs on a thread of its own that ends with it (roost.engine.threads): the
engine thread lives as long as the window and would otherwise keep an OpenMP worker pool that
slows the local API server's replies (and theirs this one's) 1.5x. The worker's signals are
emitted from that thread: a receiver living in the engine thread would hear them only once the
work ended (the window's controller lives in the UI thread).
"""

from __future__ import annotations

import logging
import traceback

from PySide6.QtCore import QObject, QThread, Signal, Slot

from roost.core.runtime import Runtime
from roost.engine.threads import elsewhere

log = logging.getLogger("roost.worker")


class EngineWorker(QObject):
    loadProgress = Signal(float)
    loaded = Signal(object, str)  # LoadedInfo, explanation of the strategy
    loadFailed = Signal(str)
    unloaded = Signal()
    piece = Signal(int, str)  # request id, text
    reading = Signal(int, int, int)  # request id, prompt tokens read, of how many (long prompts)
    done = Signal(int, object)  # request id, Reply
    failed = Signal(int, str)

    def __init__(self, runtime: Runtime | None = None):
        super().__init__()
        self.runtime = runtime or Runtime()

    @Slot(str, str)
    def load(self, path: str, strategy: str) -> None:
        from roost.engine.errors import RoostError

        try:
            from roost.core.choice import decide_strategy
            from roost.gui.i18n import pick

            choice = decide_strategy(path, strategy or "auto")
            why = pick(choice.reason, choice.reason_zh) if choice.reason else ""
            info = elsewhere(self.runtime.load, path, choice.strategy, progress=self.loadProgress.emit)
            self.loaded.emit(info, why)
        except RoostError as e:
            self.loadFailed.emit(str(e))
        except MemoryError:
            self.loadFailed.emit("The computer ran out of memory while loading the model. Close other "
                                 "programs or choose a smaller model or the 'cpu int8' strategy.\n"
                                 "加载模型时内存不足。请关闭其他程序，或选择更小的模型或 'cpu int8' 运行方式。")
        except Exception:  # noqa: BLE001 -- said plainly to the user, the details logged, never a silent crash
            log.error("load failed: %s", traceback.format_exc())
            self.loadFailed.emit("Loading failed because of an error in Roost; the details are in the log "
                                 "(Settings → Open log).\n加载因 Roost 内部错误而失败，详情见日志（设置 → 打开日志）。")

    @Slot()
    def unload(self) -> None:
        self.runtime.unload()
        self.unloaded.emit()

    @Slot(int, object)
    def chat(self, rid: int, req: dict) -> None:
        self._run(rid, lambda on_piece: self.runtime.chat(
            req["key"], req["history"], req["text"], params=req["params"], system=req.get("system", ""),
            think=req.get("think"), on_piece=on_piece, stop_flag=req["stop"], path=req.get("path"),
            message=req.get("message"), persona=req.get("persona"), on_progress=self._reading(rid)))

    @Slot(int, object)
    def complete(self, rid: int, req: dict) -> None:
        self._run(rid, lambda on_piece: self.runtime.complete(
            req["text"], params=req["params"], on_piece=on_piece, stop_flag=req["stop"],
            on_progress=self._reading(rid)))

    def _reading(self, rid: int):
        """Progress of a long prompt's reading, said as `reading` (a prompt of a chunk or two: nothing)."""
        def said(done: int, total: int) -> None:
            if total > 512:
                self.reading.emit(rid, done, total)
        return said

    def _run(self, rid: int, call) -> None:
        from roost.engine.errors import RoostError

        try:
            reply = elsewhere(call, lambda p: self.piece.emit(rid, p))
            self.done.emit(rid, reply)
        except RoostError as e:
            self.failed.emit(rid, str(e))
        except Exception:  # noqa: BLE001 -- said plainly, the details logged
            log.error("generation failed: %s", traceback.format_exc())
            self.failed.emit(rid, "The reply failed because of an error in Roost; the details are in the log "
                                  "(Settings → Open log).\n回复因 Roost 内部错误而失败，详情见日志（设置 → 打开日志）。")


class EngineThread(QObject):
    """Owns the worker's thread; `worker` signals are connected by the window."""

    requestLoad = Signal(str, str)
    requestUnload = Signal()
    requestChat = Signal(int, object)
    requestComplete = Signal(int, object)

    def __init__(self, parent=None, runtime: Runtime | None = None):
        super().__init__(parent)
        self.thread = QThread()
        self.thread.setObjectName("roost-engine")
        self.worker = EngineWorker(runtime)
        self.worker.moveToThread(self.thread)
        self.requestLoad.connect(self.worker.load)
        self.requestUnload.connect(self.worker.unload)
        self.requestChat.connect(self.worker.chat)
        self.requestComplete.connect(self.worker.complete)
        self.thread.start()

    def stop(self, wait_ms: int = 10000) -> bool:
        self.thread.quit()
        return self.thread.wait(wait_ms)
