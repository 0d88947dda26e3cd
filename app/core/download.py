"""Resumable, verified downloads of one file.

huggingface_hub restarts a download from zero after a crash or a cancel and never checks the
sha256 of what arrived, so the transfer is ours: bytes go to `<name>.part` beside
a `<name>.part.json` sidecar that says what they are; a retry, a new process or an app restart
continues with an HTTP `Range` request. huggingface_hub does what it does well: the resolve URL, the
metadata call (size, sha256 in `X-Linked-Etag`, CDN location), the endpoint and the auth token.

The sha256 is computed while the bytes arrive (the partial file is hashed again on resume) and
checked before the file is moved into place; a mismatch deletes the bytes and says so. Nothing under
the final name is ever incomplete.
"""

from __future__ import annotations

import errno
import hashlib
import http.client
import json
import logging
import os
import shutil
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from roost.core.sources import Candidate
from roost.engine.errors import RoostError

log = logging.getLogger("roost.download")

CHUNK = 1 << 20
DISK_MARGIN = 64 << 20  # keep this much free beyond the file itself
USER_AGENT = "Roost (RWKV launcher)"


class DownloadError(RoostError):
    """A download that did not produce a verified file. `str()` is written for the user."""


class NotFoundError(DownloadError):
    """No source has the file (removed upstream, a typo, a private repo)."""


class NetworkError(DownloadError):
    """The connection kept failing; what arrived is kept and the next attempt resumes."""


class OfflineError(NetworkError):
    """No download source could even be looked up or reached: this computer looks offline."""


class ChecksumError(DownloadError):
    """The bytes do not match the published sha256. They were deleted."""


class DiskSpaceError(DownloadError):
    """Not enough free space, found before starting or when the disk filled up."""


class StoppedError(DownloadError):
    """Paused (the partial file is kept) or cancelled (it is deleted) by the user."""

    def __init__(self, message: str, cancelled: bool):
        self.cancelled = cancelled
        super().__init__(message)


@dataclass
class Progress:
    name: str
    done: int
    total: int | None
    speed: float  # bytes per second over the last few seconds
    eta: float | None  # seconds
    phase: str  # "connecting", "checking", "downloading", "verifying", "done"

    @property
    def fraction(self) -> float | None:
        return self.done / self.total if self.total else None


class Control:
    """Thread-safe pause / cancel for a running download; checked after every chunk."""

    def __init__(self):
        self._stop = threading.Event()
        self.cancelled = False

    def pause(self):
        self._stop.set()

    def cancel(self):
        self.cancelled = True
        self._stop.set()

    def reset(self):
        self.cancelled = False
        self._stop.clear()

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()


def memory_size(n: float) -> str:
    """Memory (RAM, VRAM) as everything in Roost counts it: GB of 2^30 bytes, as the systems' own
    memory meters do and as `roost doctor`, the advisor and the engine's messages say it
    (roost.engine.memory.gib; here without importing the engine, so that the window opens at once)."""
    return f"{n / 2 ** 30:.1f} GB"


def human_size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def disk_free(folder: Path) -> int:
    return shutil.disk_usage(folder).free


class _Hasher:
    """sha256 for LFS files; git's blob sha1 (what the Hub's ETag is) for small non-LFS files."""

    def __init__(self, expected: str | None, size: int | None):
        self.expected = (expected or "").lower() or None
        self.git = self.expected is not None and len(self.expected) == 40 and size is not None
        self.h = hashlib.sha1(b"blob %d\0" % size) if self.git else hashlib.sha256()

    def update(self, data) -> None:
        self.h.update(data)

    def ok(self) -> bool:
        return self.expected is None or self.h.hexdigest() == self.expected


class Meter:
    def __init__(self, name: str, total: int | None, callback, window: float = 5.0):
        self.name, self.total, self.callback, self.window = name, total, callback, window
        self.samples: deque[tuple[float, int]] = deque()
        self.last = 0.0
        self.phase = ""

    def report(self, done: int, phase: str, force: bool = False) -> None:
        if self.callback is None:
            return
        now = time.monotonic()
        self.samples.append((now, done))
        while len(self.samples) > 2 and now - self.samples[0][0] > self.window:
            self.samples.popleft()
        if not force and phase == self.phase and now - self.last < 0.1:
            return
        self.last, self.phase = now, phase
        t0, d0 = self.samples[0]
        speed = (done - d0) / (now - t0) if now > t0 else 0.0
        eta = (self.total - done) / speed if self.total and speed > 0 else None
        self.callback(Progress(self.name, done, self.total, speed, eta, phase))


@dataclass
class _Remote:
    url: str  # where the bytes are (the CDN for LFS files)
    size: int | None
    sha: str | None  # sha256 (64 hex) or git blob sha1 (40 hex) announced by the server
    headers: dict


class _NotHere(Exception):
    pass


def _resolve(cand: Candidate, token: str | None, timeout: float) -> _Remote:
    """Ask a source where the file is and what it is. Raises _NotHere for a missing file."""
    if cand.hub_protocol:
        from huggingface_hub import get_hf_file_metadata
        from huggingface_hub.errors import (
            EntryNotFoundError,
            GatedRepoError,
            HfHubHTTPError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )
        try:
            meta = get_hf_file_metadata(cand.url, token=token or False, timeout=timeout,
                                        endpoint=cand.endpoint)
        except (EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError, GatedRepoError) as e:
            raise _NotHere(type(e).__name__) from e
        except HfHubHTTPError as e:
            code = getattr(getattr(e, "response", None), "status_code", None)
            if code in (401, 403, 404, 410):
                raise _NotHere(f"HTTP {code}") from e
            raise OSError(str(e)) from e
        except OSError:
            raise
        except Exception as e:  # the HTTP client's own transport errors
            raise OSError(str(e)) from e
        headers = {}
        same_host = urlsplit(meta.location).netloc == urlsplit(cand.endpoint).netloc
        if token and same_host:  # never send the token to the CDN
            headers["Authorization"] = f"Bearer {token}"
        return _Remote(meta.location, meta.size, meta.etag, headers)
    req = urllib.request.Request(cand.url, method="HEAD", headers={"User-Agent": USER_AGENT})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            size = r.headers.get("Content-Length")
            return _Remote(r.geturl(), int(size) if size else None, None, {})
    except urllib.error.HTTPError as e:
        if e.code in (401, 403, 404, 410):
            raise _NotHere(f"HTTP {e.code}") from e
        raise OSError(f"HTTP {e.code}") from e


def _read_sidecar(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def download_file(
    candidates: list[Candidate],
    dest: str | os.PathLike,
    *,
    sha256: str | None = None,
    size: int | None = None,
    token: str | None = None,
    progress: Callable[[Progress], None] | None = None,
    control: Control | None = None,
    timeout: float = 30.0,
    max_attempts: int = 6,
    backoff: float = 1.0,
) -> Path:
    """Download to `dest` (a final path) and return it, verified. `sha256`/`size` are the catalog's
    facts; without them the server's are used (a Hub LFS file announces its sha256)."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    name = dest.name
    part = dest.with_name(name + ".part")
    side = dest.with_name(name + ".part.json")
    control = control or Control()
    meter = Meter(name, size, progress)
    if dest.exists() and (size is None or dest.stat().st_size == size):
        meter.report(dest.stat().st_size, "done", force=True)
        return dest

    missing, failures, offline = [], [], []
    for cand in candidates:
        meter.report(0, "connecting", force=True)
        remote = None
        for attempt in range(max_attempts):
            try:
                remote = _resolve(cand, token, min(timeout, 30.0))
                break
            except _NotHere as e:
                missing.append(f"{cand.source}: {e}")
                break
            except OSError as e:
                if control.stopped:
                    _stop(control, part, side)
                log.warning("%s from %s: %s", name, cand.url, e)
                if _is_offline(e):  # a name that cannot be looked up will not resolve in a few seconds
                    offline.append(cand.source)
                    break
                if attempt + 1 == max_attempts:
                    failures.append(cand.source)
                else:
                    time.sleep(min(backoff * 2 ** attempt, 30))
        if remote is None:
            continue
        expected = sha256 or (remote.sha if remote.sha and len(remote.sha) in (40, 64) else None)
        if sha256 and remote.sha and len(remote.sha) == 64 and remote.sha.lower() != sha256.lower():
            failures.append(f"{cand.source}: the server's file differs from the catalog's (sha256 {remote.sha[:12]}...)")
            continue
        if size is not None and remote.size is not None and remote.size != size:
            failures.append(f"{cand.source}: the server's file is {remote.size} bytes, the catalog says {size}")
            continue
        total = size if size is not None else remote.size
        meter.total = total
        return _transfer(cand, remote, dest, part, side, expected, total, token, meter, control,
                         timeout, max_attempts, backoff)
    if offline and not failures and not missing:
        where, where_zh = _source_names(offline)
        raise OfflineError(
            f"Could not reach {where} to download {name}: this computer seems to be offline. Check the "
            "internet connection, or set a proxy or choose another download source in Settings, then try "
            f"again.\n无法连接 {where_zh} 下载 {name}：这台电脑似乎没有联网。请检查网络连接，或在设置中填写代理、"
            "更换下载源后重试。")
    if failures or offline:
        where, where_zh = _source_names(failures + offline)
        raise NetworkError(
            f"Could not download {name} from {where}. Check the internet connection, or set a proxy or "
            "choose another download source in Settings, then try again; what arrived is kept.\n"
            f"无法从 {where_zh} 下载 {name}。请检查网络连接，或在设置中填写代理、更换下载源后重试；已下载的部分会保留。")
    raise NotFoundError(
        f"{name} was not found on any download source ({'; '.join(missing)}). It may have been "
        "removed upstream; refresh the catalog or choose another model.\n"
        f"在所有下载源上都找不到 {name}（可能已被上游删除）。请刷新模型列表或选择其他模型。")


def _source_names(keys: list[str]) -> tuple[str, str]:
    """'Hugging Face and ModelScope' (and the Chinese) for the sources tried."""
    from roost.core.sources import SOURCE_NAMES

    names = [SOURCE_NAMES.get(k, (k, k)) for k in dict.fromkeys(keys)]
    en = [n[0].split(" (")[0] for n in names]
    zh = [n[1].split("（")[0] for n in names]
    return " and ".join(en), "、".join(zh)


_OFFLINE_TEXT = ("name or service not known", "temporary failure in name resolution", "nodename nor servname",
                 "getaddrinfo failed", "no address associated", "network is unreachable")


def _is_offline(error: BaseException) -> bool:
    """Whether `error` (or what caused it) says the server's name cannot be looked up or no network
    route exists: retrying in a few seconds will not help."""
    import socket

    seen = set()
    e: BaseException | None = error
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, socket.gaierror):
            return True
        if isinstance(e, OSError) and e.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH):
            return True
        if any(t in str(e).lower() for t in _OFFLINE_TEXT):
            return True
        reason = getattr(e, "reason", None)  # urllib's URLError carries the socket error here
        e = reason if isinstance(reason, BaseException) else (e.__cause__ or e.__context__)
    return False


def _stop(control: Control, part: Path, side: Path):
    if control.cancelled:
        part.unlink(missing_ok=True)
        side.unlink(missing_ok=True)
        raise StoppedError("Download cancelled. 下载已取消。", cancelled=True)
    raise StoppedError("Download paused; it will resume where it stopped. 下载已暂停，可从中断处继续。",
                       cancelled=False)


def check_disk(folder: Path, need: int):
    free = disk_free(folder)
    if free < need + DISK_MARGIN:
        raise DiskSpaceError(
            f"Not enough disk space in {folder}: the download needs {human_size(need + DISK_MARGIN)} "
            f"and {human_size(free)} is free. Free some space or choose another models folder in Settings.\n"
            f"{folder} 的磁盘空间不足：需要 {human_size(need + DISK_MARGIN)}，只剩 {human_size(free)}。"
            "请清理空间或在设置中选择其他模型文件夹。")


def _transfer(cand, remote, dest, part, side, expected, total, token, meter, control,
              timeout, max_attempts, backoff) -> Path:
    identity = {"sha256": expected, "size": total, "source_url": cand.url}
    old = _read_sidecar(side)
    if part.exists() and (old.get("sha256") != expected or old.get("size") != total):
        part.unlink()  # bytes of another version of the file: start over
    have = part.stat().st_size if part.exists() else 0
    if total is not None and have > total:
        part.unlink()
        have = 0
    check_disk(dest.parent, (total or 0) - have)
    side.write_text(json.dumps(identity), encoding="utf-8")

    hasher = _Hasher(expected, total)
    if have:
        with open(part, "rb") as f:
            done = 0
            while chunk := f.read(CHUNK * 8):
                hasher.update(chunk)
                done += len(chunk)
                meter.report(done, "checking")
    meter.samples.clear()
    attempts, url = 0, remote.url
    while total is None or have < total:
        if control.stopped:
            _stop(control, part, side)
        before = have
        try:
            have, complete = _fetch(url, remote.headers, part, have, total, hasher, meter, control, timeout)
            if complete and total is None:
                total = have
        except _Restart:
            hasher = _Hasher(expected, total)
            have = 0
            continue
        except _Expired:
            try:
                remote = _resolve(cand, token, min(timeout, 30.0))
            except _NotHere as e:
                raise NotFoundError(f"{dest.name} is no longer on {cand.source} ({e}); what arrived is "
                                    f"kept.\n{dest.name} 已不在该下载源上，已下载的部分会保留。") from e
            url = remote.url
            continue
        except OSError as e:
            have = part.stat().st_size  # what _fetch wrote (and hashed) before it failed
            if e.errno == errno.ENOSPC:
                raise DiskSpaceError(
                    f"The disk filled up while downloading {dest.name} ({human_size(have)} kept). Free some "
                    "space and resume.\n磁盘已满，下载中断（已保留已下载部分）。请清理空间后继续下载。") from e
            if control.stopped:
                _stop(control, part, side)
            attempts = 0 if have > before else attempts + 1
            if attempts >= max_attempts:
                raise NetworkError(
                    f"The connection keeps failing while downloading {dest.name} ({e}). "
                    f"{human_size(have)} of {human_size(total or 0)} is kept; try again to resume.\n"
                    f"下载 {dest.name} 时连接反复中断。已保留已下载部分，重试即可继续。") from e
            time.sleep(min(backoff * 2 ** max(attempts - 1, 0), 30))
            continue
        if have == before and total is not None and have < total:
            attempts += 1  # an empty answer: count it like an error
            if attempts >= max_attempts:
                raise NetworkError(f"The server keeps sending nothing for {dest.name}; try again later.\n"
                                   f"服务器没有返回数据，请稍后重试。")
        if total is None:
            break

    meter.report(have, "verifying", force=True)
    if not hasher.ok():
        part.unlink(missing_ok=True)
        side.unlink(missing_ok=True)
        raise ChecksumError(
            f"{dest.name} arrived damaged: its checksum does not match the published one, so it was "
            "deleted. Download it again (another source may help).\n"
            f"{dest.name} 下载的文件已损坏（校验值不符），已删除。请重新下载（可换一个下载源）。")
    with open(part, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(part, dest)
    side.unlink(missing_ok=True)
    meter.report(have, "done", force=True)
    return dest


class _Restart(Exception):
    """The server ignored Range: the partial file was truncated, start again."""


class _Expired(Exception):
    """The CDN URL expired or vanished: resolve again."""


def _fetch(url, headers, part: Path, have: int, total, hasher, meter, control, timeout):
    """One GET from `have` on; returns (bytes now on disk, whether the server finished the body)."""
    hdrs = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity", **headers}
    if have:
        hdrs["Range"] = f"bytes={have}-"
    req = urllib.request.Request(url, headers=hdrs)
    try:
        resp = urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and total is not None and have >= total:
            return have, True
        if e.code in (403, 404, 410):
            raise _Expired() from e
        raise OSError(f"HTTP {e.code} from the server") from e
    except urllib.error.URLError as e:
        raise OSError(str(e.reason)) from e
    except http.client.HTTPException as e:
        raise OSError(f"bad answer from the server: {e!r}") from e
    try:
        return _receive(resp, part, have, total, hasher, meter, control)
    except http.client.HTTPException as e:
        raise OSError(f"the connection broke: {e!r}") from e
    finally:
        resp.close()


def _receive(resp, part: Path, have: int, total, hasher, meter, control):
    if have and resp.status == 200:  # Range ignored: the body starts at byte 0
        with open(part, "wb"):
            pass
        raise _Restart()
    if have and resp.status == 206:
        crange = resp.headers.get("Content-Range", "")
        if not crange.startswith(f"bytes {have}-"):
            with open(part, "wb"):
                pass
            raise _Restart()
    length = resp.headers.get("Content-Length")
    expect_end = have + int(length) if length else None
    with open(part, "ab") as f:
        while True:
            if control.stopped:
                break
            chunk = resp.read1(CHUNK)  # what has arrived, so a stall loses nothing
            if not chunk:
                break
            f.write(chunk)
            hasher.update(chunk)
            have += len(chunk)
            meter.report(have, "downloading")
        f.flush()
    if control.stopped:
        return have, False
    if expect_end is not None and have < expect_end:
        raise OSError(f"the connection closed early ({have} of {expect_end} bytes)")
    return have, expect_end is not None or total is None
