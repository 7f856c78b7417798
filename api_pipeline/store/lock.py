"""One run per staging table at a time, across machines (DESIGN §7).

The lock is a row in a small table beside the staging table, so it works
wherever the database is shared. It is keyed on the table as the database resolves
its name, so ``ssd_api_data_staging``, ``dbo.ssd_api_data_staging`` and
``SSD_API_DATA_STAGING`` are one lock when they are one table. A run refreshes its
heartbeat as it goes, all through one :class:`Heartbeat` (before sending and after writing
back a batch, and while it waits for the staging SQL's locks; at most once a minute); a lock
whose heartbeat is older than ``stale_after`` belongs to a run that crashed or was killed, and the next run takes it
over. Each heartbeat checks that this run still holds the lock: a run that was taken
over stops.

Every time in the lock table is the database server's (``Dialect.server_utc_now``), and
so is every age: the server works it out in the statement that reads the lock. Machines'
clocks differ, by hours when one is wrong, and a lock judged by them was once taken from a
live run by a machine whose clock was ahead of that run's. The only local clock the lock
reads is a monotonic one, to space heartbeats out: it never steps back, so a machine's clock
being put back cannot silence a run. SQLite has no server: its times are those of the
machine running the tool, which is the machine its file is on.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import socket
import sys
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from api_pipeline.errors import ConfigError, DatabaseError, RunLocked
from api_pipeline.stopping import StopRequest
from api_pipeline.store.catalogue import column_names, resolve_table
from api_pipeline.store.columns import LOCK_HOLDER_SIZE, LOCK_NAME_SIZE
from api_pipeline.store.db import Database, validate_table_name
from api_pipeline.store.odbc import KEY_VIOLATION
from api_pipeline.store.tables import lock_ddl, lock_table_name

log = logging.getLogger(__name__)

DEFAULT_STALE_AFTER = timedelta(hours=1)
BEAT_EVERY = timedelta(minutes=1)  # far inside stale_after; saves a commit per batch
# A heartbeat this far ahead of the server's clock was written by another clock: see RunLock._age.
# Below it: SQL Server's DATETIME rounding (2 ms) and DATEDIFF's whole seconds.
SKEW_TOLERANCE = timedelta(seconds=2)


def lock_key(resolved: str) -> str:
    """The lock row's key for a table: its resolved name, shortened (uniquely) to fit the column."""
    if len(resolved) <= LOCK_NAME_SIZE:
        return resolved
    digest = hashlib.sha256(resolved.encode("utf-8")).hexdigest()[:32]
    return f"{resolved[: LOCK_NAME_SIZE - len(digest) - 1]}~{digest}"


def process_alive(pid: int) -> bool:
    """Whether a process with this id is running on this machine."""
    if pid <= 0:
        return False
    if sys.platform == "win32":
        import ctypes  # Windows only

        kernel32 = ctypes.windll.kernel32  # type: ignore[attr-defined]
        handle = kernel32.OpenProcess(0x1000, False, pid)  # PROCESS_QUERY_LIMITED_INFORMATION
        if not handle:
            return False
        try:
            code = ctypes.c_ulong()
            kernel32.GetExitCodeProcess(handle, ctypes.byref(code))
            return code.value == 259  # STILL_ACTIVE
        finally:
            kernel32.CloseHandle(handle)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


_HOLDER = re.compile(r"^(?P<host>\S+) pid (?P<pid>\d+) run ")


class RunLock:
    """``with RunLock(db, table):`` — raises :class:`RunLocked` if a live run holds it.

    ``stale_after`` defaults to :data:`DEFAULT_STALE_AFTER`. ``monotonic`` is the clock that
    spaces heartbeats out (seconds; tests pass one they move by hand): never a wall clock.
    """

    def __init__(
        self,
        db: Database,
        table: str,
        *,
        run_id: str,
        stale_after: timedelta | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.db = db
        self.table = validate_table_name(table)
        # Both set again in acquire(), from the table as the database resolves its name.
        self.name = table
        self.lock_table = validate_table_name(lock_table_name(table))
        self.holder = f"{socket.gethostname()} pid {os.getpid()} run {run_id}"[:LOCK_HOLDER_SIZE]
        self.stale_after = DEFAULT_STALE_AFTER if stale_after is None else stale_after
        self.monotonic = monotonic
        self._held = False
        self._last_beat: float | None = None
        self._lost: RunLocked | None = None  # why this run no longer holds the lock, once it knows

    def _resolve(self) -> None:
        """Key the lock on the table the database means (one lock per table, however TABLE_NAME spells
        it) and keep the lock table beside it."""
        resolved = resolve_table(self.db, self.table)
        if resolved is None:  # no such table (the run checks first): key on the spelling given
            return
        self.name = lock_key(resolved)
        try:
            self.lock_table = validate_table_name(lock_table_name(resolved))
        except ConfigError:  # a schema name no TABLE_NAME could spell (CORP\user): keep the table given
            log.debug("run lock table kept as %s", self.lock_table)

    def acquire(self) -> None:
        self._resolve()
        if column_names(self.db, self.lock_table) is None:
            try:
                with self.db.transaction():
                    self.db.execute(lock_ddl(self.db.dialect, self.lock_table))
            except DatabaseError as exc:
                raise DatabaseError(
                    f"the run lock table {self.lock_table} does not exist and could not be created ({exc}). "
                    "Ask your DBA to create it: csc-api-pipeline init-db --print"
                ) from None
        now = self.db.dialect.server_utc_now
        refused: RunLocked | None = None
        with self.db.transaction():
            row = next(
                self.db.query(
                    f"SELECT holder, {self.db.dialect.seconds_since('heartbeat_at')} "  # noqa: S608
                    f"FROM {self.lock_table} WHERE lock_name = ?",
                    (self.name,),
                ),
                None,
            )
            if row is None:
                try:
                    self.db.execute(
                        f"INSERT INTO {self.lock_table} (lock_name, holder, acquired_at, heartbeat_at) "
                        f"VALUES (?, ?, {now}, {now})",
                        (self.name, self.holder),
                    )
                except DatabaseError as exc:
                    if exc.kind != KEY_VIOLATION:  # e.g. no INSERT permission: not another run
                        raise DatabaseError(f"could not take the run lock in {self.lock_table}: {exc}") from None
                    raise RunLocked(
                        f"another run took the lock on {self.table} at the same moment; this one did nothing"
                    ) from None
            else:
                holder = row[0]
                age, ahead = self._age(row[1])
                if not self._holder_is_dead(holder) and (ahead is not None or age < self.stale_after.total_seconds()):
                    if ahead is not None:
                        self._count_from_now(holder)
                    # Raised once the transaction is committed, with _count_from_now's change.
                    refused = RunLocked(
                        f"another run is already working on {self.table} ({holder}, last active {int(age)} s ago "
                        f"by the database's clock{_skew_note(ahead)}). Only one run per table at a time; this one "
                        f"did nothing. {self._when_it_is_free(holder, counted_from_now=ahead is not None)}"
                    )
                else:
                    taken = self.db.execute(
                        f"UPDATE {self.lock_table} SET holder = ?, acquired_at = {now}, heartbeat_at = {now} "
                        "WHERE lock_name = ? AND holder = ?",
                        (self.holder, self.name, holder),
                    )
                    if taken != 1:
                        raise RunLocked(
                            f"another run took the lock on {self.table} at the same moment; this one did nothing"
                        )
                    log.warning(
                        "took over the run lock on %s from a run that stopped without releasing it (%s, last active "
                        "%d s ago by the database's clock%s)",
                        self.table,
                        holder,
                        int(age),
                        _skew_note(ahead),
                    )
        if refused is not None:
            raise refused
        self._held = True
        self._last_beat = self.monotonic()

    @staticmethod
    def _age(seconds: Any) -> tuple[float, float | None]:
        """How long ago a heartbeat was, by the server's clock, never negative; and, for one that
        is not in the server's past, how far ahead of it it is (``inf``: not a time at all).

        Only another clock writes a heartbeat ahead of the server's: an earlier version of this
        tool wrote the clock of the machine it ran on, and a server's (or, for SQLite, the
        machine's) clock may have been put back since. How long ago such a heartbeat really
        was cannot be known, only that it was no later than now: so it counts as written now
        (:meth:`_count_from_now`), and unless its holder is known to be dead the lock is refused.
        Counting it as stale could take a live run's lock; leaving it as it is would block every
        run for as long as that clock was ahead (days, if it was days).
        """
        if seconds is None:
            return 0.0, float("inf")
        age = float(seconds)
        if age < -SKEW_TOLERANCE.total_seconds():
            return 0.0, -age
        return max(age, 0.0), None

    def _count_from_now(self, holder: str) -> None:
        """Rewrite a heartbeat that is ahead of the server's clock (:meth:`_age`) as the server's
        now, the latest it can really have been: the lock then expires ``stale_after`` from
        here by the server's clock, unless its run shows signs of life, whatever clock it came from."""
        self.db.execute(
            f"UPDATE {self.lock_table} SET heartbeat_at = {self.db.dialect.server_utc_now} "
            "WHERE lock_name = ? AND holder = ?",
            (self.name, holder),
        )

    def _when_it_is_free(self, holder: str, *, counted_from_now: bool) -> str:
        """When the next run may have the lock a live holder keeps: as soon as its process ends, for
        one on this machine (whose process is seen to be still there); else once it has been silent
        for ``stale_after``."""
        expires = (
            f"{int(self.stale_after.total_seconds() // 60)} minutes after its last activity"
            f"{', counted from now' if counted_from_now else ''}"
        )
        match = _HOLDER.match(holder or "")
        if match is None or match["host"] != socket.gethostname():
            return f"If that run crashed, its lock expires {expires}."
        pid = match["pid"]
        return (
            f"Its process, pid {pid}, is still running on this computer: the next run takes the lock over as "
            f"soon as that process has ended. If no run should be working, see what pid {pid} is (Task "
            "Manager's Details tab on Windows): the one-file exe runs as two processes, and Windows gives a "
            f"process id to a new process once its owner has ended. Should it go on running, the lock expires "
            f"{expires}."
        )

    @staticmethod
    def _holder_is_dead(holder: str) -> bool:
        """A holder on this machine whose process is gone crashed or was killed: no need to wait.

        One left by this very process is dead too: runs in a process follow one another, so it is
        a lock an earlier run could not release (its database connection was lost).
        """
        match = _HOLDER.match(holder or "")
        if match is None or match["host"] != socket.gethostname():
            return False
        pid = int(match["pid"])
        return pid == os.getpid() or not process_alive(pid)

    def heartbeat(self, *, force: bool = False) -> None:
        """Show the run is alive: written when BEAT_EVERY has passed since the last one (or ``force``).

        Raises :class:`RunLocked` when another run has taken the lock over (this one was silent
        for longer than ``stale_after``), and again on every call after that: the caller stops,
        and no thread of this run sends anything more.
        """
        if self._lost is not None:
            raise RunLocked(str(self._lost))
        if not self._held:
            return
        now = self.monotonic()
        if not force and self._last_beat is not None and now - self._last_beat < BEAT_EVERY.total_seconds():
            return
        self._last_beat = now

        def beat() -> int:
            with self.db.transaction():
                return self.db.execute(
                    f"UPDATE {self.lock_table} SET heartbeat_at = {self.db.dialect.server_utc_now} "
                    "WHERE lock_name = ? AND holder = ?",
                    (self.name, self.holder),
                )

        with self.db.lock:  # the send, write-back and reading threads share the connection
            if self.db.retry_conflicts(beat, "refreshing the run lock") == 1:
                return
            holder = self.db.scalar(
                f"SELECT holder FROM {self.lock_table} WHERE lock_name = ?",  # noqa: S608
                (self.name,),
            )
        if holder == self.holder:  # a driver that reports no row count: still ours
            return
        self._held = False
        self.db.while_waiting = None  # a Heartbeat's: waits go on without beating
        stale = int(self.stale_after.total_seconds() // 60)
        if holder is None:
            self._lost = RunLocked(
                f"the run lock on {self.table} was removed from {self.lock_table} while this run was working, so "
                "another run may start at any moment: this run stopped. What it wrote back is correct; run again."
            )
        else:
            self._lost = RunLocked(
                f"another run ({holder}) took over the run lock on {self.table} while this run was working: this "
                f"run had shown no sign of life for over {stale} minutes (held up by the database or the server), "
                "so the other run took it for a crashed one. This run stopped so that only one works on the table; "
                "what it wrote back is correct, and the rows it did not reach are sent by the other run or the next."
            )
        raise self._lost

    def release(self) -> None:
        if not self._held:
            return
        self._held = False
        try:
            with self.db.transaction():
                self.db.execute(
                    f"DELETE FROM {self.lock_table} WHERE lock_name = ? AND holder = ?", (self.name, self.holder)
                )
        except DatabaseError:
            log.warning("could not release the run lock on %s; it expires by itself", self.table)

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _skew_note(ahead: float | None) -> str:
    """What to add to "last active N s ago" for a heartbeat that was ahead of the server's clock."""
    if ahead is None:
        return ""
    if ahead == float("inf"):
        return "; its last heartbeat is not a time the database can read"
    return (
        f"; its last heartbeat was {int(ahead)} s ahead of the database's clock, written by another clock "
        "(a machine's, by an earlier version of this tool)"
    )


class Heartbeat:
    """The run lock's heartbeat during a run: every beat goes through :meth:`beat`, at the three moments
    a run shows it is alive.

    Before each send (:meth:`send`, this object being the run's sender): a run that lost the lock
    stops before sending, and a batch whose turn comes after Ctrl+C or SIGTERM is not sent. After
    each batch is written back (:meth:`after_batch`), for runs with little to send. And between
    the tries of work another session's locks hold up (the connection's ``while_waiting``, while
    the heartbeat is in use: ``with Heartbeat(...)``), so a run that waits for the staging SQL is
    not taken for a crashed one. :meth:`RunLock.heartbeat` writes at most once a minute.
    """

    def __init__(
        self,
        lock: RunLock,
        client: Any,
        *,
        stop: StopRequest | None = None,
        on_progress: Callable[[Any], None] | None = None,
    ) -> None:
        self.lock = lock
        self.client = client  # what sends a batch: ``client.send(bodies, batch_id)`` (dfe.api.ApiClient)
        self.stop = stop
        self.on_progress = on_progress

    def beat(self) -> None:
        """Show the run is alive (raises ``RunLocked`` once another run has taken the lock over)."""
        self.lock.heartbeat()

    def send(self, bodies: list[bytes], batch_id: str) -> list[Any]:
        if self.stop is not None:
            self.stop.check()
        self.beat()
        return self.client.send(bodies, batch_id)

    def after_batch(self, so_far: Any) -> None:
        self.beat()
        if self.on_progress is not None:
            self.on_progress(so_far)

    def __enter__(self) -> Heartbeat:
        self.lock.db.while_waiting = self.beat
        return self

    def __exit__(self, *exc: object) -> None:
        if self.lock.db.while_waiting == self.beat:
            self.lock.db.while_waiting = None
