"""The database: one connection, its dialect, transactions and statements (what tables exist: ``catalogue``).

Nothing outside the store touches ``sqlite3`` or ``pyodbc``; what differs between the DBMSs is
the dialect's (``dialect.Dialect`` and its subclasses), opening a connection is ``connect``, ODBC
strings and errors are ``odbc`` and ``odbc_errors``. All values go in as ``?`` parameters; the
only identifiers put into SQL text are the validated table name and the names derived from it
(config.TABLE_NAME_PATTERN).

A session the server ends mid-run is opened again, once a run, for work that may be done
twice (``retry.Retries``); a SQLite file deleted or replaced under its connection stops the
work before the next commit (:meth:`Database.check_file`).
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from api_pipeline.errors import ConfigError, DatabaseError
from api_pipeline.settings.config import Secret, connection_setting
from api_pipeline.settings.options import TABLE_NAME_PATTERN
from api_pipeline.settings.paths import sqlite_file_of
from api_pipeline.store import retry
from api_pipeline.store.columns import Kinds
from api_pipeline.store.connect import (
    SQLITE_PREFIX,
    import_pyodbc,
    open_odbc_connection,
    open_sqlite_connection,
    sqlite_path,
)
from api_pipeline.store.dialect import Dialect
from api_pipeline.store.dialects import SQLITE
from api_pipeline.store.odbc import (
    CONNECTION_LOST,
    KEY_VIOLATION,
    LOCK_TIMEOUT,
    UNDECODABLE,
    OdbcContext,
    decode_utf8_text,
)
from api_pipeline.store.odbc_errors import driver_said, explain_odbc_error, without_values
from api_pipeline.store.retry import RECONNECTS, Retries
from api_pipeline.store.sqlite import Checkpointer, SQLite

log = logging.getLogger(__name__)

T = TypeVar("T")


def _sqlite_error(exc: BaseException) -> DatabaseError:
    """SQLite's error, with the ``kind`` of the few that callers tell apart, and without any value
    it quotes from a row (:func:`~api_pipeline.store.odbc_errors.without_values`)."""
    text = str(exc)
    kind = None
    if isinstance(exc, sqlite3.IntegrityError) and ("UNIQUE constraint" in text or "PRIMARY KEY" in text):
        kind = KEY_VIOLATION
    elif isinstance(exc, sqlite3.OperationalError) and ("database is locked" in text or "table is locked" in text):
        kind = LOCK_TIMEOUT
    elif "could not decode" in text.lower():
        kind = UNDECODABLE
    return DatabaseError(f"database error: {without_values(text)}", kind=kind)


def _undecodable_error(exc: UnicodeDecodeError) -> DatabaseError:
    """pyodbc could not decode the bytes a driver gave for a text value: said without the bytes."""
    return DatabaseError(
        f"a text value in the table could not be read: the ODBC driver gave bytes that are not valid {exc.encoding}",
        kind=UNDECODABLE,
    )


def _file_identity(path: str | Path) -> tuple[int, int] | None:
    """A file's device and inode numbers (on Windows, volume serial number and file index):
    they stay the same while it is the same file, whatever is written to it. None: no such file."""
    try:
        found = os.stat(path)
    except OSError:
        return None
    return found.st_dev, found.st_ino


def validate_table_name(name: str) -> str:
    if not TABLE_NAME_PATTERN.match(name):
        raise ConfigError(f"TABLE_NAME: {name!r} is not a valid table name")
    return name


class Database(Retries):
    """One connection, its dialect, and explicit transactions.

    Build with :meth:`connect` from a connection string, or wrap an existing
    DB-API connection (tests inject one). ODBC connections run with autocommit
    off: everything inside :meth:`transaction` commits together, and a statement
    outside one is its own transaction.
    """

    def __init__(
        self,
        connection: Any,
        dialect: Dialect,
        *,
        description: str,
        odbc: Any = None,
        driver_file: str = "",
        context: OdbcContext | None = None,
        path: str | None = None,
        open_again: Callable[[], Any] | None = None,
        give_back: Callable[[], None] | None = None,
    ) -> None:
        self._conn = connection
        # A connection the caller opened and still owns (``borrowed.borrow``): never closed here;
        # ``give_back`` puts back what the tool changed on it instead.
        self._give_back = give_back
        self.borrowed = give_back is not None
        self.dialect = dialect
        self.description = description
        self.driver_file = driver_file
        self._odbc = odbc
        # The standard library's sqlite3 (a SQLite file): SQLite's own statements (PRAGMA, BEGIN
        # IMMEDIATE) and tuning apply; everything else is ODBC, whose SQL differs by dialect.
        self.is_sqlite = isinstance(connection, sqlite3.Connection)
        if self.is_sqlite:
            # Text that is not UTF-8 reads as an UnreadableText (the row is reported), not an error
            # that fails the whole query and quotes the value.
            connection.text_factory = decode_utf8_text
        self._context = context or OdbcContext()
        self.path = path  # SQLite: the file, or ":memory:"; None for ODBC
        # SQLite: the file this connection opened, and its identity then (checked before each commit).
        self._file = None if not self.is_sqlite or path in (None, ":memory:") else Path(str(path)).absolute()
        self._file_identity = None if self._file is None else _file_identity(self._file)
        # ODBC: opens a new connection like this one, for when the server ends the session mid-run.
        self._open_again = open_again
        self._reconnects_left = RECONNECTS
        self._broken = False  # the connection was lost: every statement on it fails
        self._lost_said = ""  # the driver's words when it was lost
        self._errors: tuple[type[BaseException], ...] = (sqlite3.Error,)
        if odbc is not None:
            self._errors += (odbc.Error,)
        # fast_executemany sends a whole parameter array at once; proven with Microsoft's
        # SQL Server drivers only (it crashes the SQLite ODBC driver; FreeTDS and psqlODBC
        # gain nothing or misbehave), so only there.
        self.fast_executemany = odbc is not None and dialect.uses_microsoft_driver(driver_file)
        self._in_transaction = False
        self._open_queries = 0
        # One thread at a time on the connection (a run writes back on a thread of its own, and
        # beats the run lock's heartbeat before a send): held for a whole transaction, by a
        # query while its result is open, and by a reader for a whole page of rows.
        self.lock = threading.RLock()
        self._checkpointer: Checkpointer | None = None  # SQLite, during a run's write-backs
        self._reader: Database | None = None  # SQLite, during a run's write-backs
        # Called between the tries of work blocked by another session's locks (the run lock's
        # heartbeat, so a run that waits is not taken for a crashed one).
        self.while_waiting: Callable[[], None] | None = None
        self.sleep: Callable[[float], None] = time.sleep
        self._in_wait_hook = False

    @property
    def tds_version_asked(self) -> str | None:
        """The TDS protocol version the ODBC connection string asks FreeTDS for (``TDS_Version``), or None."""
        return self._context.tds_version

    @property
    def reader(self) -> Database:
        """The connection to read a run's pages of rows on. During a SQLite run in WAL mode,
        a second connection: readers and the writer then never wait for each other, so no
        write-back waits while a page is read (nor a page while a batch is written). Otherwise
        this connection, which its lock lets one thread use at a time."""
        return self._reader or self

    # -- opening -----------------------------------------------------------------

    @classmethod
    def open_existing(cls, connection_string: Secret | str) -> Database:
        """:meth:`connect`, except that a SQLite file that does not exist is an error, not a new empty database.

        Every command but ``init-db`` opens the database this way.
        """
        text = connection_string.reveal() if isinstance(connection_string, Secret) else connection_string
        path = sqlite_file_of(text)
        if path is not None and not path.is_file():
            shown = path.absolute()
            setting = connection_setting(connection_string)
            raise DatabaseError(
                f"the SQLite database {shown} does not exist. Check {setting} (a relative path is read from the "
                "folder of the .env file that sets it); only init-db creates a new database."
            )
        return cls.connect(connection_string)

    @classmethod
    def connect(cls, connection_string: Secret | str) -> Database:
        """The database ``connection_string`` names; its messages name the setting it came from."""
        text = connection_string.reveal() if isinstance(connection_string, Secret) else connection_string
        setting = connection_setting(connection_string)
        if text.lower().startswith("sqlite:"):
            if not text.lower().startswith(SQLITE_PREFIX):
                raise ConfigError(
                    f"{setting}: SQLite strings look like sqlite:///relative/path.db or sqlite:////absolute/path.db"
                )
            return cls.open_sqlite(sqlite_path(text, setting))
        return cls.open_odbc(text, setting=setting)

    @classmethod
    def open_sqlite(cls, path: str | Path) -> Database:
        path = str(path)
        conn = open_sqlite_connection(path)
        return cls(conn, SQLITE, description=f"SQLite {sqlite3.sqlite_version} ({path})", path=path)

    @classmethod
    def open_odbc(cls, text: str, *, odbc: Any = None, setting: str = "DB_CONNECTION_STRING") -> Database:
        """Connect through ODBC; ``odbc`` is the pyodbc module (tests may pass a stand-in).

        ``setting`` is the setting ``text`` came from, for the messages (see ``config.ConnectionString``).
        """
        opened = open_odbc_connection(text, odbc if odbc is not None else import_pyodbc(setting), setting)
        return cls(
            opened.connection,
            opened.dialect,
            description=opened.description,
            odbc=opened.module,
            driver_file=opened.driver_file,
            context=opened.context,
            open_again=opened.open_again,
        ).in_session()

    def another(self) -> Database | None:
        """A second connection to the same database, set up as this one is for a run, for work
        that must not wait for this connection's transactions (recording batches before they are
        sent); the caller closes it. SQLite: the same file (in WAL mode after
        :meth:`prepare_for_bulk_writes`, synced at checkpoints as this one is). None when there is
        no second connection to have: a database held in memory, or a connection made elsewhere."""
        if self.is_sqlite:
            if self.path in (None, ":memory:"):
                return None
            other = Database.open_sqlite(str(self.path))
            try:
                with other.lock:
                    SQLite.tune_second_connection(other._conn)
            except sqlite3.Error as exc:
                other.close()
                raise _sqlite_error(exc) from None
            return other
        if self._open_again is None:
            return None
        try:
            connection = self._open_again()
        except self._errors as exc:
            raise explain_odbc_error(exc, self._context) from None
        return Database(
            connection,
            self.dialect,
            description=self.description,
            odbc=self._odbc,
            driver_file=self.driver_file,
            context=self._context,
            open_again=self._open_again,
        ).in_session()

    def in_session(self) -> Database:
        """This new connection with its session settings made (:meth:`_start_session`); closed
        if they cannot be, so that a failed open leaves no connection behind."""
        try:
            self._start_session()
        except DatabaseError:
            self.close()
            raise
        return self

    def _start_session(self) -> None:
        """The dialect's session settings (row counts, deadlock priority, lock time-out), committed:
        a PostgreSQL SET rolled back with its transaction would be undone."""
        statements = self.dialect.session_sql(int(retry.LOCK_WAIT_SECONDS * 1000))  # read now: tests shorten it
        if statements:
            with self.transaction():
                for sql in statements:
                    self.execute(sql)

    def close(self) -> None:
        self._stop_checkpointer()  # a run that stopped on an error
        self._close_reader()
        if self.borrowed:  # the caller's to close, not ours: put it back as it was given, once
            give_back, self._give_back = self._give_back, None
            if give_back is not None:
                give_back()
            return
        try:
            self._conn.close()
        except Exception:  # noqa: BLE001 - closing a broken connection must not mask the real error
            log.debug("closing the database connection failed", exc_info=True)

    def __enter__(self) -> Database:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def prepare_for_bulk_writes(self) -> None:
        """Before a run's write-backs. SQLite: write-ahead logging, synced at checkpoints.

        A commit then appends to the ``-wal`` file instead of syncing the database and its
        journal to disk each time (two fsyncs per batch). A crashed or killed run loses
        nothing it committed; a power cut may lose the last commits, whose rows are simply
        sent again next run, as after any crash (DfE upserts). WAL mode stays with the file
        and needs it on a local disk, not a network share. Other databases: nothing to do.

        For the run, this connection also keeps a 16 MiB page cache (a batch dirties a few
        hundred pages: with SQLite's default 2 MiB, rows read for the next batch pushed them
        out between commits), and the log is copied into the database by a thread of its own
        on a second connection, four times a second. Left to the committing connection, that
        copy stalls a write-back for 100 ms or more now and then, and with it every batch
        queued behind it. :meth:`finish_bulk_writes` copies the rest before the run ends.
        Pages of rows are read on a third connection (see :attr:`reader`).
        """
        if self.path in (None, ":memory:"):
            return
        with self.lock:
            wal = self.dialect.tune_for_bulk_writes(self._conn)
        if wal and self._checkpointer is None:
            self._checkpointer = Checkpointer(str(self.path))
            self._checkpointer.start()
            self._reader = self._open_reader(str(self.path))

    @staticmethod
    def _open_reader(path: str) -> Database | None:
        conn = SQLite.reading_connection(path)
        if conn is None:
            return None
        return Database(conn, SQLITE, description=f"SQLite {sqlite3.sqlite_version} ({path}), reading", path=path)

    def _close_reader(self) -> None:
        reader, self._reader = self._reader, None
        if reader is not None:
            reader.close()

    def _stop_checkpointer(self) -> bool:
        """Stop the background checkpointer; False if there was none."""
        checkpointer, self._checkpointer = self._checkpointer, None
        if checkpointer is None:
            return False
        checkpointer.stop()
        return True

    def finish_bulk_writes(self) -> None:
        """After a run's last write-back. SQLite: stop the background checkpointer and copy
        the rest of the log into the database now (without waiting for readers), so the run's
        time includes that work and the next reader does not pay for it."""
        self._close_reader()
        if self._stop_checkpointer():
            with self.lock:
                SQLite.checkpoint(self._conn)
        self.check_file()  # the run's last write-back, too, went to the file at the path

    def check_file(self) -> None:
        """SQLite: raise if the file at the path this connection opened is no longer the file it has open.

        A file deleted, or replaced by another (a copy put in its place), while the connection is
        open leaves the connection working on the old one, which nothing else will read again:
        everything committed from then on would be lost without a word. So before each commit (one
        ``stat`` per transaction) and at the end of a run, the file's identity is compared with the
        one it had when the connection was opened.
        """
        if self._file is None or self._file_identity is None:
            return
        now = _file_identity(self._file)
        if now is None:
            raise DatabaseError(
                f"the SQLite database file {self._file} was deleted or moved away while the run was working, so the "
                "run stopped: what it wrote back went to the file it had open, which is no longer there, and DfE has "
                "the records it sent all the same. Find out what removed the file (a clean-up or sync job, antivirus, "
                "a person) before the next run: see 'The SQLite file was deleted or replaced' in Troubleshooting."
            )
        # A file index of 0 (some Windows file systems) identifies nothing: then only the device is compared.
        if now != self._file_identity and (now[0] != self._file_identity[0] or self._file_identity[1] != 0):
            raise DatabaseError(
                f"the SQLite database file {self._file} was replaced by another file while the run was working, so "
                "the run stopped: what it wrote back went to the file it had open, not to the one now at that path, "
                "which does not record the batches this run sent to DfE. Find out what replaced it (a restore, a "
                "copy, a sync tool) before the next run: see 'The SQLite file was deleted or replaced' in "
                "Troubleshooting."
            )

    # -- transactions and statements ---------------------------------------------

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """One unit of work: everything inside commits together or not at all."""
        with self.lock:
            if self._in_transaction:
                yield
                return
            self._in_transaction = True
            try:
                if self.is_sqlite:
                    self._run(lambda: self._conn.execute("BEGIN IMMEDIATE"))
                yield
                self.check_file()
                self._run(self._conn.commit)
            except BaseException:
                self._rollback_quietly()
                raise
            finally:
                self._in_transaction = False

    def _rollback_quietly(self) -> None:
        try:
            self._conn.rollback()
        except Exception:  # noqa: BLE001
            log.debug("rollback failed", exc_info=True)

    def _run(self, action: Callable[[], Any]) -> Any:
        try:
            return action()
        except self._errors as exc:
            if self._odbc is not None and isinstance(exc, self._odbc.Error):
                error = explain_odbc_error(exc, self._context, connected=True)
                if error.kind == CONNECTION_LOST:
                    self._broken = True
                    self._lost_said = driver_said(exc, self._context)
                elif not self._in_transaction:
                    self._rollback_quietly()  # PostgreSQL refuses everything after an error until then
                raise error from None
            # Outside WAL mode, SQLite itself refuses to write to a file that has been deleted or
            # moved ("attempt to write a readonly database"): say what happened instead.
            self.check_file()
            raise _sqlite_error(exc) from None
        except UnicodeDecodeError as exc:  # pyodbc decoding a driver's bytes: not an odbc.Error
            if self._odbc is None:
                raise
            if not self._in_transaction:
                self._rollback_quietly()
            raise _undecodable_error(exc) from None

    def _cursor(self, kinds: Kinds | None) -> Any:
        cursor = self._conn.cursor()
        if self._odbc is not None:
            sizes = self.dialect.input_sizes(kinds, self.driver_file)
            if sizes is not None:
                cursor.setinputsizes(sizes)
        return cursor

    def execute(self, sql: str, params: Sequence[Any] = (), *, kinds: Kinds | None = None) -> int:
        """Run one statement; returns the affected row count. ``kinds``: see ``Dialect.input_sizes``."""

        def action() -> int:
            cursor = self._cursor(kinds)
            try:
                cursor.execute(sql, tuple(params))
                return int(cursor.rowcount)
            finally:
                cursor.close()

        with self.transaction():
            return int(self._run(action))

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]], *, kinds: Kinds | None = None) -> None:
        if not rows:
            return

        def action() -> None:
            cursor = self._cursor(kinds)
            try:
                if self.fast_executemany:
                    cursor.fast_executemany = True
                cursor.executemany(sql, [tuple(r) for r in rows])
            finally:
                cursor.close()

        with self.transaction():
            self._run(action)

    def query(
        self,
        sql: str,
        params: Sequence[Any] = (),
        *,
        chunk: int = 200,
        kinds: Kinds | None = None,
        retry: bool = True,
    ) -> Iterator[tuple[Any, ...]]:
        """Rows one at a time, fetched ``chunk`` at a time: never the whole result in memory.

        The connection's :attr:`lock` is held while the result is open: another thread (a
        write-back, the run lock's heartbeat) waits rather than use the connection under it.
        Outside a transaction, an ODBC read ends its implicit transaction when the
        last open query finishes, so no snapshot or lock is held across HTTP sends; and a
        statement that another session's locks hold up (a deadlock, the lock time-out), or that
        found the connection lost, is run again (:meth:`retry_conflicts`) unless ``retry`` is off.
        Only the statement is: once rows have been handed out, a failure is the caller's.
        """
        with self.lock:  # one thread at a time on the connection, for as long as the result is open
            cursor: Any = None
            self._open_queries += 1

            def start() -> None:
                nonlocal cursor
                if cursor is not None:  # an attempt that failed (on a connection since replaced)
                    self._close_cursor(cursor)
                cursor = self._run(lambda: self._cursor(kinds))
                self._run(lambda: cursor.execute(sql, tuple(params)))

            try:
                if retry and not self._in_transaction:
                    self._retry(start, "reading from the database", own_queries=1)
                else:
                    start()
                while True:
                    rows = self._run(lambda: cursor.fetchmany(chunk))
                    if not rows:
                        return
                    yield from (tuple(row) for row in rows)
            finally:
                self._open_queries -= 1
                if cursor is not None:
                    self._close_cursor(cursor)
                if self._odbc is not None and not self._in_transaction and self._open_queries == 0 and not self._broken:
                    try:
                        self._run(self._conn.commit)
                    except DatabaseError as exc:
                        if exc.kind != CONNECTION_LOST:
                            raise
                        # The rows were read (or the caller stopped reading them): the next statement
                        # finds the connection lost and deals with it.
                        log.debug("ending a read: %s", exc)

    @staticmethod
    def _close_cursor(cursor: Any) -> None:
        try:
            cursor.close()
        except Exception:  # noqa: BLE001
            log.debug("closing a cursor failed", exc_info=True)

    def answers(self) -> bool:
        """Whether the server answers ``SELECT 1`` with 1 (``test-db``'s first check)."""
        return self.scalar("SELECT 1") == 1

    def scalar(self, sql: str, params: Sequence[Any] = ()) -> Any:
        for row in self.query(sql, params, chunk=1):
            return row[0]
        return None

    def fetch_all(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """All the rows of a (small) result; tried again while another session's locks block it."""
        return self.retry_conflicts(lambda: list(self.query(sql, params, retry=False)), "reading rows")

    def odbc_info(self, name: str) -> str:
        """The ODBC driver's ``SQLGetInfo`` answer for ``name`` (``SQL_DBMS_NAME``...), as text."""
        return str(self._run(lambda: self._conn.getinfo(getattr(self._odbc, name))) or "")
