"""Start and stop the API server, for ``roost serve`` and for the app's Settings switch.

    server = ApiServer(runtime, host="127.0.0.1", port=8000).start()   # a background thread
    server.base_url                                                     # http://127.0.0.1:8000/v1
    server.stop()

The socket is bound by the caller's thread, so "port in use" and similar errors are raised at
once as :class:`ServerError`. Listening anywhere but the loopback interface needs an API key.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
import threading
import time

from roost.engine.errors import RoostError

log = logging.getLogger("roost.server")

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000


class ServerError(RoostError):
    pass


def is_loopback(host: str) -> bool:
    """Whether `host` only accepts connections from this computer (127.0.0.0/8, ::1, localhost)."""
    h = host.strip().strip("[]").lower()
    if h in ("localhost", "ip6-localhost", "ip6-loopback"):
        return True
    try:
        return ipaddress.ip_address(h).is_loopback
    except ValueError:
        return False


def check_bind(host: str, port: int, api_key: str | None) -> None:
    """Refuse settings that would expose the model without protection, with a clear message."""
    if not host or not host.strip():
        raise ServerError("No host to listen on. Use 127.0.0.1 (this computer only).\n"
                          "未指定监听地址。请使用 127.0.0.1（仅本机）。")
    if not 0 <= int(port) <= 65535:
        raise ServerError(f"Port {port} is not between 0 and 65535.\n端口 {port} 不在 0 到 65535 之间。")
    if not is_loopback(host) and not (api_key or "").strip():
        raise ServerError(
            f"Refusing to listen on {host} without an API key: other computers could use the model. "
            f"Set an API key (--api-key or $ROOST_API_KEY) to serve beyond this computer, or listen on "
            f"127.0.0.1.\n拒绝在 {host} 上无 API 密钥地监听：其他电脑将能使用该模型。若要对外提供服务，"
            f"请设置 API 密钥（--api-key 或 $ROOST_API_KEY），或只监听 127.0.0.1。")


def bind_socket(host: str, port: int) -> socket.socket:
    host = host.strip().strip("[]")
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as e:
        raise ServerError(f"Cannot listen on {host}: {e.strerror or e}.\n无法监听 {host}。") from None
    sock = socket.socket(family, kind, proto)
    try:
        if os.name != "nt":  # on Windows SO_REUSEADDR would let two servers share the port
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as e:
        sock.close()
        raise ServerError(f"Cannot listen on {host}:{port}: {e.strerror or e}. Is another program using the "
                          f"port? Choose another one.\n无法监听 {host}:{port}：端口可能已被占用，请换一个端口。") from None
    sock.set_inheritable(True)
    return sock


class ApiServer:
    """The FastAPI app under uvicorn, on its own thread (``start``) or this one (``serve_forever``)."""

    def __init__(self, runtime, *, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
                 api_key: str | None = None, log_level: str = "warning", **app_options):
        api_key = (api_key or "").strip() or None
        check_bind(host, port, api_key)
        self.runtime = runtime
        self.host, self.port, self.api_key = host.strip(), int(port), api_key
        self.log_level = log_level
        self.app_options = app_options
        self.app = None
        self._server = None
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        host = self.host.strip("[]")
        if host in ("0.0.0.0", "::", ""):
            host = "127.0.0.1"
        return f"http://[{host}]:{self.port}/v1" if ":" in host else f"http://{host}:{self.port}/v1"

    @property
    def worker(self):
        return self.app.state.roost if self.app is not None else None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _prepare(self):
        import uvicorn

        from roost.server.api import create_app

        sock = bind_socket(self.host, self.port)
        self.port = sock.getsockname()[1]  # the one chosen, when port 0 asked for any free one
        import ipaddress

        try:
            loopback = self.host == "localhost" or ipaddress.ip_address(self.host).is_loopback
        except ValueError:  # a name other than localhost
            loopback = False
        self.app = create_app(self.runtime, api_key=self.api_key, loopback_only=loopback, **self.app_options)
        config = uvicorn.Config(self.app, log_level=self.log_level, timeout_graceful_shutdown=5,
                                access_log=False)
        worker = self.app.state.roost

        class Server(uvicorn.Server):
            def handle_exit(self, sig, frame):  # Ctrl+C: end the generations, then the server
                worker.close()
                super().handle_exit(sig, frame)

        self._server = Server(config)
        return sock

    def start(self, timeout: float = 30.0) -> ApiServer:
        """Serve on a background thread; returns once the server accepts connections."""
        sock = self._prepare()
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]},
                                        name="roost-api-server", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise ServerError("The API server did not start; see the log.\nAPI 服务器未能启动，请查看日志。")
            time.sleep(0.02)
        log.info("API server on %s", self.base_url)
        return self

    def serve_forever(self, on_listening=None) -> None:
        """Serve on this thread until Ctrl+C (the command line); `on_listening()` runs once bound."""
        sock = self._prepare()
        if on_listening is not None:
            on_listening()
        try:
            self._server.run(sockets=[sock])
        except KeyboardInterrupt:
            pass
        finally:
            sock.close()

    def stop(self, timeout: float = 10.0) -> None:
        """End every generation, stop accepting connections and wait for the thread to end."""
        if self.app is not None:
            self.app.state.roost.close()
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
            if self._thread.is_alive() and self._server is not None:
                self._server.force_exit = True
                self._thread.join(2.0)


def start_server(runtime, **kwargs) -> ApiServer:
    """An :class:`ApiServer` started on a background thread (see its arguments)."""
    return ApiServer(runtime, **kwargs).start()


# --- roost serve ---------------------------------------------------------------------------------
def _saved_states(budget_mb: int):
    """The saved states beside the app's conversations (long requests resume from them after a
    restart, and so do the app's chats), once the app has made that file (schema 3 or later: this
    server never migrates or changes the chats); None otherwise."""
    import sqlite3

    from roost.core import paths
    from roost.core.conversation_schema import SCHEMA_VERSION
    from roost.core.saved_states import SavedStates

    db = paths.data_dir() / "conversations.sqlite"
    try:
        if not db.is_file():
            return None
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        try:
            version = con.execute("PRAGMA user_version").fetchone()[0]
        finally:
            con.close()
        return SavedStates(db, budget_bytes=budget_mb * 2 ** 20) if 3 <= version <= SCHEMA_VERSION else None
    except (OSError, sqlite3.Error) as e:  # the server works without them
        log.warning("saved states unavailable: %s", e)
        return None


def serve_cli(args) -> int:
    """``roost serve``: load the model, then serve it until Ctrl+C."""
    import sys

    from roost.core.choice import model_and_strategy
    from roost.core.runtime import Runtime
    from roost.core.settings import load_settings

    api_key = args.api_key or os.environ.get("ROOST_API_KEY") or None
    check_bind(args.host, args.port, api_key)  # before the time spent loading
    bind_socket(args.host, args.port).close()  # a busy port is said now, not after loading
    path, strategy = model_and_strategy(args.model, args.strategy,
                                        say=lambda text: print(text, file=sys.stderr, flush=True))
    settings = load_settings()
    runtime = Runtime(settings.load_options(), mark_loads="serve")
    from roost.engine.threads import elsewhere

    # loaded on a thread that then ends: the main thread keeps no OpenMP pool that would slow the
    # replies computed on the server's worker thread (roost.engine.threads: 1.5x per token)
    info = elsewhere(runtime.load, path, strategy)
    print(f"{info.label}, loaded in {info.seconds:.1f} s", file=sys.stderr, flush=True)
    origins = tuple(args.allow_origin or ()) + tuple(settings.api_allow_origins)
    runtime.states = _saved_states(settings.state_budget_mb)
    server = ApiServer(runtime, host=args.host, port=args.port, api_key=api_key, log_level=args.log_level,
                       model_id=args.model_id, max_queue=args.max_queue, max_batch=args.max_batch,
                       max_tokens_limit=args.max_tokens_limit,
                       allow_origins=origins)
    model_id = args.model_id or path.stem

    def announce() -> None:  # only once the socket is bound: a URL printed is a URL that answers
        print(f"OpenAI-compatible API at {server.base_url}  (model: {model_id}; "
              f"{'API key required' if api_key else 'no API key'}). Ctrl+C stops it.", file=sys.stderr, flush=True)

    server.serve_forever(on_listening=announce)
    return 0
