"""SQLite: its dialect, its catalogue (PRAGMAs and ``sqlite_master``) and a run's tuning of the file.

SQLite has no server: the standard library's ``sqlite3`` works on the file itself, on the
machine running the tool. A run's write-backs use write-ahead logging, copied into the
database by a :class:`Checkpointer` of its own (``db.Database.prepare_for_bulk_writes``).
"""

from __future__ import annotations

import logging
import re
import sqlite3
import sys
import threading
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from api_pipeline.stopping import signals_to_the_main_thread
from api_pipeline.store.columns import Column, ColumnInfo
from api_pipeline.store.dialect import Dialect, ServerInfo, Session, text_timestamp
from api_pipeline.store.odbc import process_identity

log = logging.getLogger(__name__)

SQLITE_VERSION = sqlite3.sqlite_version  # the SQLite library under the standard library's sqlite3
# For a run's write-backs (SQLite.tune_for_bulk_writes).
BULK_CACHE_KIB = 16 * 1024
CHECKPOINT_EVERY = 0.25  # seconds between the background checkpointer's passes
RESTART_FRAMES = 8_000  # log pages (~32 MB) after which it restarts the log, so the file stops growing
BULK_CHECKPOINT_PAGES = 40_000  # the run connection's own checkpoint, should the background one fall behind


class SQLite(Dialect):
    """SQLite: any value in any column, times as text, and no server (its catalogue is read with PRAGMAs)."""

    name = "sqlite"
    label = "SQLite"
    text = "TEXT"
    short_text = "TEXT"
    identity_pk = "INTEGER PRIMARY KEY AUTOINCREMENT"
    binary32 = "BLOB"
    timestamp = "TEXT"
    flag = "INTEGER"
    integer = "INTEGER"
    naive_timestamps_are_utc = True

    def timestamp_param(self, value: datetime | None) -> Any:
        return None if value is None else text_timestamp(value)

    def same_stored_text(self, column: str) -> str:
        """The text itself; or the bytes of text that is not UTF-8 as stored (``UnreadableText``),
        which ``CAST`` makes text again, byte for byte."""
        return f"{column} = CAST(? AS TEXT)"

    def session_sql(self, lock_wait_ms: int) -> tuple[str, ...]:
        """Nothing: SQLite waits for its busy time-out."""
        return ()

    @property
    def server_utc_now(self) -> str:
        """No server: the time of the machine running the tool, which is where its file is, as the
        text ``YYYY-MM-DD HH:MM:SS.SSS`` that :meth:`timestamp_param` writes."""
        return "strftime('%Y-%m-%d %H:%M:%f', 'now')"

    def seconds_since(self, column: str) -> str:
        """``julianday`` reads the text the tool writes, with or without fractions of a second (NULL
        when it cannot read it as a time)."""
        return f"(julianday('now') - julianday({column})) * 86400.0"

    def select_for_update(self, columns: str, table: str, rest: str) -> str:
        """``BEGIN IMMEDIATE`` already holds the write lock."""
        return super().select_for_update(columns, table, rest)

    def create_index_if_missing(self, index: str, table: str, column: str, *, unique: bool = False) -> str:
        """In an attached database, the index is named in its schema and the table without it."""
        if "." in table:
            kind = "UNIQUE INDEX" if unique else "INDEX"
            schema, name = table.split(".", 1)
            return f"CREATE {kind} IF NOT EXISTS {schema}.{index} ON {name} ({column})"
        return super().create_index_if_missing(index, table, column, unique=unique)

    def alter_column_type(self, table: str, column: Column, info: ColumnInfo | None = None) -> str:
        """SQLite columns take any value whatever their declared type; there is nothing to change."""
        return ""

    # -- the catalogue -----------------------------------------------------------

    def columns_of(self, db: Session, tables: Sequence[str]) -> dict[str, list[ColumnInfo] | None]:
        return {table: self._columns(db, table) for table in tables}

    @staticmethod
    def _columns(db: Session, table: str) -> list[ColumnInfo] | None:
        if "." in table:
            schema, name = table.split(".", 1)
            rows = list(db.query(f"PRAGMA {schema}.table_info({name})"))
        else:
            rows = list(db.query(f"PRAGMA table_info({table})"))
        return [sqlite_column_info(str(r[1]), str(r[2] or ""), nullable=not r[3], key=bool(r[5])) for r in rows] or None

    def resolve_table(self, db: Session, table: str) -> str | None:
        """SQLite has no function for it: its catalogue is read, in the order it looks tables up."""
        schemas = [str(row[1]) for row in db.query("PRAGMA database_list")]
        if "." in table:
            wanted, name = table.split(".", 1)
            order = [s for s in schemas if s.lower() == wanted.lower()]
        else:  # temp first, then main, then attached databases in the order they were attached
            name = table
            order = [s for s in schemas if s == "temp"] + [s for s in schemas if s != "temp"]
        for schema in order:
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", schema):  # it goes into SQL text
                continue
            catalogue = "sqlite_temp_master" if schema == "temp" else f"{schema}.sqlite_master"
            for (stored,) in db.query(
                f"SELECT name FROM {catalogue} WHERE type IN ('table', 'view') AND name = ? COLLATE NOCASE",  # noqa: S608
                (name,),
            ):
                return f"{schema}.{stored}"
        return None

    def server_info(self, db: Session) -> ServerInfo:
        return ServerInfo(
            dbms="SQLite",
            version=SQLITE_VERSION,
            driver="Python sqlite3 module",
            driver_version=sys.version.split()[0],
            login=f"file access as {process_identity()}",
            database=db.path or "",
        )

    # -- a run's connections -------------------------------------------------------

    def tune_for_bulk_writes(self, connection: Any) -> bool:
        """Write-ahead logging, synced at checkpoints, and a 16 MiB page cache (see
        ``db.Database.prepare_for_bulk_writes``); True when the file is now in WAL mode."""
        try:
            mode = connection.execute("PRAGMA journal_mode=WAL").fetchone()
            connection.execute("PRAGMA synchronous=NORMAL")
            connection.execute(f"PRAGMA cache_size=-{BULK_CACHE_KIB}")
            connection.execute(f"PRAGMA wal_autocheckpoint={BULK_CHECKPOINT_PAGES}")
        except sqlite3.Error as exc:  # e.g. a read-only folder: the run still works, just slower
            log.debug("SQLite WAL mode not set: %s", exc)
            return False
        log.debug("SQLite journal mode: %s", mode[0] if mode else "unknown")
        return bool(mode and str(mode[0]).lower() == "wal")

    @staticmethod
    def tune_second_connection(connection: Any) -> None:
        """A second connection to a file in WAL mode is synced at checkpoints, as the run's is."""
        mode = connection.execute("PRAGMA journal_mode").fetchone()
        if mode and str(mode[0]).lower() == "wal":
            connection.execute("PRAGMA synchronous=NORMAL")

    @staticmethod
    def reading_connection(path: str) -> Any:
        """A connection that only reads, for a run's pages of rows; None when it cannot be had."""
        conn = None
        try:
            conn = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA query_only=ON")
        except sqlite3.Error as exc:  # the run reads on its own connection, taking turns
            if conn is not None:
                conn.close()
            log.debug("SQLite reading connection not opened: %s", exc)
            return None
        return conn

    @staticmethod
    def checkpoint(connection: Any) -> None:
        """Copy the rest of the log into the database now, without waiting for readers."""
        try:
            connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        except sqlite3.Error as exc:  # another connection may hold it: SQLite checkpoints later
            log.debug("SQLite checkpoint not done: %s", exc)


def sqlite_column_info(name: str, declared: str, *, nullable: bool | None = None, key: bool = False) -> ColumnInfo:
    """A column as SQLite declares it (``NVARCHAR(20)``, ``TEXT``...), in the form the checks read."""
    match = re.match(r"^\s*([A-Za-z ]+?)\s*(?:\(\s*(\d+|max)\s*\))?\s*$", declared, re.IGNORECASE)
    if not match:
        return ColumnInfo(name.lower(), declared.lower(), nullable=nullable, key=key)
    size = match.group(2)
    length = int(size) if size and size.isdigit() else None
    return ColumnInfo(name.lower(), match.group(1).lower(), length, nullable=nullable, key=key)


class Checkpointer:
    """Copies a SQLite write-ahead log into the database, on a connection and thread of its own.

    ``PASSIVE``: it never waits for, or blocks, the run's connection, which keeps committing
    while a copy is under way (SQLite's locks allow one writer and one checkpointer at once).
    A log that is never copied to its end is never reused, so once it holds
    :data:`RESTART_FRAMES` pages a ``RESTART`` copies the rest and has the log start over.
    """

    def __init__(self, path: str) -> None:
        self._path = path
        self._every = CHECKPOINT_EVERY
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="sqlite-checkpoint", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join()

    def _loop(self) -> None:
        signals_to_the_main_thread()
        try:
            # No busy timeout: a pass that meets a reader, or the run's connection writing,
            # copies what it can and returns rather than wait (a RESTART would hold every
            # commit back while it waited).
            conn = sqlite3.connect(self._path, timeout=0, isolation_level=None)
        except sqlite3.Error as exc:
            log.debug("SQLite checkpointer not started: %s", exc)
            return
        try:
            while not self._stopping.wait(self._every):
                _busy, frames, _copied = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                if frames >= RESTART_FRAMES:
                    # Copies what the pass above could not, holding the next commit back for
                    # that long, so that the next commit writes the log from its start again.
                    conn.execute("PRAGMA wal_checkpoint(RESTART)").fetchall()
        except sqlite3.Error as exc:  # the run's own checkpoints take over
            log.debug("SQLite checkpointer stopped: %s", exc)
        finally:
            conn.close()
