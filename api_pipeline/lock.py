"""One run per staging table at a time, across machines (DESIGN §7).

The lock is a row in a small table beside the staging table, so it works
wherever the database is shared. It is keyed on the table as the database resolves
its name, so ``ssd_api_data_staging``, ``dbo.ssd_api_data_staging`` and
``SSD_API_DATA_STAGING`` are one lock when they are one table. A run refreshes its
heartbeat as it goes (before sending and after writing back a batch, and while it waits
for the staging SQL's locks; at most once a minute); a lock whose heartbeat is older than
``stale_after`` belongs to a run that crashed or was killed, and the next run takes it
over. Each heartbeat checks that this run still holds the lock: a run that was taken
over stops.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import socket
import sys
from datetime import datetime, timedelta
from typing import Any

from api_pipeline.catalogue import column_names, resolve_table
from api_pipeline.db import Database, validate_table_name
from api_pipeline.dialects import LOCK_HOLDER_SIZE, LOCK_NAME_SIZE, lock_ddl, lock_table_name
from api_pipeline.errors import ConfigError, DatabaseError, RunLocked
from api_pipeline.odbc import KEY_VIOLATION
from api_pipeline.timestamps import utc_now

log = logging.getLogger(__name__)

DEFAULT_STALE_AFTER = timedelta(hours=1)
BEAT_EVERY = timedelta(minutes=1)  # far inside stale_after; saves a commit per batch


def lock_key(resolved: str) -> str:
    """The lock row's key for a table: its resolved name, shortened (uniquely) to fit the column."""
    if len(resolved) <= LOCK_NAME_SIZE:
        return resolved
    digest = hashlib.sha256(resolved.encode("utf-8")).hexdigest()[:32]
    return f"{resolved[: LOCK_NAME_SIZE - len(digest) - 1]}~{digest}"


def _utc_second() -> datetime:
    return utc_now().replace(microsecond=0)


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


def _as_datetime(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value.replace(tzinfo=None)
    return datetime.fromisoformat(str(value))


class RunLock:
    """``with RunLock(db, table):`` — raises :class:`RunLocked` if a live run holds it."""

    def __init__(
        self,
        db: Database,
        table: str,
        *,
        run_id: str,
        stale_after: timedelta = DEFAULT_STALE_AFTER,
        clock: Any = _utc_second,
    ) -> None:
        self.db = db
        self.table = validate_table_name(table)
        # Both set again in acquire(), from the table as the database resolves its name.
        self.name = table
        self.lock_table = validate_table_name(lock_table_name(table))
        self.holder = f"{socket.gethostname()} pid {os.getpid()} run {run_id}"[:LOCK_HOLDER_SIZE]
        self.stale_after = stale_after
        self.clock = clock
        self._held = False
        self._last_beat: datetime | None = None
        self._lost: RunLocked | None = None  # why this run no longer holds the lock, once it knows

    def _ts(self, value: datetime) -> Any:
        return self.db.dialect.timestamp_param(value)

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
        now = self.clock()
        with self.db.transaction():
            row = next(
                self.db.query(
                    f"SELECT holder, heartbeat_at FROM {self.lock_table} WHERE lock_name = ?",  # noqa: S608
                    (self.name,),
                ),
                None,
            )
            if row is None:
                try:
                    self.db.execute(
                        f"INSERT INTO {self.lock_table} (lock_name, holder, acquired_at, heartbeat_at) "
                        "VALUES (?, ?, ?, ?)",
                        (self.name, self.holder, self._ts(now), self._ts(now)),
                    )
                except DatabaseError as exc:
                    if exc.kind != KEY_VIOLATION:  # e.g. no INSERT permission: not another run
                        raise DatabaseError(f"could not take the run lock in {self.lock_table}: {exc}") from None
                    raise RunLocked(
                        f"another run took the lock on {self.table} at the same moment; this one did nothing"
                    ) from None
            else:
                holder, heartbeat = row[0], _as_datetime(row[1])
                age = now - heartbeat
                if age < self.stale_after and not self._holder_is_dead(holder):
                    raise RunLocked(
                        f"another run is already working on {self.table} ({holder}, last active "
                        f"{int(age.total_seconds())} s ago). Only one run per table at a time; this one did "
                        f"nothing. If that run crashed, its lock expires {int(self.stale_after.total_seconds() // 60)} "
                        "minutes after its last activity."
                    )
                taken = self.db.execute(
                    f"UPDATE {self.lock_table} SET holder = ?, acquired_at = ?, heartbeat_at = ? "
                    "WHERE lock_name = ? AND holder = ?",
                    (self.holder, self._ts(now), self._ts(now), self.name, holder),
                )
                if taken != 1:
                    raise RunLocked(
                        f"another run took the lock on {self.table} at the same moment; this one did nothing"
                    )
                log.warning(
                    "took over the run lock on %s from a run that stopped without releasing it (%s, last active "
                    "%d s ago)",
                    self.table,
                    holder,
                    int(age.total_seconds()),
                )
        self._held = True
        self._last_beat = self.clock()
        self.db.while_waiting = self.heartbeat

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
        now = self.clock()
        if not force and self._last_beat is not None and now - self._last_beat < BEAT_EVERY:
            return
        self._last_beat = now

        def beat() -> int:
            with self.db.transaction():
                return self.db.execute(
                    f"UPDATE {self.lock_table} SET heartbeat_at = ? WHERE lock_name = ? AND holder = ?",
                    (self._ts(now), self.name, self.holder),
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
        self.db.while_waiting = None
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
        if self.db.while_waiting == self.heartbeat:
            self.db.while_waiting = None
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
