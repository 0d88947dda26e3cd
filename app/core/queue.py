"""A queue of downloads run one at a time on a background thread (the app's Models page and the CLI).

Listeners are called on the worker thread with the job that changed; a GUI forwards that to its
own thread. Pausing keeps the partial file, so a paused job (or one cut off by quitting the app)
resumes where it stopped, in this session or the next.
"""

from __future__ import annotations

import itertools
import logging
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from roost.core.download import Control, Progress, StoppedError
from roost.core.library import Target, download_target
from roost.core.sources import HUB
from roost.engine.errors import RoostError

QUEUED, RUNNING, PAUSED, DONE, FAILED, CANCELLED = "queued", "running", "paused", "done", "failed", "cancelled"

_ids = itertools.count(1)
log = logging.getLogger("roost.queue")


@dataclass
class Job:
    target: Target
    id: int = field(default_factory=lambda: next(_ids))
    state: str = QUEUED
    progress: Progress | None = None
    error: str | None = None
    path: Path | None = None
    folder: Path | None = None  # where it downloads: the models folder in force when it started
    control: Control = field(default_factory=Control)
    options: tuple = ()  # (source, endpoints, token) in force when it started

    @property
    def finished(self) -> bool:
        return self.state in (DONE, FAILED, CANCELLED)


class DownloadQueue:
    def __init__(self, models_dir, *, source: str = HUB, endpoints: dict | None = None,
                 token: str | None = None, **download_kw):
        self.models_dir = Path(models_dir)
        self.source, self.endpoints, self.token = source, endpoints, token
        self.download_kw = download_kw
        self._jobs: list[Job] = []
        self._listeners: list[Callable[[Job], None]] = []
        self._cond = threading.Condition()
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="roost-downloads", daemon=True)
        self._thread.start()

    # --- public --------------------------------------------------------------------------------
    def configure(self, *, models_dir=None, source: str | None = None, token: str | None = None) -> None:
        """New settings for the jobs that start from now on (a running one keeps its own)."""
        with self._cond:
            if models_dir is not None:
                self.models_dir = Path(models_dir)
            if source is not None:
                self.source = source
            self.token = token

    def listen(self, fn: Callable[[Job], None]) -> None:
        self._listeners.append(fn)

    def add(self, target: Target) -> Job:
        """Queue a download; the same file already queued or running is not queued twice."""
        with self._cond:
            for j in self._jobs:
                if j.target.name == target.name and j.state in (QUEUED, RUNNING, PAUSED):
                    if j.state == PAUSED:
                        self._requeue(j)
                    return j
            job = Job(target)
            self._jobs.append(job)
            self._cond.notify_all()
        self._emit(job)
        return job

    def jobs(self) -> list[Job]:
        with self._cond:
            return list(self._jobs)

    def pause(self, job: Job) -> None:
        with self._cond:
            if job.state == QUEUED:
                job.state = PAUSED
            elif job.state == RUNNING:
                job.control.pause()  # the worker marks it paused when the transfer stops
        self._emit(job)

    def resume(self, job: Job) -> None:
        with self._cond:
            if job.state in (PAUSED, FAILED):
                self._requeue(job)
        self._emit(job)

    def cancel(self, job: Job) -> None:
        with self._cond:
            if job.state == RUNNING:
                job.control.cancel()
                return
            if job.state in (QUEUED, PAUSED, FAILED):
                job.state = CANCELLED
                self._delete_partial(job)
        self._emit(job)

    def wait(self, job: Job, timeout: float | None = None) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: job.finished or job.state == PAUSED, timeout)

    def close(self, timeout: float = 10.0) -> None:
        """Stop the worker, pausing a running download (its bytes are kept for next time)."""
        with self._cond:
            self._closing = True
            for j in self._jobs:
                if j.state == RUNNING:
                    j.control.pause()
            self._cond.notify_all()
        self._thread.join(timeout)

    # --- worker --------------------------------------------------------------------------------
    def _requeue(self, job: Job) -> None:
        job.state, job.error = QUEUED, None
        job.control.reset()
        self._jobs.remove(job)
        self._jobs.append(job)
        self._cond.notify_all()

    def _delete_partial(self, job: Job) -> None:
        folder = job.folder or self.models_dir
        for suffix in (".part", ".part.json"):
            (folder / (job.target.name + suffix)).unlink(missing_ok=True)

    def _emit(self, job: Job) -> None:
        for fn in list(self._listeners):
            fn(job)

    def _next(self) -> Job | None:
        with self._cond:
            while not self._closing:
                job = next((j for j in self._jobs if j.state == QUEUED), None)
                if job is not None:
                    job.state = RUNNING
                    job.folder = job.folder if job.folder is not None else self.models_dir
                    job.options = (self.source, self.endpoints, self.token)
                    return job
                self._cond.wait()
        return None

    def _run(self) -> None:
        while (job := self._next()) is not None:
            self._emit(job)

            def on_progress(p: Progress, job=job):
                job.progress = p
                self._emit(job)

            source, endpoints, token = job.options
            try:
                job.folder.mkdir(parents=True, exist_ok=True)
                job.path = download_target(job.target, job.folder, source=source, endpoints=endpoints,
                                           token=token, progress=on_progress, control=job.control,
                                           **self.download_kw)
                state = DONE
            except StoppedError as e:
                state = CANCELLED if e.cancelled else PAUSED
            except RoostError as e:
                state, job.error = FAILED, str(e)
            except OSError as e:  # the models folder cannot be made or written
                state, job.error = FAILED, (
                    f"Cannot write to {job.folder} ({e.strerror or e}). Choose another models folder in "
                    f"Settings.\n无法写入 {job.folder}，请在设置中选择其他模型文件夹。")
            except Exception:  # noqa: BLE001 -- a bug must not kill the worker: said plainly, details logged
                log.error("downloading %s failed: %s", job.target.name, traceback.format_exc())
                state, job.error = FAILED, ("The download failed because of an error in Roost; the details "
                                            "are in the log.\n下载因 Roost 内部错误而失败，详情见日志。")
            with self._cond:
                job.state = state
                self._cond.notify_all()
            self._emit(job)
