"""A token endpoint and a DfE receiver on 127.0.0.1 that answer the way a hostile or broken host might.

The simulator answers as DfE does; this server answers as a test scripts it, down to the
bytes and their pace: redirects, answers trickled a byte at a time, bodies without end,
huge or deeply nested error bodies, bodies that echo the request's secrets or records.
Every loop in it stops when the server is closed, so a test never leaves a thread writing.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

RECEIVER_PATH = "/children-in-social-care-data-receiver-test/1"
TOKEN_PATH = "/tenant/oauth2/v2.0/token"  # noqa: S105 - a URL path, not a password


@dataclass
class Seen:
    """One request as the server read it."""

    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Exchange:
    """What an answer function gets: the request, and the means to write any answer at any pace."""

    handler: BaseHTTPRequestHandler
    seen: Seen
    stopping: threading.Event
    token: str

    @property
    def records(self) -> list:
        try:
            parsed = json.loads(self.seen.body)
        except ValueError:
            return []
        return parsed if isinstance(parsed, list) else []

    def write(self, data: bytes) -> bool:
        """Write raw bytes; False once the client has gone."""
        try:
            self.handler.wfile.write(data)
            self.handler.wfile.flush()
        except OSError:
            return False
        return True

    def reply(
        self, status: int, body: bytes = b"", headers: dict[str, str] | None = None, *, reason: str = "Whatever"
    ) -> None:
        head = f"HTTP/1.1 {status} {reason}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n"
        head += "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
        self.write(head.encode("latin-1") + b"\r\n" + body)

    def receipts(self, length: int = 0) -> None:
        """200 with one receipt per record (each padded to ``length`` characters if given)."""
        made = [f"2026-03-01_21:04:33.12_{secrets.token_hex(16)}.json" for _ in self.records]
        if length:
            made = [(r[:-5] + "x" * length)[: length - 5] + ".json" for r in made]
        self.reply(200, json.dumps(made).encode(), {"Content-Type": "application/json"})

    def sleep(self, seconds: float) -> bool:
        """Wait; False when the server is closing."""
        return not self.stopping.wait(seconds)


Answer = Callable[[Exchange], None]


def issue_token(exchange: Exchange) -> None:
    body = json.dumps({"token_type": "Bearer", "expires_in": 3600, "access_token": exchange.token}).encode()
    exchange.reply(200, body, {"Content-Type": "application/json"})


@dataclass
class Hostile:
    """The server. ``receive`` answers receiver POSTs; ``token`` answers token POSTs (a token by default)."""

    receive: Answer
    token_answer: Answer = issue_token
    token: str = field(default_factory=lambda: "hostile-token-" + secrets.token_hex(12))
    seen: list[Seen] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.stopping = threading.Event()
        hostile = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                seen = Seen(self.path, dict(self.headers.items()), self.rfile.read(length) if length else b"")
                hostile.seen.append(seen)
                exchange = Exchange(self, seen, hostile.stopping, hostile.token)
                if self.path.endswith("/token"):
                    hostile.token_answer(exchange)
                else:
                    hostile.receive(exchange)
                self.close_connection = True

            do_GET = do_POST

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_endpoint(self) -> str:
        return self.base_url + RECEIVER_PATH

    @property
    def token_endpoint(self) -> str:
        return self.base_url + TOKEN_PATH

    def env(self, *, token_from: Hostile | None = None) -> dict[str, str]:
        """Settings pointing the tool at this server (the token endpoint: this one or ``token_from``)."""
        token_host = token_from or self
        return {
            "API_ENDPOINT": self.api_endpoint,
            "LA_CODE": "999",
            "TOKEN_ENDPOINT": token_host.token_endpoint,
            "CLIENT_ID": "hostile-client",
            "CLIENT_SECRET": "hostile-client-secret-Do-Not-Show-1",
            "SCOPE": "api://hostile/.default",
            "SUPPLIER_KEY": "hostile-supplier-key-Do-Not-Show-2",
        }

    def close(self) -> None:
        self.stopping.set()
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> Hostile:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


# -- answers ------------------------------------------------------------------------------------------------


def redirect_to(url: str, status: int = 307) -> Answer:
    def answer(exchange: Exchange) -> None:
        exchange.reply(status, b"", {"Location": url})

    return answer


class Trickle:
    """An answer that comes a byte every ``every`` seconds, for up to ``seconds``, after ``head``.

    ``ends`` says how each exchange ended: the client hung up, or the trickle ran its course (or
    the server closed). A client that gives up on a slow answer is told apart from one that
    waited it out by what happened, not by how long the test took.
    """

    HUNG_UP = "the client hung up"
    RAN_ITS_COURSE = "the trickle ran its course"
    CLOSED = "the server closed"

    def __init__(self, head: bytes, byte: bytes, seconds: float, every: float) -> None:
        self.head, self.byte, self.seconds, self.every = head, byte, seconds, every
        self.ends: list[str] = []
        self._ended = threading.Condition()

    def __call__(self, exchange: Exchange) -> None:
        end = self._trickle(exchange)
        with self._ended:
            self.ends.append(end)
            self._ended.notify_all()

    def _trickle(self, exchange: Exchange) -> str:
        if not exchange.write(self.head):
            return self.HUNG_UP
        started = time.monotonic()
        while time.monotonic() - started < self.seconds:
            if not exchange.sleep(self.every):
                return self.CLOSED
            if not exchange.write(self.byte):  # the first write after a hang-up may still succeed
                return self.HUNG_UP
        return self.RAN_ITS_COURSE

    def wait_for_ends(self, count: int) -> list[str]:
        """How the first ``count`` exchanges ended, once they have (a hang-up is noticed at the
        next byte or the one after); waits at most a little past ``seconds``."""
        with self._ended:
            self._ended.wait_for(lambda: len(self.ends) >= count, timeout=self.seconds + 10)
            return list(self.ends)


def trickle_body(seconds: float = 30.0, every: float = 0.2) -> Trickle:
    """200 whose promised body comes a byte at a time, for up to ``seconds``."""
    count = int(seconds / every) + 10
    head = f"HTTP/1.1 200 OK\r\nContent-Length: {count}\r\nConnection: close\r\n\r\n".encode()
    return Trickle(head, b"[", seconds, every)


def trickle_headers(seconds: float = 30.0, every: float = 0.2) -> Trickle:
    """A status line, then one header that never ends, a byte at a time, for up to ``seconds``."""
    return Trickle(b"HTTP/1.1 200 OK\r\nX-Slow: ", b"z", seconds, every)


def endless_body(limit: int = 64 * 1024 * 1024) -> Answer:
    """200 with a body that goes on (up to ``limit`` bytes, so a test of old code still ends)."""

    def answer(exchange: Exchange) -> None:
        exchange.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n[")
        chunk = b'"' + b"x" * 65530 + b'",'
        sent = 0
        while sent < limit and not exchange.stopping.is_set() and exchange.write(chunk):
            sent += len(chunk)

    return answer


def answer_with(status: int, body: bytes, headers: dict[str, str] | None = None) -> Answer:
    def answer(exchange: Exchange) -> None:
        exchange.reply(status, body, headers)

    return answer


def nested_json(depth: int = 100_000) -> bytes:
    return b'{"error":' * depth + b"1" + b"}" * depth
