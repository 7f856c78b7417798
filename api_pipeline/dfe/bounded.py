"""Every answer bounded: one POST, no redirects, a total deadline and a size cap (DESIGN §6).

``requests`` times each socket operation, not the exchange: a host that trickles a byte a
second never trips a read timeout, and a body without end is read until memory runs out.
:func:`post` gives a request a deadline for the whole exchange (sending, the headers, the
body) and reads at most ``max_bytes`` of the body. A watchdog enforces the deadline: when
it passes, it shuts down the sockets the request is using, so a read blocked on a slow
host returns at once. The connections of :data:`POOL_CLASSES` tell the watchdog which
sockets those are (``TrustStoreAdapter`` mounts them on the run's session); on any other
session the deadline is checked between the chunks of the body only.

The TLS handshake is not watched (its socket is not the connection's until it ends): it is
bounded by the connect timeout of each of its reads, as before.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from typing import Any

import requests
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from api_pipeline.errors import AnswerTooLarge, AnswerTooSlow

MAX_ANSWER_BYTES = 1024 * 1024  # a 100-receipt answer is about 7 KB; DfE's and Azure's errors, a few KB
CHUNK_BYTES = 16 * 1024


def describe_size(limit: int) -> str:
    """``1 MiB`` for the cap in messages."""
    if limit % (1024 * 1024) == 0:
        return f"{limit // (1024 * 1024)} MiB"
    return f"{limit // 1024} KiB" if limit % 1024 == 0 else f"{limit} bytes"


class _Watch:
    """A deadline for one exchange, and the connections and sockets to cut when it passes."""

    def __init__(self, seconds: float) -> None:
        self.expired = threading.Event()
        self._lock = threading.Lock()
        self._targets: list[Any] = []  # connections and sockets the exchange is using
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True

    def start(self) -> None:
        self._timer.start()

    def stop(self) -> None:
        self._timer.cancel()

    def add(self, target: Any) -> None:
        """Watch a connection or a socket; too late if the deadline has passed already."""
        with self._lock:
            if self.expired.is_set():
                raise TimeoutError("the request's deadline has passed")
            self._targets.append(target)

    def _expire(self) -> None:
        with self._lock:
            self.expired.set()
            targets = list(self._targets)
        for target in targets:
            _cut(target)


def _cut(target: Any) -> None:
    """Shut a socket (or a connection's socket) down so a blocked read returns now; its owner closes it."""
    sock = target if isinstance(target, socket.socket) else getattr(target, "sock", None)
    if sock is None:
        return
    with contextlib.suppress(OSError):
        # socket.socket's own shutdown, not SSLSocket's, which would also drop its TLS state
        # under the feet of the thread reading from it.
        socket.socket.shutdown(sock, socket.SHUT_RDWR)


_local = threading.local()  # the watches of the exchanges this thread is making, innermost last


def _watches() -> list[_Watch]:
    stack = getattr(_local, "watches", None)
    if stack is None:
        stack = _local.watches = []
    return stack


def _watch(target: Any) -> None:
    stack = _watches()
    if stack:
        stack[-1].add(target)


class _Watched:
    """Tells the current watch about the connection while the request is sent, then about its socket.

    The socket itself is what must be cut while the answer is read: when the answer says
    ``Connection: close``, the connection hands its socket to the response and forgets it.
    """

    sock: Any

    def request(self, *args: Any, **kwargs: Any) -> None:
        _watch(self)
        super().request(*args, **kwargs)  # type: ignore[misc]

    def getresponse(self, *args: Any, **kwargs: Any) -> Any:
        if self.sock is not None:
            _watch(self.sock)
        return super().getresponse(*args, **kwargs)  # type: ignore[misc]


class _WatchedHTTPConnection(_Watched, HTTPConnection):
    pass


class _WatchedHTTPSConnection(_Watched, HTTPSConnection):
    pass


class _WatchedHTTPConnectionPool(HTTPConnectionPool):
    ConnectionCls = _WatchedHTTPConnection


class _WatchedHTTPSConnectionPool(HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPSConnection


# For a urllib3 PoolManager's ``pool_classes_by_scheme``.
POOL_CLASSES: dict[str, type[HTTPConnectionPool]] = {
    "http": _WatchedHTTPConnectionPool,
    "https": _WatchedHTTPSConnectionPool,
}


@contextlib.contextmanager
def _deadline(seconds: float) -> Iterator[_Watch]:
    watch = _Watch(seconds)
    stack = _watches()
    stack.append(watch)
    watch.start()
    try:
        yield watch
    finally:
        watch.stop()
        stack.remove(watch)


def post(
    session: requests.Session, url: str, *, seconds: float, max_bytes: int = MAX_ANSWER_BYTES, **kwargs: Any
) -> requests.Response:
    """POST and read the whole answer within ``seconds``, never following a redirect.

    Returns the response with its body read (``.content`` works as usual). Raises
    :class:`AnswerTooSlow` when the deadline passes, :class:`AnswerTooLarge` when the body
    is bigger than ``max_bytes``, and whatever ``requests`` raises otherwise.
    """
    with _deadline(seconds) as watch:
        try:
            response = session.post(url, allow_redirects=False, stream=True, **kwargs)
        except (requests.RequestException, OSError):
            if watch.expired.is_set():
                raise AnswerTooSlow from None
            raise
        try:
            response._content = _read_body(response, watch, max_bytes)
        except (requests.RequestException, OSError):
            if watch.expired.is_set():
                raise AnswerTooSlow from None
            raise
        finally:
            response.close()  # releases a fully read connection for reuse; closes any other
        if watch.expired.is_set():  # the watchdog ended the body early: what came is not the answer
            raise AnswerTooSlow
    return response


def _read_body(response: requests.Response, watch: _Watch, max_bytes: int) -> bytes:
    declared = response.headers.get("Content-Length", "").strip()
    if declared.isdigit() and int(declared) > max_bytes:
        raise AnswerTooLarge
    chunks: list[bytes] = []
    total = 0
    for chunk in response.iter_content(CHUNK_BYTES):
        total += len(chunk)
        if total > max_bytes:
            raise AnswerTooLarge
        if watch.expired.is_set():
            raise AnswerTooSlow
        chunks.append(chunk)
    return b"".join(chunks)
