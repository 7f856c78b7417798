"""One run per staging table at a time, across machines (DESIGN §7).

The lock is a row in a small table beside the staging table, so it works
wherever the database is shared. A run refreshes its heartbeat as it goes
(after a batch, at most once a minute); a lock whose heartbeat is older than ``stale_after`` belongs to a run
that crashed or was killed, and the next run takes it over.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import sys
from datetime import datetime, timedelta, timezone
from typing import Any

from api_pipeline.db import Database, validate_table_name
from api_pipeline.errors import DatabaseError, RunLocked

log = logging.getLogger(__name__)

DEFAULT_STALE_AFTER = timedelta(hours=1)
BEAT_EVERY = timedelta(minutes=1)  # far inside stale_after; saves a commit per batch


def _utc_now() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None, microsecond=0)


def lock_ddl(db: Database, lock_table: str) -> str:
    d = db.dialect
    text = d.short_text.format(n=200)
    body = (
        f"lock_name {d.short_text.format(n=128)} NOT NULL PRIMARY KEY, holder {text} NOT NULL, "
        f"acquired_at {d.timestamp} NOT NULL, heartbeat_at {d.timestamp} NOT NULL"
    )
    return d.create_table_if_missing(lock_table, body)


def process_alive(pid: int) -> bool:
    """Whether a process with this id is running on this machine."""
    if pid <= 0:
        return False
    if sys.platform == "win32":
        import ctypes

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
        clock: Any = _utc_now,
    ) -> None:
        self.db = db
        self.name = validate_table_name(table)
        self.lock_table = validate_table_name(f"{table}_run_lock")
        self.holder = f"{socket.gethostname()} pid {os.getpid()} run {run_id}"[:200]
        self.stale_after = stale_after
        self.clock = clock
        self._held = False
        self._last_beat: datetime | None = None

    def _ts(self, value: datetime) -> Any:
        return self.db.dialect.timestamp_param(value)

    def acquire(self) -> None:
        if self.db.column_names(self.lock_table) is None:
            try:
                with self.db.transaction():
                    self.db.execute(lock_ddl(self.db, self.lock_table))
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
                except DatabaseError:
                    raise RunLocked(
                        f"another run took the lock on {self.name} at the same moment; this one did nothing"
                    ) from None
            else:
                holder, heartbeat = row[0], _as_datetime(row[1])
                age = now - heartbeat
                if age < self.stale_after and not self._holder_is_dead(holder):
                    raise RunLocked(
                        f"another run is already working on {self.name} ({holder}, last active "
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
                        f"another run took the lock on {self.name} at the same moment; this one did nothing"
                    )
                log.warning(
                    "took over the run lock on %s from a run that stopped without releasing it (%s, last active "
                    "%d s ago)",
                    self.name,
                    holder,
                    int(age.total_seconds()),
                )
        self._held = True
        self._last_beat = self.clock()

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
        """Show the run is alive: written when BEAT_EVERY has passed since the last one (or ``force``)."""
        if not self._held:
            return
        now = self.clock()
        if not force and self._last_beat is not None and now - self._last_beat < BEAT_EVERY:
            return
        self._last_beat = now
        with self.db.transaction():
            self.db.execute(
                f"UPDATE {self.lock_table} SET heartbeat_at = ? WHERE lock_name = ? AND holder = ?",
                (self._ts(now), self.name, self.holder),
            )

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
            log.warning("could not release the run lock on %s; it expires by itself", self.name)

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
