"""Work tried again: after a deadlock, a lock wait that ran out, or a connection the server ended.

The part of :class:`~api_pipeline.store.db.Database` that decides whether, when and how often a
failed statement or transaction is tried again (``retry_conflicts``), and opens a new
connection, once a run, when the server ended the session.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from api_pipeline.errors import DatabaseError
from api_pipeline.store.odbc import CONFLICT, CONNECTION_LOST, LOCK_TIMEOUT, UNREACHABLE, OdbcContext
from api_pipeline.store.odbc_errors import LOST_CONNECTION, driver_said, explain_odbc_error

log = logging.getLogger(__name__)

# Lock waits (SQL Server, PostgreSQL): one statement waits at most LOCK_WAIT_SECONDS for a lock
# another session holds, then fails and is tried again, LOCK_WAIT_ATTEMPTS times in all (half an
# hour), the run lock's heartbeat written between tries. A deadlock victim's work is tried again
# CONFLICT_ATTEMPTS times in all, after a short pause that doubles each time.
LOCK_WAIT_SECONDS = 30
LOCK_WAIT_ATTEMPTS = 60
CONFLICT_ATTEMPTS = 5
CONFLICT_PAUSE = 0.5  # seconds before the second attempt
# A connection the server ended (or the network dropped) during a run is opened again, once a run:
# tried at once and then after these pauses (seconds), as a restarting server comes back.
RECONNECTS = 1
RECONNECT_PAUSES = (0.0, 2.0, 8.0, 20.0)

T = TypeVar("T")


class Retries:
    """Trying work again on one connection (a part of ``db.Database``)."""

    lock: threading.RLock
    sleep: Callable[[float], None]
    # Called between the tries of work blocked by another session's locks.
    while_waiting: Callable[[], None] | None
    _conn: Any
    _context: OdbcContext
    _errors: tuple[type[BaseException], ...]
    _open_again: Callable[[], Any] | None
    _reconnects_left: int
    _broken: bool
    _lost_said: str
    _in_transaction: bool
    _open_queries: int
    _in_wait_hook: bool

    def _start_session(self) -> None:
        """The session settings a new connection needs (``db.Database`` runs the dialect's)."""
        raise NotImplementedError

    def retry_conflicts(self, action: Callable[[], T], what: str) -> T:
        """``action`` (whole transactions, or reads outside one), tried again when it was a deadlock
        victim or a serialization failure (a few times, pausing a little longer each time) or timed
        out waiting for another session's locks (for up to half an hour); between tries, the
        :attr:`while_waiting` hook runs. The last failure is raised, saying how often it was tried.

        Also tried again, on a new connection, when the server ended the session (ODBC, once a
        run: :meth:`_connected_again`). Whether a commit under way then happened cannot be known,
        so ``action`` must be a read or leave the same result when it is done twice: setting
        rows to values is, adding to them is not.
        """
        return self._retry(action, what, own_queries=0)

    def _retry(self, action: Callable[[], T], what: str, *, own_queries: int) -> T:
        """:meth:`retry_conflicts`; ``own_queries``: the open query results that are the action's own."""
        conflicts = waits = 0
        while True:
            try:
                return action()
            except DatabaseError as exc:
                if exc.kind == CONNECTION_LOST and self._connected_again(exc, what, own_queries):
                    continue
                if exc.kind == CONFLICT and conflicts + 1 < CONFLICT_ATTEMPTS:
                    conflicts += 1
                    pause = CONFLICT_PAUSE * 2 ** (conflicts - 1) * random.uniform(0.75, 1.25)  # noqa: S311
                    log.warning(
                        "%s: chosen as a deadlock victim by the database (another session, probably the "
                        "staging SQL, wanted the same rows); nothing was kept; trying again in %.1f s "
                        "(attempt %d of %d)",
                        what,
                        pause,
                        conflicts + 1,
                        CONFLICT_ATTEMPTS,
                    )
                elif exc.kind == LOCK_TIMEOUT and waits + 1 < LOCK_WAIT_ATTEMPTS:
                    waits += 1
                    pause = 0.0  # the lock wait itself was the pause
                    log.warning(
                        "%s: rows are locked by another session (probably the staging SQL) and have been for "
                        "%d s; still waiting (up to %d minutes)",
                        what,
                        waits * LOCK_WAIT_SECONDS,
                        LOCK_WAIT_ATTEMPTS * LOCK_WAIT_SECONDS // 60,
                    )
                else:
                    tries = conflicts + waits + 1
                    if tries == 1:
                        raise
                    raise DatabaseError(f"{what} failed after {tries} attempts: {exc}", kind=exc.kind) from None
            self._waited()
            if pause:
                self.sleep(pause)

    def _connected_again(self, exc: DatabaseError, what: str, own_queries: int) -> bool:
        """After the connection was lost: whether ``what`` may be tried again, on a connection opened
        here (at most :data:`RECONNECTS` times a run) or by another thread since it failed.

        Not when it is part of a larger unit of work: inside a transaction, or while another query's
        rows are being read (their cursor went with the connection); that unit fails instead.
        """
        if self._open_again is None:
            return False
        with self.lock:
            if self._in_transaction or self._open_queries > own_queries:
                return False
            if not self._broken:
                return True
            if self._reconnects_left <= 0:
                raise DatabaseError(
                    f"{exc}. The run had already lost its connection once and connected again; it does that only "
                    "once a run, so it stopped",
                    kind=CONNECTION_LOST,
                ) from None
            self._reconnects_left -= 1
            self._connect_again(what)
            return True

    def _connect_again(self, what: str) -> None:
        """A new connection in place of the lost one, with the session settings; raises when none can be had."""
        assert self._open_again is not None
        lost = self._lost_said
        try:
            self._conn.close()
        except Exception:  # noqa: BLE001 - a lost connection may not close cleanly
            log.debug("closing the lost connection failed", exc_info=True)
        failure: BaseException | None = None
        for pause in RECONNECT_PAUSES:
            if pause:
                self.sleep(pause)
            try:
                self._conn = self._open_again()
            except self._errors as exc:
                failure = exc
                if explain_odbc_error(exc, self._context).kind == UNREACHABLE:
                    continue  # still restarting, or not reachable yet
                break
            self._broken = False
            self._start_session()
            log.warning(
                "the connection to the database server was lost while %s (%s); connected again, and carrying on "
                "(the run does that once at most)",
                what,
                lost,
            )
            return
        assert failure is not None
        self._open_again = None  # this run has no connection any more: what follows fails as it is
        explained = explain_odbc_error(failure, self._context)
        if explained.kind == UNREACHABLE:
            why = (
                f"for {sum(RECONNECT_PAUSES):.0f} s ({driver_said(failure, self._context)}): the server may still be "
                "restarting, or the network is down. Run again once the server is back"
            )
        else:
            why = f"too: {explained}"
        raise DatabaseError(f"{LOST_CONNECTION} ({lost}). Connecting again failed {why}", kind=CONNECTION_LOST)

    def _waited(self) -> None:
        """Run the :attr:`while_waiting` hook: not from inside itself (it may wait too), nor while
        another query's result is open on the connection (the hook commits)."""
        if self.while_waiting is None or self._in_wait_hook or self._open_queries > 1:
            return
        self._in_wait_hook = True
        try:
            self.while_waiting()
        finally:
            self._in_wait_hook = False
