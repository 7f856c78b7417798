"""The simulator's HTTP plumbing: a loopback server, its request handler, and the replies they write.

What a request means and what DfE would answer is :mod:`api_pipeline.rehearsal.simulator`'s; this
module only reads a request (method, path, headers, a bounded body), hands it to the simulator's
``handle`` and writes the :class:`Reply` back, or closes the connection unanswered. Standard
library only, like the simulator.
"""

from __future__ import annotations

import contextlib
import json
import socket
import ssl
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

MAX_BODY_BYTES = 64 * 1024 * 1024


@dataclass
class Reply:
    """One answer: what the handler writes, or, with ``drop``, the connection closed unanswered."""

    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)
    drop: bool = False  # close the connection without answering
    records: int = 0  # items in the request body, for the log


Handle = Callable[[str, str, dict[str, str], bytes], Reply]
"""What serves a request: (method, path, headers, body) -> the reply."""


def json_reply(status: int, payload: Any, **headers: str) -> Reply:
    """``payload`` as a JSON answer."""
    return Reply(status, json.dumps(payload).encode("utf-8"), headers=headers)


def gateway_reply(status: int, message: str, **headers: str) -> Reply:
    """A refusal in the shape DfE's API gateway gives one (``statusCode`` and ``message``)."""
    return json_reply(status, {"statusCode": status, "message": message}, **headers)


class LoopbackServer(ThreadingHTTPServer):
    """A threading HTTP server (TLS optional) that passes each request to ``handle`` and can cut
    kept-alive connections when it stops."""

    daemon_threads = True
    request_queue_size = 128
    allow_reuse_address = sys.platform != "win32"  # on Windows it would let two servers share a port

    def __init__(self, address: tuple[str, int], handle: Handle, tls: ssl.SSLContext | None = None) -> None:
        self.handle = handle
        self.tls = tls
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()
        super().__init__(address, _Handler)

    def track(self, conn: socket.socket, is_open: bool) -> None:
        with self._open_lock:
            (self._open.add if is_open else self._open.discard)(conn)

    def close_connections(self) -> None:
        """Cut kept-alive connections so a stopped simulator really stops answering."""
        with self._open_lock:
            for conn in self._open:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)

    def get_request(self) -> tuple[socket.socket, Any]:
        conn, address = super().get_request()
        if self.tls is not None:  # the handshake happens in the request's own thread (_Handler.setup)
            conn = self.tls.wrap_socket(conn, server_side=True, do_handshake_on_connect=False)
        return conn, address

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A dropped client, or one that refused our certificate, is the client's business.
        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError, ssl.SSLError)):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "CSCAPISimulator/1.0"
    disable_nagle_algorithm = True  # headers and body go out as separate writes: avoid 40 ms stalls
    server: LoopbackServer

    def setup(self) -> None:
        if isinstance(self.request, ssl.SSLSocket):
            self.request.settimeout(10)
            self.request.do_handshake()
            self.request.settimeout(None)
        super().setup()
        self.server.track(self.connection, True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.track(self.connection, False)

    def log_message(self, format: str, *args: Any) -> None:
        """Silent: per-request stderr lines would slow benchmarks and clutter test output."""

    def do_POST(self) -> None:
        body = self._read_body()
        if body is None:
            self.close_connection = True
            self._write(gateway_reply(413, "Request body too large or unreadable"))
            return
        headers = dict(self.headers.items())
        reply = self.server.handle(self.command, self.path, headers, body)
        if reply.drop:
            self.close_connection = True
            return
        self._write(reply)

    do_GET = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = do_POST

    def _read_body(self) -> bytes | None:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            return None
        if not 0 <= length <= MAX_BODY_BYTES:
            return None
        return self.rfile.read(length) if length else b""

    def _write(self, reply: Reply) -> None:
        self.send_response(reply.status)
        for name, value in reply.headers.items():
            self.send_header(name, value)
        if reply.status != 204:
            if reply.body:
                self.send_header("Content-Type", reply.content_type)
            self.send_header("Content-Length", str(len(reply.body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if reply.body and self.command != "HEAD":
            self.wfile.write(reply.body)
