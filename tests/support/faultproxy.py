"""A small HTTP proxy on loopback between the code under test and SeaweedFS, that injects faults.

Requests are forwarded byte-for-byte (headers untouched, so SigV4 signatures stay valid). Rules:
- `fail(n, ...)`: the next n matching requests get an S3 503 SlowDown without reaching S3;
- `truncate(n, ...)`: the next n matching responses are cut off half-way through their body;
- `drop_after(n, ...)`: after n matching requests, every further one is answered 503;
- `down = True`: every request is answered by closing the connection (S3 gone);
- `frozen = True`: every request is read and left unanswered while it stays so (S3 hung).
It records every request as (method, path) in `seen`.
"""

from __future__ import annotations

import http.client
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

SLOWDOWN = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message></Error>"
)


@dataclass
class Rule:
    kind: str  # fail | truncate | drop_after
    count: int
    method: str | None = None
    path_contains: str | None = None
    hits: int = 0

    def matches(self, method: str, path: str) -> bool:
        return (self.method is None or self.method == method) and (
            self.path_contains is None or self.path_contains in path
        )


class _Handler(BaseHTTPRequestHandler):
    """One request through the proxy: decided by `proxy._decide`, then answered with a fault or forwarded."""

    protocol_version = "HTTP/1.1"
    proxy: FaultProxy  # set on the subclass each proxy makes

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _chunked(self) -> bytes:
        raw = b""
        while True:
            line = self.rfile.readline()
            raw += line
            size = int(line.split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while True:
                    trailer = self.rfile.readline()
                    raw += trailer
                    if trailer in (b"\r\n", b"\n", b""):
                        return raw
            raw += self.rfile.read(size + 2)

    def _body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._chunked()
        return self.rfile.read(int(self.headers.get("Content-Length", "0") or 0))

    def _hang_up(self) -> None:
        self.close_connection = True
        self.connection.shutdown(socket.SHUT_RDWR)

    def _slow_down(self) -> None:
        self.send_response_only(503, "Slow Down")
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(SLOWDOWN)))
        self.end_headers()
        self.wfile.write(SLOWDOWN)

    def _handle(self) -> None:
        body = self._body()
        while self.proxy.frozen:
            time.sleep(0.05)
        action = self.proxy._decide(self.command, self.path)
        if action == "down":
            self._hang_up()
        elif action == "fail":
            self._slow_down()
        else:
            self._forward(body, truncate=action == "truncate")

    def _forward(self, body: bytes, truncate: bool) -> None:
        conn = http.client.HTTPConnection(*self.proxy._up, timeout=60)
        try:
            conn.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
            for k, v in self.headers.items():
                conn.putheader(k, v)
            conn.endheaders(body or None)
            resp = conn.getresponse()
            data = resp.read()
            self.send_response_only(resp.status, resp.reason)
            for k, v in resp.getheaders():
                if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                    self.send_header(k, v)
            length = resp.getheader("Content-Length") if self.command == "HEAD" else str(len(data))
            if length is not None:
                self.send_header("Content-Length", length)
            self.end_headers()
            if self.command == "HEAD":
                return
            if truncate and len(data) > 1:
                self.wfile.write(data[: len(data) // 2])
                self.wfile.flush()
                self._hang_up()
                return
            self.wfile.write(data)
        finally:
            conn.close()

    do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _handle


@dataclass
class FaultProxy:
    upstream: str
    rules: list[Rule] = field(default_factory=list)
    seen: list[tuple[str, str]] = field(default_factory=list)
    down: bool = False
    frozen: bool = False

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        up = urlsplit(self.upstream)
        self._up = (up.hostname or "127.0.0.1", up.port or 80)
        handler = type("Handler", (_Handler,), {"proxy": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def _decide(self, method: str, path: str) -> str:
        with self._lock:
            self.seen.append((method, path))
            if self.down:
                return "down"
            for rule in self.rules:
                if not rule.matches(method, path):
                    continue
                if rule.kind == "drop_after":
                    rule.hits += 1
                    if rule.hits > rule.count:
                        return "fail"
                    continue
                if rule.hits < rule.count:
                    rule.hits += 1
                    return rule.kind
            return "forward"

    def fail(self, n: int, method: str | None = None, path_contains: str | None = None) -> None:
        with self._lock:
            self.rules.append(Rule("fail", n, method, path_contains))

    def truncate(self, n: int, method: str | None = "GET", path_contains: str | None = None) -> None:
        with self._lock:
            self.rules.append(Rule("truncate", n, method, path_contains))

    def drop_after(self, n: int, method: str | None = None, path_contains: str | None = None) -> None:
        with self._lock:
            self.rules.append(Rule("drop_after", n, method, path_contains))

    def reset(self) -> None:
        with self._lock:
            self.rules.clear()
            self.seen.clear()
            self.down = False

    def requests(self, method: str, path_contains: str = "") -> list[str]:
        with self._lock:
            return [p for m, p in self.seen if m == method and path_contains in p]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
