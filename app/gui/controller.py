"""The application controller: what the app knows and can do, between the pages and the Qt-free core.

Pages receive the controller, never the main window. They call its methods (load a model, start a
download, send a request to the engine, start the API server) and redraw themselves from its
signals. It owns the engine worker, the download queue, the machine facts and catalog, the
conversation store, the settings store and the local API server; the work itself is done by the
Qt-free services in `roost.core` and `roost.engine`, and slow work runs through `Tasks`.

    ctl = Controller()                       # settings and conversations from the data folder
    ctl.attach_engine(EngineThread(ctl))     # after the window shows (torch is a heavy import)
    ctl.modelChanged.connect(page.update_controls)
    ctl.load_model(path)                     # the strategy rule of the settings when none is given
"""

from __future__ import annotations

import itertools
import sqlite3
import logging
import time
from pathlib import Path

from PySide6.QtCore import QObject, Signal

from roost.gui.i18n import split_bilingual, tr
from roost.gui.tasks import Tasks

log = logging.getLogger("roost")


class Controller(QObject):
    modelChanged = Signal()  # a model loaded, unloaded or failed to load
    statusChanged = Signal()  # loading progress, generating, speed or the error changed
    piece = Signal(int, str)  # request id, text: a reply as it is written
    reading = Signal(int, int, int)  # request id, prompt tokens read, of how many (a long prompt)
    done = Signal(int, object)  # request id, Reply
    failed = Signal(int, str)  # request id, what went wrong (said plainly)
    jobChanged = Signal(object)  # a download job changed (delivered on the UI thread)
    libraryChanged = Signal()  # the models folder, the catalog or the machine changed: list again
    catalogChanged = Signal(object)  # list of CatalogModel
    imported = Signal(object)  # Path of a model file just imported into the models folder
    personaImported = Signal(object)  # Path of a state-tuning file (a persona) just imported
    firstRun = Signal(object, object, object)  # machine, recommended model, its Advice: nothing installed
    navigate = Signal(str)  # a page asks for another page: "chat", "completion", "models", "settings"
    closeRequested = Signal()  # a page asks the window to close as the user would (a restart)
    busyChanged = Signal()  # a generation started or ended (controls that need the engine free)
    apiChanged = Signal()  # the API server started, stopped or failed; `api_status` says how
    _job = Signal(object)  # from the download queue's thread; delivered on the UI thread

    def __init__(self, settings=None, store=None, parent=None):
        super().__init__(parent)
        from roost.core import paths
        from roost.core.conversations import open_store
        from roost.core.settings import SettingsStore

        self.settings = settings or SettingsStore()  # the typed settings; .current is a Settings
        self.store, notice = (store, "") if store is not None else open_store(paths.data_dir() / "conversations.sqlite")
        self.tasks = Tasks(self)  # background work whose results come back on the UI thread
        self.states = self._open_states()  # chats' saved model states (None: not kept)
        self.engine = None  # EngineThread, attached after the window is shown
        self.owns_threads = False  # whether the threads setting is this process's to apply (the app's)
        self.queue = None  # DownloadQueue
        self.catalog: list = []
        self.machine = None  # hardware.Machine once probed
        self.info = None  # LoadedInfo of the loaded model
        self.strategy_reason = ""
        self.loading: str | None = None  # file name of the model being loaded
        self.load_fraction = 0.0
        self.generating = False
        self.tps = 0.0  # tokens/s of the running generation
        self.read_fraction: float | None = None  # how much of a long prompt is read (None: not reading)
        self.error: str | None = None
        self.error_action = None  # (button text, callable) offered beside the error, or None
        self.api_server = None  # roost.server.run.ApiServer while it runs
        self.api_status = ""
        self._api_wanted = False
        self._rids = itertools.count(1)
        self._pieces, self._first_piece, self._shown_tps = 0, 0.0, 0.0
        self._advice: dict = {}  # catalog id -> Advice for this machine (depends on nothing else)
        self._recommended = None  # its suggested model
        self.settings.subscribe(self._settings_changed)
        self._job.connect(self._on_job)  # queued: this object lives on the UI thread
        self._watch_models_folder()
        if notice:  # the chats file was damaged (kept aside) or is from a newer Roost
            self.show_error(notice)
        from PySide6.QtCore import QCoreApplication

        app = QCoreApplication.instance()
        if app is not None:  # however the app ends, a running server stops with it
            app.aboutToQuit.connect(self.stop_api)

    def _open_states(self):
        """Saved states beside the conversations file (none for an in-memory store)."""
        from roost.core.saved_states import SavedStates

        path = getattr(self.store, "path", None)
        if path is None or str(path) == ":memory:":
            return None
        try:
            states = SavedStates(path, budget_bytes=self.settings.current.state_budget_mb * 2 ** 20)
            states.prune()  # files of chats deleted since, and what a crash left half-written
            states.evict()
            return states
        except (OSError, sqlite3.Error) as e:  # the chats still work: they re-read their text
            log.warning("saved states unavailable: %s", e)
            return None

    # --- settings ------------------------------------------------------------------------------
    def models_folder(self) -> Path:
        return self.settings.current.models_folder()

    def _watch_models_folder(self) -> None:
        """List again when files come, go or change in the models folder (copied in by hand, a
        copy that finishes, deleted elsewhere): half a second after the last change."""
        from PySide6.QtCore import QFileSystemWatcher, QTimer

        from roost.core.paths import MODEL_SUFFIXES

        if getattr(self, "_watcher", None) is None:
            self._watcher = QFileSystemWatcher(self)
            self._relist = QTimer(self, singleShot=True, interval=500)
            self._relist.timeout.connect(self._folder_changed)
            self._watcher.directoryChanged.connect(lambda _p: self._relist.start())
            self._watcher.fileChanged.connect(lambda _p: self._relist.start())
        watched = self._watcher.directories() + self._watcher.files()
        if watched:
            self._watcher.removePaths(watched)
        folder = self.models_folder()
        if folder.is_dir():
            self._watcher.addPath(str(folder))
            files = [str(p) for p in folder.iterdir() if p.is_file() and p.suffix in MODEL_SUFFIXES]
            if files:
                self._watcher.addPaths(files)

    def _folder_changed(self) -> None:
        self._watch_models_folder()  # (new files are watched too; a file replaced is watched again)
        self.libraryChanged.emit()

    def _settings_changed(self, old, new) -> None:
        from roost.core.settings import apply_proxy

        if self.queue is not None:
            self.queue.configure(models_dir=new.models_folder(), source=new.download_source(), token=new.token())
        if new.proxy != old.proxy:
            apply_proxy(new.proxy)
        if new.state_budget_mb != old.state_budget_mb and self.states is not None:
            self.states.set_budget(new.state_budget_mb * 2 ** 20)
        if new.threads != old.threads and self.owns_threads:
            from roost.engine import threads

            threads.configure(new.threads)
        if new.weight_cache_mb != old.weight_cache_mb and self.runtime is not None:
            self.runtime.options = new.load_options()  # for the next load
        if new.models_folder() != old.models_folder():
            self._watch_models_folder()
        if new.models_folder() != old.models_folder() or new.strategy_overrides != old.strategy_overrides \
                or new.default_strategy != old.default_strategy:
            self.libraryChanged.emit()

    def remember(self, **changes) -> None:
        """Keep the app's own state (last model, window geometry); a failed write is logged only."""
        try:
            self.settings.update(**changes)
        except (OSError, ValueError) as e:
            log.warning("could not save settings: %s", e)

    # --- machine, catalog, downloads -----------------------------------------------------------
    def attach_queue(self, queue) -> None:
        """Show the queue's jobs (its callbacks come from its thread; `jobChanged` is on the UI
        thread) and make it follow the settings: a new folder, source or token applies next time."""
        queue.listen(self._job.emit)
        self.queue = queue

    def _on_job(self, job) -> None:
        self.jobChanged.emit(job)
        if job.state == "done":
            self.libraryChanged.emit()

    def set_machine(self, machine, catalog) -> None:
        """The machine probe finished: list what fits, then start where the user left off (the last
        model) or, with nothing installed, offer the recommended model."""
        from roost.core.catalog import recommend
        from roost.core.library import installed

        self.machine = machine
        self.set_catalog(catalog)
        crashed = self._unfinished_load()
        if not installed(self.models_folder(), catalog):
            model, advice = recommend(catalog, machine)
            self.firstRun.emit(machine, model, advice)
            return
        last = self.settings.current.last_model
        if crashed is not None and last and Path(last) == Path(crashed.path):
            self.remember(last_model="")  # not on later starts either, until a load of it succeeds
            return
        if last and Path(last).is_file() and self.info is None and self.loading is None:
            self.load_model(last)

    def _unfinished_load(self):
        """A load that ended Roost last time (roost.core.loadmarks), said once: which model and
        strategy, with another strategy offered. Returns it (None if there was none)."""
        from roost.core.loadmarks import forget, other_strategy, unfinished

        loads = unfinished()
        for load in loads:
            forget(load)
        if not loads:
            return None
        load = loads[-1]
        log.warning("the last load of %s as %r (%s) did not finish: the program ended during it",
                    load.path, load.strategy, load.program)
        message = tr("Last time Roost ended while loading {name} with the strategy “{strategy}” (it crashed or was "
                     "closed by force; the details are in the log). It was not loaded again. Try another strategy, "
                     "or choose one on the Models page.", name=load.name, strategy=load.strategy)
        other = other_strategy(load.strategy)
        action = None
        if Path(load.path).is_file():
            label = tr("Load with {strategy}", strategy=other) if other else tr("Load again")
            action = (label, lambda: self.load_model(load.path, other or load.strategy))
        self.show_error(message, action=action)
        return load

    def set_catalog(self, catalog) -> None:
        self.catalog = list(catalog)
        self._advice.clear()
        self._recommended = None
        self.catalogChanged.emit(self.catalog)
        self.libraryChanged.emit()

    def recommended(self):
        """The catalog model suggested for this computer (None before the machine is known)."""
        if self.machine is None or not self.catalog:
            return None
        if self._recommended is None:
            from roost.core.catalog import recommend

            self._recommended = recommend(self.catalog, self.machine)[0]
        return self._recommended

    def model_rows(self, every_release: bool = False):
        """The Models page's rows (Qt-free: roost.core.library.model_rows) and the partial downloads."""
        from roost.core.library import model_rows

        return model_rows(self.models_folder(), self.catalog, self.machine, every_release=every_release,
                          advice_cache=self._advice)

    def download(self, model):
        """Queue a catalog model's download; returns its Job (None before the queue exists)."""
        from roost.core.library import from_catalog

        if self.queue is None:
            return None
        return self.queue.add(from_catalog(model))

    def import_model(self, path: str | Path) -> Path | None:
        """Copy (or link) a model file into the models folder; None with the reason shown if refused."""
        from roost.core.library import import_file
        from roost.engine.errors import RoostError

        try:
            inst = import_file(path, self.models_folder(), self.catalog)
        except RoostError as e:
            self.show_error(str(e))
            return None
        self.libraryChanged.emit()
        if inst.persona:  # not a model to load: it is offered in the chat's Persona menu
            self.personaImported.emit(inst.path)
            return None
        self.imported.emit(inst.path)
        return inst.path

    def delete_model(self, path: str | Path) -> None:
        from roost.core.library import delete

        try:
            delete(path, self.models_folder(), self.catalog)
        except OSError as e:  # in use by another program (Windows), no permission, a read-only disk
            log.warning("cannot delete %s: %s", path, e)
            self.show_error(tr("{name} could not be deleted: it may be in use by another program, or "
                               "the folder is read-only. Close that program and try again.", name=Path(path).name))
        self.libraryChanged.emit()

    def refresh_catalog(self, on_finished=None) -> None:
        """Ask the Hub which files still exist, in the background (the network may be slow or blocked)."""
        from roost.core.catalog import refresh_catalog
        from roost.core.sources import MIRROR, endpoints

        settings = self.settings.current
        endpoint = endpoints()[MIRROR] if settings.download_source() == MIRROR else None
        token = settings.token()

        def done(catalog) -> None:
            self.set_catalog(catalog)
            if on_finished:
                on_finished()

        def failed(e: BaseException) -> None:
            from roost.engine.errors import RoostError

            self.show_error(str(e) if isinstance(e, RoostError) else tr(
                "The model list could not be refreshed; the details are in the log."))
            self.libraryChanged.emit()  # (offline: the models folder is listed again all the same)
            if on_finished:
                on_finished()

        self.tasks.run(lambda: refresh_catalog(endpoint=endpoint, token=token), on_done=done, on_error=failed,
                       name="catalog")

    # --- the engine ----------------------------------------------------------------------------
    def attach_engine(self, engine) -> None:
        self.engine = engine
        engine.worker.runtime.states = self.states
        w = engine.worker
        w.loadProgress.connect(self._on_load_progress)
        w.loaded.connect(self._on_loaded)
        w.loadFailed.connect(self._on_load_failed)
        w.unloaded.connect(self._on_unloaded)
        w.piece.connect(self._on_piece)
        w.reading.connect(self._on_reading)
        w.done.connect(self._on_done)
        w.failed.connect(self._on_failed)

    @property
    def runtime(self):
        return self.engine.worker.runtime if self.engine is not None else None

    def can_load(self) -> bool:
        return self.engine is not None and not self.generating

    def load_model(self, path: str | Path, strategy: str | None = None) -> None:
        """Load a model (the one loaded before is unloaded first, once the new file and strategy have
        passed the checks that need no loading: never two at once). Without a
        strategy, the settings' rule decides (the model's override, else the default, else auto)."""
        if not self.can_load():
            return
        path = str(path)
        strategy = strategy or self.settings.current.strategy_for(path)
        self.clear_error()
        self.loading, self.load_fraction = Path(path).name, 0.0
        self.statusChanged.emit()
        self.engine.requestLoad.emit(path, strategy)

    def unload_model(self) -> None:
        if self.can_load():
            self.engine.requestUnload.emit()

    def _on_load_progress(self, fraction: float) -> None:
        self.load_fraction = fraction
        self.statusChanged.emit()

    def _on_loaded(self, info, why: str) -> None:
        self.info, self.strategy_reason, self.loading = info, why, None
        self.remember(last_model=str(info.path))
        self.statusChanged.emit()
        self.modelChanged.emit()

    def _on_load_failed(self, message: str) -> None:
        # (a file or strategy refused before the loaded model was let go of leaves that model working)
        runtime = self.runtime
        self.loading, self.info = None, runtime.info if runtime is not None else None
        self.show_error(message)
        self.modelChanged.emit()

    def _on_unloaded(self) -> None:
        self.info = None
        self.statusChanged.emit()
        self.modelChanged.emit()

    def request(self, kind: str, req: dict) -> int:
        """Send a chat ("chat") or completion ("complete") request to the worker; returns its id.
        The reply streams through `piece`, then `done` or `failed` with that id."""
        rid = next(self._rids)
        self.generating, self.tps, self._pieces, self.read_fraction = True, 0.0, 0, None
        self.statusChanged.emit()
        self.busyChanged.emit()
        signal = self.engine.requestChat if kind == "chat" else self.engine.requestComplete
        signal.emit(rid, req)
        return rid

    def forget(self, key) -> None:
        """A conversation is gone: drop the state kept for it."""
        if self.runtime is not None:
            self.runtime.forget(key)

    def _on_reading(self, rid: int, done: int, total: int) -> None:
        self.read_fraction = done / max(total, 1) if done < total else None
        self.statusChanged.emit()
        self.reading.emit(rid, done, total)

    def _on_piece(self, rid: int, text: str) -> None:
        now = time.monotonic()
        self.read_fraction = None
        self._pieces += 1
        if self._pieces == 1:
            self._first_piece = now
        elif now - self._shown_tps > 0.5:  # pieces are about one token each
            self._shown_tps = now
            self.tps = (self._pieces - 1) / max(now - self._first_piece, 1e-6)
            self.statusChanged.emit()
        self.piece.emit(rid, text)

    def _on_done(self, rid: int, reply) -> None:
        self._finished(reply.tokens_per_second)
        self.done.emit(rid, reply)

    def _on_failed(self, rid: int, message: str) -> None:
        self._finished(0.0)
        self.failed.emit(rid, message)

    def _finished(self, tps: float) -> None:
        self.generating, self.tps, self._pieces, self.read_fraction = False, tps, 0, None
        self.statusChanged.emit()
        self.busyChanged.emit()

    # --- errors --------------------------------------------------------------------------------
    def show_error(self, message: str, action=None) -> None:
        """One message in one place (the window's banner; its first line in the status bar).
        ``action``: (button text, callable) offered beside it."""
        self.error, self.error_action = split_bilingual(message), action
        log.error("%s", message)
        self.statusChanged.emit()

    def clear_error(self) -> None:
        if self.error is not None:
            self.error, self.error_action = None, None
            self.statusChanged.emit()

    def run_error_action(self) -> None:
        """The banner's button: the error goes, its action runs."""
        action = self.error_action
        self.clear_error()
        if action is not None:
            action[1]()

    # --- the local API server ------------------------------------------------------------------
    def start_api(self, host: str, port: int, key: str, origins: str | None = None) -> bool:
        """Serve the loaded model through the OpenAI-compatible API (app/server). Checks run here;
        binding, imports and start-up run in the background. False (with `api_status` saying why)
        when it cannot start."""
        from roost.server.run import ServerError, check_bind, is_loopback

        if self.engine is None:
            return self._api_failed(tr("The engine is still starting. Try again in a moment."))
        try:
            check_bind(host, port, key)
        except ServerError as e:
            return self._api_failed(split_bilingual(str(e)))
        changes = dict(api_host=host, api_port=port, api_key=key)
        if origins is not None:
            changes["api_allow_origins"] = origins
        try:
            self.settings.update(**changes)
        except (ValueError, OSError) as e:
            return self._api_failed(split_bilingual(str(e)))
        allow_origins = self.settings.current.api_allow_origins
        from roost.gui.sampling import defaults

        sampling = defaults(self.settings.current)
        chat_defaults = {k: sampling[k] for k in ("temperature", "top_p", "top_k", "presence_penalty",
                                                  "frequency_penalty", "penalty_decay") if k in sampling}
        runtime, open_to_network = self.runtime, not is_loopback(host)
        self._api_wanted = True
        self.api_status = tr("Starting…")
        self.apiChanged.emit()

        def start():
            from roost.server.run import ApiServer

            return ApiServer(runtime, host=host, port=port, api_key=key or None, chat_defaults=chat_defaults,
                             chat_max_tokens=int(sampling.get("max_tokens", 1024)),
                             allow_origins=allow_origins).start()

        def started(server) -> None:
            self.api_server = server
            if not self._api_wanted:  # switched off while it was starting
                self.stop_api(wait=False)
                return
            text = tr("Running at {url}", url=server.base_url)
            if self.info is None:
                text += " " + tr("No model is loaded yet: requests get an error until one is.")
            if open_to_network:
                text += " " + tr("Other computers can reach it; keep the API key secret.")
            self.api_status = text
            self.apiChanged.emit()

        def failed(e: BaseException) -> None:  # a bug's details are in the log
            from roost.engine.errors import RoostError

            self._api_failed(split_bilingual(str(e)) if isinstance(e, RoostError)
                             else tr("The server could not start; the details are in the log."))

        self.tasks.run(start, on_done=started, on_error=failed, name="api-start")
        return True

    def _api_failed(self, message: str) -> bool:
        self._api_wanted = False
        self.api_status = tr("Error: {msg}", msg=message)
        self.apiChanged.emit()
        return False

    def api_busy(self) -> bool:
        """Starting or running: its settings are fixed until it stops."""
        return self._api_wanted or self.api_server is not None

    def stop_api(self, wait: bool = True) -> None:
        """Stop the server (its running generations end within a token)."""
        self._api_wanted = False
        server, self.api_server = self.api_server, None
        if server is None:
            self.apiChanged.emit()
            return

        def stopped(_=None) -> None:
            self.api_status = tr("Stopped.")
            self.apiChanged.emit()

        self.api_status = tr("Stopping…")
        self.apiChanged.emit()
        if wait:
            server.stop()
            stopped()
        else:
            self.tasks.run(server.stop, on_done=stopped, name="api-stop")

    # --- the whole app -------------------------------------------------------------------------
    def diagnostics(self) -> str:
        """A machine report and the end of the log, for bug reports (no token, no chats)."""
        import json
        import platform

        from roost import __version__
        from roost.core.logs import log_file

        lines = [f"Roost {__version__}, Python {platform.python_version()}, {platform.platform()}"]
        if self.machine is not None:
            lines.append(json.dumps(self.machine.to_dict(), ensure_ascii=False))
        if self.info is not None:
            lines.append(f"model: {self.info.name} ({self.info.label}), strategy {self.info.strategy}")
        try:
            tail = log_file().read_text(encoding="utf-8", errors="replace").splitlines()[-80:]
        except OSError:
            tail = []
        return "\n".join(lines + ["--- log ---", *tail])

    def shutdown(self) -> None:
        """The app is closing (after the pages saved what they were writing): stop the API server,
        the downloads (they resume next time) and the engine; close the conversations."""
        self.stop_api(wait=True)
        if self.queue is not None:
            self.queue.close(timeout=5)
        if self.engine is not None:
            self.engine.stop()
        self.store.close()
        if self.states is not None:
            self.states.close()

