"""A fault-injecting HTTP proxy in front of the real S3 server: answers chosen requests with S3's throttling
error (``503 SlowDown``) and forwards everything else unchanged (SigV4 signatures hold: the Host header
and the bytes travel as signed). Tests point ``AWS_ENDPOINT_URL`` at it to see how clients ride out
throttling, or fail one record with a clear reason when it never ends."""

from __future__ import annotations

import http.client
import threading
from collections import Counter
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

SLOW_DOWN = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
             b"<Message>Please reduce your request rate.</Message></Error>")

# (method, path, n-th request to this method+path, counting from 1) -> throttle?
Rule = Callable[[str, str, int], bool]


class ThrottlingProxy:
    """``with ThrottlingProxy(upstream, rule) as proxy: ... proxy.endpoint``; ``proxy.throttled`` counts 503s by path."""

    def __init__(self, upstream: str, rule: Rule) -> None:
        up = urlsplit(upstream)
        self.upstream = (up.hostname, up.port)
        self.rule = rule
        self.seen: Counter = Counter()
        self.throttled: Counter = Counter()
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                path = self.path.split("?", 1)[0]
                with proxy._lock:
                    proxy.seen[(self.command, path)] += 1
                    n = proxy.seen[(self.command, path)]
                    throttle = proxy.rule(self.command, path, n)
                    if throttle:
                        proxy.throttled[path] += 1
                if throttle:
                    self.send_response(503)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(SLOW_DOWN)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(SLOW_DOWN)
                    return
                conn = http.client.HTTPConnection(*proxy.upstream, timeout=60)
                try:
                    conn.request(self.command, self.path, body=body or None, headers=dict(self.headers.items()))
                    resp = conn.getresponse()
                    data = resp.read()
                    self.send_response(resp.status, resp.reason)
                    for k, v in resp.getheaders():
                        if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                            self.send_header(k, v)
                    # a HEAD answer has no body but tells the object's size
                    size = resp.getheader("Content-Length", "0") if self.command == "HEAD" else str(len(data))
                    self.send_header("Content-Length", size)
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(data)
                finally:
                    conn.close()

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> ThrottlingProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
