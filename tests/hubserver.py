"""A local stand-in for the Hugging Face Hub, its CDN and ModelScope, for download tests.

Two origins on 127.0.0.1, as the real service has (the Hub's resolve protocol as huggingface_hub speaks it):
- the "hub": `HEAD/GET /{repo}/resolve/{rev}/{file}` answers LFS files with a 302 to the CDN and the
  headers huggingface_hub needs (`X-Repo-Commit`, `X-Linked-Etag` = sha256, `X-Linked-Size`), small
  files directly with a git-blob ETag; errors carry `X-Error-Code`; `/api/models/...` for metadata;
  ModelScope-style `/models/{repo}/resolve/master/{file}` served directly (plain HTTP, Range).
- the "cdn": `/blob/{sha256}` with `Range` / 206.

Faults are injected per response body (`Faults`), each for a number of responses: drop the connection
after N bytes, stall, ignore Range, corrupt a byte, truncate the body, throttle, answer 404.
"""

from __future__ import annotations

import hashlib
import json
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, quote, unquote, urlsplit

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Faults:
    """Each fault applies to the next `times` body responses (GETs of file bytes)."""

    drop_after: int | None = None  # close the connection after this many body bytes
    drop_times: int = 0
    stall_after: int | None = None  # stop sending for `stall_seconds` after this many bytes
    stall_seconds: float = 0.0
    stall_times: int = 0
    ignore_range: int = 0  # answer this many Range requests with a full 200
    corrupt_at: int | None = None  # flip the byte at this file offset (every response)
    truncate_to: int | None = None  # send only this many body bytes, then close
    truncate_times: int = 0
    rate: float | None = None  # bytes per second
    not_found: bool = False  # every request answers 404 (a source that lost the file)

    def take(self, name: str) -> bool:
        n = getattr(self, name)
        if n > 0:
            setattr(self, name, n - 1)
            return True
        return False


@dataclass
class StoredFile:
    data: bytes
    lfs: bool
    sha256: str = field(init=False)

    def __post_init__(self):
        self.sha256 = hashlib.sha256(self.data).hexdigest()


class HubServer:
    def __init__(self):
        self.repos: dict[str, dict[str, StoredFile]] = {}
        self.modelscope: dict[str, dict[str, StoredFile]] = {}
        self.faults = Faults()
        self.log: list[tuple[str, str, str, str | None]] = []  # (origin, method, path, Range)
        self._lock = threading.Lock()
        self._servers: list[ThreadingHTTPServer] = []
        self.hub_url = self.cdn_url = ""

    # --- content -------------------------------------------------------------------------------
    def add(self, repo: str, name: str, data: bytes, lfs: bool = True, host: str = "hf") -> StoredFile:
        f = StoredFile(data, lfs)
        (self.repos if host == "hf" else self.modelscope).setdefault(repo, {})[name] = f
        return f

    def blob(self, sha: str) -> StoredFile | None:
        for files in list(self.repos.values()) + list(self.modelscope.values()):
            for f in files.values():
                if f.sha256 == sha:
                    return f
        return None

    def range_starts(self, origin: str | None = None) -> list[int]:
        """The start offsets of the Range requests received so far (0 for a plain GET)."""
        out = []
        for o, method, _path, rng in self.log:
            if method == "GET" and (origin is None or o == origin) and "/api/" not in _path:
                out.append(int(rng.split("=")[1].split("-")[0]) if rng else 0)
        return out

    # --- lifecycle -----------------------------------------------------------------------------
    def start(self) -> HubServer:
        for role in ("hub", "cdn"):
            handler = type(f"{role}Handler", (_Handler,), {"hub": self, "role": role})
            srv = ThreadingHTTPServer(("127.0.0.1", 0), handler)
            srv.daemon_threads = True
            threading.Thread(target=srv.serve_forever, daemon=True).start()
            self._servers.append(srv)
        self.hub_url = f"http://127.0.0.1:{self._servers[0].server_port}"
        self.cdn_url = f"http://127.0.0.1:{self._servers[1].server_port}"
        return self

    def stop(self):
        for srv in self._servers:
            srv.shutdown()
            srv.server_close()
        self._servers.clear()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    hub: HubServer
    role: str

    def log_message(self, *args):  # keep test output quiet
        pass

    def do_HEAD(self):
        self._route("HEAD")

    def do_GET(self):
        self._route("GET")

    def do_POST(self):
        self._route("POST")

    # --- routing -------------------------------------------------------------------------------
    def _route(self, method: str):
        url = urlsplit(self.path)
        path = unquote(url.path)
        with self.hub._lock:
            self.hub.log.append((self.role, method, path, self.headers.get("Range")))
        if self.hub.faults.not_found:
            return self._error(404, "EntryNotFound")
        parts = path.strip("/").split("/")
        if self.role == "cdn":
            f = self.hub.blob(parts[-1]) if parts[0] == "blob" else None
            return self._send_file(method, f) if f else self._error(404, None)
        if parts[:2] == ["api", "models"]:
            return self._api(method, parts[2:], url.query)
        if parts[0] == "models" and len(parts) >= 6 and parts[3:5] == ["resolve", "master"]:
            repo, name = "/".join(parts[1:3]), "/".join(parts[5:])
            f = self.hub.modelscope.get(repo, {}).get(name)
            return self._send_file(method, f) if f else self._error(404, None)
        if len(parts) >= 5 and parts[2] == "resolve":
            return self._resolve(method, "/".join(parts[:2]), "/".join(parts[4:]))
        self._error(404, None)

    def _resolve(self, method: str, repo: str, name: str):
        files = self.hub.repos.get(repo)
        if files is None:
            return self._error(401, "RepoNotFound")
        f = files.get(name)
        if f is None:
            return self._error(404, "EntryNotFound")
        if f.lfs:
            self.send_response(302)
            self.send_header("Location", f"{self.hub.cdn_url}/blob/{f.sha256}?name={quote(name)}")
            self.send_header("X-Repo-Commit", COMMIT)
            self.send_header("X-Linked-Etag", f'"{f.sha256}"')
            self.send_header("X-Linked-Size", str(len(f.data)))
            self.send_header("ETag", f'"{git_blob_sha1(b"pointer " + f.sha256.encode())}"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self._send_file(method, f, extra={"X-Repo-Commit": COMMIT, "ETag": f'"{git_blob_sha1(f.data)}"'})

    def _api(self, method: str, parts: list[str], query: str):
        repo = "/".join(parts[:2])
        files = self.hub.repos.get(repo)
        if files is None:
            return self._error(404, "RepoNotFound")
        if method == "POST" and len(parts) >= 3 and parts[2] == "paths-info":
            body = self.rfile.read(int(self.headers.get("Content-Length", 0))).decode()
            ctype = self.headers.get("Content-Type", "")
            if "json" in ctype:
                wanted = json.loads(body).get("paths", [])
            else:
                wanted = parse_qs(body).get("paths", [])
            out = []
            for p in wanted:
                f = files.get(p)
                if f is None:
                    continue
                item = {"type": "file", "path": p, "size": len(f.data), "oid": git_blob_sha1(f.data)}
                if f.lfs:
                    item["lfs"] = {"oid": f.sha256, "size": len(f.data), "pointerSize": 134}
                out.append(item)
            return self._json(out)
        siblings = []
        for p, f in files.items():
            s = {"rfilename": p, "size": len(f.data), "blobId": git_blob_sha1(f.data)}
            if f.lfs:
                s["lfs"] = {"sha256": f.sha256, "size": len(f.data), "pointerSize": 134}
            siblings.append(s)
        self._json({"id": repo, "modelId": repo, "sha": COMMIT, "private": False, "siblings": siblings})

    # --- answers -------------------------------------------------------------------------------
    def _error(self, code: int, error_code: str | None):
        body = json.dumps({"error": error_code or "not found"}).encode()
        self.send_response(code)
        if error_code:
            self.send_header("X-Error-Code", error_code)
            self.send_header("X-Error-Message", error_code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, obj):
        body = json.dumps(obj).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _send_file(self, method: str, f: StoredFile, extra: dict | None = None):
        faults = self.hub.faults
        data = f.data
        size = len(data)
        start, end = 0, size - 1
        rng = self.headers.get("Range")
        partial = False
        if rng and method == "GET" and not faults.take("ignore_range"):
            spec = rng.split("=", 1)[1]
            a, _, b = spec.partition("-")
            start = int(a)
            end = int(b) if b else size - 1
            if start >= size:
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            partial = True
        self.send_response(206 if partial else 200)
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(end - start + 1))
        if partial:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.end_headers()
        if method == "HEAD":
            return
        # a view, not a copy: copying a large file here held the GIL for ~100 ms, which the UI
        # benchmark (this server runs in its process) counted as the app's stall
        body = memoryview(data)[start:end + 1]
        if faults.corrupt_at is not None and start <= faults.corrupt_at <= end:
            body = bytearray(body)
            body[faults.corrupt_at - start] ^= 0xFF
        limit = len(body)
        drop = faults.drop_after if faults.drop_after is not None and faults.take("drop_times") else None
        if faults.truncate_to is not None and faults.take("truncate_times"):
            drop = faults.truncate_to if drop is None else min(drop, faults.truncate_to)
        stall = faults.stall_after if faults.stall_after is not None and faults.take("stall_times") else None
        sent, piece = 0, 16384
        try:
            while sent < limit:
                n = min(piece, limit - sent)
                if drop is not None:
                    n = min(n, drop - sent)
                    if n <= 0:
                        break
                if stall is not None and sent >= stall:
                    time.sleep(faults.stall_seconds)
                    stall = None
                self.wfile.write(body[sent:sent + n])
                sent += n
                if faults.rate:
                    time.sleep(n / faults.rate)
        except (BrokenPipeError, ConnectionResetError):
            return
        if sent < limit:  # a dropped or truncated body: close without finishing
            self.close_connection = True
            try:
                self.wfile.flush()
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
