"""Who may call the API from a browser, and the URL forms it answers: ASGI middleware."""

from __future__ import annotations

import re

from roost.server.fields import ApiError

# Where browser-based clients run: pages this computer serves (a local chat UI, on any port),
# desktop apps built on web views (Obsidian app://, Tauri, VS Code webviews, file://) and browser
# extensions. Without an API key, pages of any other website, and `Origin: null` (a sandboxed frame
# of any site sends it), may not drive the model through the visitor's browser unless the user
# allows them (`allow_origins`: roost serve --allow-origin, Settings).
LOCAL_ORIGIN = r"[a-z][a-z0-9+.-]*://(localhost|127(\.[0-9]{1,3}){3}|\[::1\])(:[0-9]+)?"
CLIENT_ORIGINS = "|".join([
    LOCAL_ORIGIN,
    r"app://[^/\s]+",
    r"file://",
    r"tauri://localhost",
    r"https?://tauri\.localhost(:[0-9]+)?",
    r"vscode-webview://[^/\s]+",
    r"(chrome-extension|moz-extension|safari-web-extension)://[^/\s]+",
])



class NoTrailingSlash:
    """`/v1/chat/completions/` is `/v1/chat/completions`: answered, not redirected (a redirected
    POST loses its body in some clients)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and len(scope["path"]) > 1 and scope["path"].endswith("/"):
            scope = {**scope, "path": scope["path"].rstrip("/") or "/"}
            scope.pop("raw_path", None)
        await self.app(scope, receive, send)


class ClientOriginsOnly:
    """Refuse requests that a web page of another site makes through the visitor's browser (they
    carry its Origin): otherwise any site could use the model of whoever visits it."""

    def __init__(self, app, extra: tuple[str, ...] = ()):
        self.app = app
        self.allowed = re.compile(CLIENT_ORIGINS, re.IGNORECASE)
        self.extra = set(extra)

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            origin = dict(scope.get("headers") or ()).get(b"origin", b"").decode("latin-1")
            if origin and origin not in self.extra and not self.allowed.fullmatch(origin):
                error = ApiError(403, f"Requests from web pages of {origin} are refused. Pages served from this "
                                      "computer, desktop apps and browser extensions may call the API; allow "
                                      f"{origin} (roost serve --allow-origin, or Settings), or set an API key.",
                                 code="origin_not_allowed")
                await error.response()(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _host_name(value: str) -> str:
    """The host of a Host header, without its port ("[::1]:8000" -> "::1")."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1:value.find("]")] if "]" in value else value[1:]
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


LOOPBACK_HOST = re.compile(r"localhost|[a-z0-9.-]+\.localhost|127(\.[0-9]{1,3}){3}|::1")


class LoopbackHostsOnly:
    """A server on this computer's loopback address answers only requests addressed to it by a
    loopback name (`Host: localhost`, 127.0.0.1, [::1], this computer's own name): a web page that
    makes its own domain resolve to 127.0.0.1 (DNS rebinding) sends `Host: its-domain` and is
    refused, as Ollama does."""

    def __init__(self, app, extra: tuple[str, ...] = ()):
        import socket

        self.app = app
        self.extra = {h.lower() for h in extra} | {socket.gethostname().lower()}

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            host = _host_name(dict(scope.get("headers") or ()).get(b"host", b"").decode("latin-1"))
            if host and host not in self.extra and not LOOPBACK_HOST.fullmatch(host):
                error = ApiError(403, f"Requests addressed to {host} are refused: this server answers only "
                                      "localhost, 127.0.0.1 and [::1] (a web page can make its own domain point "
                                      "here). Serve on another address, or set an API key, to be reached by another "
                                      "name.", code="host_not_allowed")
                await error.response()(scope, receive, send)
                return
        await self.app(scope, receive, send)
