"""Start the desktop app: the window first, then (after it is shown) the engine thread, the download
queue and the machine probe, which import torch and take a moment."""

from __future__ import annotations

import logging
import sys

from roost.core.logs import setup_logging


def create_window(start_engine: bool = True):
    """The main window, shown, with the heavy parts started right after (from the event loop)."""
    from PySide6.QtCore import QTimer
    from PySide6.QtWidgets import QApplication

    from roost.gui.i18n import set_language
    from roost.core.settings import SettingsStore, apply_proxy
    from roost.gui.theme import apply_theme
    from roost.gui.window import MainWindow

    app = QApplication.instance() or QApplication(sys.argv)
    app.setApplicationName("Roost")
    app.setDesktopFileName("roost")
    set_app_icon(app)
    # Qt calls back into Python (models, paint code) many times while it lays out or paints, and each
    # call waits for the GIL; with the default 5 ms switch interval a worker busy in Python (loading a
    # model) made one repaint of the Models table wait ~200 ms. At 0.5 ms: ~50 ms (benchmarks/ui_bench.py).
    sys.setswitchinterval(0.0005)
    store = SettingsStore()
    settings = store.current
    set_language(settings.language or default_language())
    apply_theme(app, settings.theme)
    follow_system_theme(app)
    add_cjk_font()
    apply_proxy(settings.proxy)
    win = MainWindow(settings=store)
    ctl = win.ctl
    ctl.modelChanged.connect(lambda: tenure() if ctl.info is not None else None)  # a model just loaded
    ctl.catalogChanged.connect(lambda _catalog: tenure())  # start-up is over: imports and catalog stay
    if store.notice:  # the settings file was damaged (kept aside) or held values Roost cannot use
        ctl.show_error(store.notice)
    win.show()
    keep_gc_on_ui_thread(app)
    if start_engine:
        QTimer.singleShot(0, lambda: start_background(ctl))
    return win


def follow_system_theme(app) -> None:
    """With the theme setting "system", switch between light and dark when the system does."""
    hints = app.styleHints()
    if not hasattr(hints, "colorSchemeChanged") or getattr(app, "_roost_follows", False):
        return
    app._roost_follows = True

    def changed(_scheme) -> None:
        from roost.core.settings import load_settings
        from roost.gui.theme import apply_theme

        if load_settings().theme == "system":
            apply_theme(app, "system")

    hints.colorSchemeChanged.connect(changed)


def set_app_icon(app) -> None:
    """The window and task-bar icon (assets/icons/roost.png); none if it is missing."""
    from PySide6.QtGui import QIcon, QPixmap

    from roost.core.paths import asset

    try:
        data = asset("icons/roost.png").read_bytes()
    except (OSError, ModuleNotFoundError):
        return
    pixmap = QPixmap()
    if pixmap.loadFromData(data):
        app.setWindowIcon(QIcon(pixmap))


def add_cjk_font(data: bytes | None = None) -> str | None:
    """Where the system has no font for Chinese (a bare Linux desktop), use the one the Linux bundle
    carries (packaging/cjk_font.py): its family name, or None when it is not needed or not there."""
    from PySide6.QtGui import QFont, QFontDatabase

    if QFontDatabase.families(QFontDatabase.WritingSystem.SimplifiedChinese):
        return None
    if data is None:
        from roost.core.paths import asset

        try:
            data = asset("fonts/roost-cjk.otf").read_bytes()
        except (OSError, ModuleNotFoundError):
            return None
    font_id = QFontDatabase.addApplicationFontFromData(data)
    families = QFontDatabase.applicationFontFamilies(font_id) if font_id >= 0 else []
    if not families:
        return None
    for family in {QFont().defaultFamily(), QFont().family(), "Sans Serif", "sans-serif"}:
        QFont.insertSubstitutions(family, families)  # Chinese in any widget falls back to it
    return families[0]


def keep_gc_on_ui_thread(app) -> None:
    """Run Python's cyclic garbage collector on the UI thread only, on a timer.

    Why not automatic collection: CPython collects in whichever thread happens to allocate past the
    threshold, and the engine's worker allocates the most (loading, generating). When a collection
    frees a reference cycle that holds the Python wrapper of a Qt object that Python owns (a widget
    or timer without a C++ parent, kept alive only by the cycle; cycles form readily, e.g. an
    exception's traceback holding the frame of a method of that object), PySide deletes the C++
    object right there, in the collecting thread, and Qt requires objects to be deleted in the
    thread they live in: a crash seen in CI while a page was loading. Making every such cycle
    impossible cannot be checked, so the collector is kept on the UI thread instead; the Qt-free
    core (Runtime, engine) never collects and frees models by reference counting.

    Why freezing: a full pass over what torch, Qt and Python hold (~170k objects) takes ~130 ms,
    which is a visible stall on the UI thread. `tenure()` moves the long-lived objects (start-up
    imports, a loaded model's) out of the collector's sight after start-up and after each load, so
    later passes only walk what is new (0-10 ms)."""
    import gc

    from PySide6.QtCore import QTimer

    gc.disable()
    if getattr(app, "_roost_gc", None) is not None:
        return

    def collect():
        counts, limits = gc.get_count(), gc.get_threshold()
        for gen in (2, 1, 0):
            if counts[gen] > limits[gen]:
                gc.collect(gen)
                break

    timer = QTimer(app, interval=500, timeout=collect)
    timer.start()
    app._roost_gc = timer


def tenure() -> None:
    """Take every object alive now out of later collections (see keep_gc_on_ui_thread): they are
    the app's long-lived ones. Objects frozen are still freed by reference counting."""
    import gc

    gc.freeze()


def default_language() -> str:
    import locale
    import os

    lang = os.environ.get("LC_ALL") or os.environ.get("LANG") or ""
    if not lang:
        try:
            lang = locale.getlocale()[0] or ""
        except ValueError:
            lang = ""
    return "zh" if lang.lower().startswith("zh") else "en"


def start_background(ctl) -> None:
    """The engine thread, the download queue and the machine probe (which imports torch)."""
    from roost.core.queue import DownloadQueue
    from roost.core.runtime import Runtime
    from roost.gui.worker import EngineThread

    ctl.attach_engine(EngineThread(ctl, runtime=Runtime(ctl.settings.current.load_options(), mark_loads="app")))  # owns its process
    from roost.engine import threads

    threads.configure(ctl.settings.current.threads)  # (the app owns its process: Settings may change it)
    ctl.owns_threads = True
    s = ctl.settings.current
    ctl.attach_queue(DownloadQueue(s.models_folder(), source=s.download_source(), token=s.token()))
    folder = s.models_folder()

    def probe():
        from roost.core.catalog import load_catalog
        from roost.core.hardware import probe as probe_machine

        folder.mkdir(parents=True, exist_ok=True)
        return probe_machine(folder), load_catalog()

    ctl.tasks.run(probe, on_done=lambda result: ctl.set_machine(*result),
                  on_error=lambda e: ctl.show_error(str(e)), name="probe")


def run() -> int:
    try:
        import PySide6  # noqa: F401
    except ImportError:
        print("The desktop app needs PySide6: pip install PySide6 (the command line works without it).\n"
              "桌面程序需要 PySide6：pip install PySide6（命令行不需要）。", file=sys.stderr)
        return 2
    from roost.gui.platform_check import problem

    blocked = problem()  # (Qt would abort the process: say what to install instead)
    if blocked:
        print(blocked, file=sys.stderr)
        return 1
    setup_logging()
    from PySide6.QtWidgets import QApplication

    win = create_window()
    code = QApplication.instance().exec()
    if win.ctl.engine is not None and win.ctl.engine.thread.isRunning():
        import os  # a model still loading cannot be interrupted: leave without waiting for it

        logging.getLogger("roost").warning("exiting while the engine is busy")
        logging.shutdown()
        os._exit(code)
    return code
