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
