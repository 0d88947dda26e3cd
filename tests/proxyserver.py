"""A forwarding HTTP proxy on 127.0.0.1 that counts what passes through it (for tests that check
that downloads go through the proxy the user saved)."""

from __future__ import annotations

import http.client
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

HOP_BY_HOP = {"connection", "keep-alive", "proxy-authorization", "proxy-connection", "te", "trailer",
              "transfer-encoding", "upgrade"}


class ProxyServer:
    def __init__(self):
        self.requests: list[str] = []  # "METHOD absolute-url", in order
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"  # one request per connection: the body ends when it closes

            def log_message(self, *args):
                pass

            def _forward(self):
                outer.requests.append(f"{self.command} {self.path}")
                url = urlsplit(self.path)
                if url.scheme != "http" or not url.hostname:
                    self.send_error(400, "this test proxy forwards plain http:// URLs only")
                    return
                conn = http.client.HTTPConnection(url.hostname, url.port or 80, timeout=30)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
                conn.request(self.command, url.path + (f"?{url.query}" if url.query else ""), headers=headers)
                resp = conn.getresponse()
                self.send_response(resp.status, resp.reason)
                for k, v in resp.getheaders():
                    if k.lower() not in HOP_BY_HOP:
                        self.send_header(k, v)
                self.end_headers()
                if self.command != "HEAD":
                    while chunk := resp.read(65536):
                        self.wfile.write(chunk)
                conn.close()

            do_GET = do_HEAD = _forward

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_port}"

    def start(self) -> ProxyServer:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
