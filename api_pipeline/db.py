"""The database: connections, transactions, the staging table and the ledger.

Nothing outside this module touches ``sqlite3`` or ``pyodbc``; what differs
between the DBMSs is in ``dialects``, ODBC strings and errors in ``odbc``. All values go in
as ``?`` parameters; the only identifiers put into SQL text are the validated
table name and the names derived from it (config.TABLE_NAME_PATTERN).

``sqlite:///…`` opens the standard library's ``sqlite3``. Anything else is an
ODBC connection string: ``pyodbc`` is imported only then, and the DBMS the
connection reports (``SQL_DBMS_NAME``) picks the :class:`Dialect`, so one code
path serves SQL Server and PostgreSQL.
"""

from __future__ import annotations

import logging
import random
import re
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from api_pipeline.config import TABLE_NAME_PATTERN, Secret, sqlite_file_of
from api_pipeline.dialects import (  # noqa: F401 - re-exported: callers import them from here
    BINARY,
    DIALECTS,
    LEDGER_SPEC,
    LONG_TEXT,
    MSSQL,
    POSTGRES,
    REQUIRED_COLUMNS,
    SQLITE,
    STAGING_COLUMNS,
    STAGING_SPEC,
    ColumnInfo,
    ColumnIssue,
    Dialect,
    Kinds,
    check_columns,
    check_table_name_length,
    dialect_for_dbms,
    dialect_named,
    ledger_ddl,
    ledger_index_ddl,
    ledger_name,
    person_index_name,
    sqlite_column_info,
    staging_ddl,
    staging_index_ddl,
)
from api_pipeline.errors import ConfigError, DatabaseError
from api_pipeline.odbc import (
    CONFLICT,
    KEY_VIOLATION,
    LOCK_TIMEOUT,
    SQL_SERVER_DRIVER_PREFERENCE,
    SQL_SS_TIMESTAMPOFFSET,
    SQL_WCHAR,
    SQL_WLONGVARCHAR,
    SQL_WVARCHAR,
    OdbcContext,
    choose_sql_server_driver,
    decode_datetimeoffset,
    decode_wide_text,
    explain_odbc_error,
    is_microsoft_sql_driver,
    is_psqlodbc,
    odbc_value,
    parse_odbc_string,
    process_identity,
    with_psqlodbc_defaults,
)

log = logging.getLogger(__name__)

SQLITE_PREFIX = "sqlite:///"
PAGE_SIZE = 500
# SQLite, for a run's write-backs (Database.prepare_for_bulk_writes).
BULK_CACHE_KIB = 16 * 1024
CHECKPOINT_EVERY = 0.25  # seconds between the background checkpointer's passes
RESTART_FRAMES = 8_000  # log pages (~32 MB) after which it restarts the log, so the file stops growing
BULK_CHECKPOINT_PAGES = 40_000  # the run connection's own checkpoint, should the background one fall behind
# Parameters per statement in bulk writes: under SQLite's historical limit of 999.
MAX_PARAMETERS = 900
# The ledger's columns after its key, in the order write-back binds them.
_LEDGER_VALUES = tuple(c.name for c in LEDGER_SPEC[1:])
# How SQLite and PostgreSQL refuse ON CONFLICT (la_child_id) when that column is not a key.
_STATE = "LOWER(COALESCE(t.row_state, ''))"
_STATUS = "LOWER(COALESCE(t.submission_status, ''))"
_NO_CONFLICT_KEY = re.compile(r"ON CONFLICT clause does not match|no unique or exclusion constraint|42P10", re.I)
# Lock waits (SQL Server, PostgreSQL): one statement waits at most LOCK_WAIT_SECONDS for a lock
# another session holds, then fails and is tried again, LOCK_WAIT_ATTEMPTS times in all (half an
# hour), the run lock's heartbeat written between tries. A deadlock victim's work is tried again
# CONFLICT_ATTEMPTS times in all, after a short pause that doubles each time.
LOCK_WAIT_SECONDS = 30
LOCK_WAIT_ATTEMPTS = 60
CONFLICT_ATTEMPTS = 5
CONFLICT_PAUSE = 0.5  # seconds before the second attempt

T = TypeVar("T")


def _chunks(items: Sequence[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield list(items[start : start + size])


def _sqlite_error(exc: BaseException) -> DatabaseError:
    """SQLite's error, with the ``kind`` of the few that callers tell apart."""
    text = str(exc)
    kind = None
    if isinstance(exc, sqlite3.IntegrityError) and ("UNIQUE constraint" in text or "PRIMARY KEY" in text):
        kind = KEY_VIOLATION
    elif isinstance(exc, sqlite3.OperationalError) and ("database is locked" in text or "table is locked" in text):
        kind = LOCK_TIMEOUT
    return DatabaseError(f"database error: {text}", kind=kind)


def validate_table_name(name: str) -> str:
    if not TABLE_NAME_PATTERN.match(name):
        raise ConfigError(f"TABLE_NAME: {name!r} is not a valid table name")
    return name


# ---------------------------------------------------------------------------
# Connections
# ---------------------------------------------------------------------------


def sqlite_path(connection_string: str) -> str:
    """``sqlite:///relative.db`` → ``relative.db``; ``sqlite:////abs.db`` → ``/abs.db``."""
    path = connection_string[len(SQLITE_PREFIX) :]
    if not path:
        raise ConfigError("DB_CONNECTION_STRING: sqlite:/// needs a file path, e.g. sqlite:///staging.db")
    return path


def import_pyodbc() -> Any:
    """pyodbc, imported only for ODBC strings: SQLite works on a machine with no ODBC at all."""
    try:
        import pyodbc
    except ImportError as exc:
        raise DatabaseError(
            "DB_CONNECTION_STRING is an ODBC connection string, but pyodbc could not be loaded "
            f"({exc.__class__.__name__}: {exc}). On Linux, install the ODBC driver manager (unixODBC: "
            "apt-get install unixodbc) and your database's ODBC driver; if pyodbc itself is missing, "
            "reinstall this tool (pip install csc-api-pipeline). The Windows csc_api_pipeline.exe includes it."
        ) from None
    return pyodbc


@dataclass(frozen=True)
class ServerInfo:
    """What test-db reports."""

    dbms: str
    version: str
    driver: str
    driver_version: str
    login: str
    database: str


class _Checkpointer:
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


class Database:
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
    ) -> None:
        self._conn = connection
        self.dialect = dialect
        self.description = description
        self.driver_file = driver_file
        self._odbc = odbc
        self._context = context or OdbcContext()
        self._path = path
        self._errors: tuple[type[BaseException], ...] = (sqlite3.Error,)
        if odbc is not None:
            self._errors += (odbc.Error,)
        # fast_executemany sends a whole parameter array at once; proven with Microsoft's
        # SQL Server drivers only (it crashes the SQLite ODBC driver; FreeTDS and psqlODBC
        # gain nothing or misbehave), so only there.
        self.fast_executemany = odbc is not None and dialect.name == "mssql" and is_microsoft_sql_driver(driver_file)
        self._in_transaction = False
        self._open_queries = 0
        # One thread at a time on the connection (a run writes back on a thread of its own, and
        # beats the run lock's heartbeat before a send): held for a whole transaction, by a
        # query while its result is open, and by a reader for a whole page of rows.
        self.lock = threading.RLock()
        self._checkpointer: _Checkpointer | None = None  # SQLite, during a run's write-backs
        self._reader: Database | None = None  # SQLite, during a run's write-backs
        # Called between the tries of work blocked by another session's locks (the run lock's
        # heartbeat, so a run that waits is not taken for a crashed one).
        self.while_waiting: Callable[[], None] | None = None
        self.sleep: Callable[[float], None] = time.sleep
        self._in_wait_hook = False

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
            raise DatabaseError(
                f"the SQLite database {shown} does not exist. Check DB_CONNECTION_STRING (a relative path is "
                "read from the folder of the .env file that sets it); only init-db creates a new database."
            )
        return cls.connect(connection_string)

    @classmethod
    def connect(cls, connection_string: Secret | str) -> Database:
        text = connection_string.reveal() if isinstance(connection_string, Secret) else connection_string
        if text.lower().startswith("sqlite:"):
            if not text.lower().startswith(SQLITE_PREFIX):
                raise ConfigError(
                    "DB_CONNECTION_STRING: SQLite strings look like sqlite:///relative/path.db "
                    "or sqlite:////absolute/path.db"
                )
            return cls.open_sqlite(sqlite_path(text))
        return cls.open_odbc(text)

    @classmethod
    def open_sqlite(cls, path: str | Path) -> Database:
        path = str(path)
        if path != ":memory:" and not Path(path).absolute().parent.exists():
            shown = Path(path).absolute()
            raise DatabaseError(f"the SQLite database's folder does not exist: {shown.parent} (for {shown})")
        try:
            conn = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise DatabaseError(f"cannot open SQLite database {Path(path).absolute()}: {exc}") from None
        return cls(conn, SQLITE, description=f"SQLite {sqlite3.sqlite_version} ({path})", path=path)

    @classmethod
    def open_odbc(cls, text: str, *, odbc: Any = None) -> Database:
        """Connect through ODBC; ``odbc`` is the pyodbc module (tests may pass a stand-in)."""
        module = odbc if odbc is not None else import_pyodbc()
        pairs = parse_odbc_string(text)
        chosen = not any(key.lower() in ("driver", "dsn", "filedsn") for key, _ in pairs)
        if chosen:
            # No driver named: SQL Server (e.g. the USER_SERVER + USER_DATABASE form).
            driver = choose_sql_server_driver(module.drivers())
            if driver is None:
                raise DatabaseError(
                    "DB_CONNECTION_STRING names no ODBC driver and no SQL Server driver is installed "
                    f"(looked for {', '.join(SQL_SERVER_DRIVER_PREFERENCE)}; installed: "
                    f"{', '.join(module.drivers()) or 'none'}). Install Microsoft 'ODBC Driver 18 for SQL Server', "
                    "or add DRIVER={...} to DB_CONNECTION_STRING."
                )
            log.info("DB_CONNECTION_STRING names no ODBC driver: using %s, the newest SQL Server driver here", driver)
            text = f"DRIVER={{{driver}}};{text}"
        tuned = is_psqlodbc(odbc_value(parse_odbc_string(text), "DRIVER"))
        if tuned:
            text = with_psqlodbc_defaults(text)
        context = OdbcContext.from_string(text, installed_drivers=module.drivers, driver_chosen=chosen)
        conn = cls._odbc_connect(module, text, context)
        try:
            dbms = str(conn.getinfo(module.SQL_DBMS_NAME) or "")
            driver_file = str(conn.getinfo(module.SQL_DRIVER_NAME) or "")
            if "postgres" in dbms.lower() and not tuned and is_psqlodbc(driver_file):
                # A DSN hid the driver: reconnect with the psqlODBC settings applied.
                conn.close()
                text = with_psqlodbc_defaults(text)
                conn = cls._odbc_connect(module, text, context)
            dialect = dialect_for_dbms(dbms)
            version = str(conn.getinfo(module.SQL_DBMS_VER) or "")
            driver_version = str(conn.getinfo(module.SQL_DRIVER_VER) or "")
            if dialect is MSSQL and is_microsoft_sql_driver(driver_file):
                cls._add_output_converters(conn)
        except module.Error as exc:
            conn.close()
            raise explain_odbc_error(exc, context) from None
        except DatabaseError:
            conn.close()
            raise
        description = f"{dbms} {version} via ODBC driver {driver_file} {driver_version}"
        db = cls(conn, dialect, description=description, odbc=module, driver_file=driver_file, context=context)
        try:
            db._start_session()
        except DatabaseError:
            db.close()
            raise
        return db

    @staticmethod
    def _add_output_converters(conn: Any) -> None:
        """Microsoft's drivers: read Unicode text so that one lone surrogate cannot stop a run (pyodbc
        decodes strictly: a UnicodeDecodeError, which is no database error), and datetimeoffset,
        which pyodbc cannot read at all."""
        for sql_type in (SQL_WCHAR, SQL_WVARCHAR, SQL_WLONGVARCHAR):
            conn.add_output_converter(sql_type, decode_wide_text)
        conn.add_output_converter(SQL_SS_TIMESTAMPOFFSET, decode_datetimeoffset)

    def _start_session(self) -> None:
        """The dialect's session settings (row counts, deadlock priority, lock time-out), committed:
        a PostgreSQL SET rolled back with its transaction would be undone."""
        statements = self.dialect.session_sql(int(LOCK_WAIT_SECONDS * 1000))
        if statements:
            with self.transaction():
                for sql in statements:
                    self.execute(sql)

    @staticmethod
    def _odbc_connect(module: Any, text: str, context: OdbcContext) -> Any:
        try:
            return module.connect(text, autocommit=False)
        except module.Error as exc:
            raise explain_odbc_error(exc, context) from None

    def close(self) -> None:
        self._stop_checkpointer()  # a run that stopped on an error
        self._close_reader()
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
        if self.dialect.name != "sqlite" or self._odbc is not None or self._path in (None, ":memory:"):
            return
        try:
            with self.lock:
                mode = self._conn.execute("PRAGMA journal_mode=WAL").fetchone()
                self._conn.execute("PRAGMA synchronous=NORMAL")
                self._conn.execute(f"PRAGMA cache_size=-{BULK_CACHE_KIB}")
                self._conn.execute(f"PRAGMA wal_autocheckpoint={BULK_CHECKPOINT_PAGES}")
        except sqlite3.Error as exc:  # e.g. a read-only folder: the run still works, just slower
            log.debug("SQLite WAL mode not set: %s", exc)
            return
        log.debug("SQLite journal mode: %s", mode[0] if mode else "unknown")
        if mode and str(mode[0]).lower() == "wal" and self._checkpointer is None:
            self._checkpointer = _Checkpointer(str(self._path))
            self._checkpointer.start()
            self._reader = self._open_reader(str(self._path))

    @staticmethod
    def _open_reader(path: str) -> Database | None:
        conn = None
        try:
            conn = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA query_only=ON")
        except sqlite3.Error as exc:  # the run reads on its own connection, taking turns
            if conn is not None:
                conn.close()
            log.debug("SQLite reading connection not opened: %s", exc)
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
        if not self._stop_checkpointer():
            return
        try:
            with self.lock:
                self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        except sqlite3.Error as exc:  # another connection may hold it: SQLite checkpoints later
            log.debug("SQLite checkpoint not done: %s", exc)

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
                if self.dialect.name == "sqlite" and self._odbc is None:
                    self._run(lambda: self._conn.execute("BEGIN IMMEDIATE"))
                yield
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
                if not self._in_transaction:
                    self._rollback_quietly()  # PostgreSQL refuses everything after an error until then
                raise explain_odbc_error(exc, self._context) from None
            raise _sqlite_error(exc) from None

    def _cursor(self, kinds: Kinds | None) -> Any:
        cursor = self._conn.cursor()
        if self._odbc is not None:
            sizes = self.dialect.input_sizes(kinds)
            if sizes is not None:
                cursor.setinputsizes(sizes)
        return cursor

    def execute(self, sql: str, params: Sequence[Any] = (), *, kinds: Kinds | None = None) -> int:
        """Run one statement; returns the affected row count. ``kinds``: see :meth:`Dialect.input_sizes`."""

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
        statement that another session's locks hold up (a deadlock, the lock time-out) is
        run again (:meth:`retry_conflicts`) unless ``retry`` is off.
        """
        with self.lock:  # one thread at a time on the connection, for as long as the result is open
            cursor = self._run(lambda: self._cursor(kinds))
            self._open_queries += 1
            try:
                run = lambda: self._run(lambda: cursor.execute(sql, tuple(params)))  # noqa: E731
                if retry and not self._in_transaction:
                    self.retry_conflicts(run, "reading from the database")
                else:
                    run()
                while True:
                    rows = self._run(lambda: cursor.fetchmany(chunk))
                    if not rows:
                        return
                    yield from (tuple(row) for row in rows)
            finally:
                self._open_queries -= 1
                try:
                    cursor.close()
                except Exception:  # noqa: BLE001
                    log.debug("closing a cursor failed", exc_info=True)
                if self._odbc is not None and not self._in_transaction and self._open_queries == 0:
                    self._run(self._conn.commit)

    def scalar(self, sql: str, params: Sequence[Any] = ()) -> Any:
        for row in self.query(sql, params, chunk=1):
            return row[0]
        return None

    def fetch_all(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """All the rows of a (small) result; tried again while another session's locks block it."""
        return self.retry_conflicts(lambda: list(self.query(sql, params, retry=False)), "reading rows")

    def retry_conflicts(self, action: Callable[[], T], what: str) -> T:
        """``action`` (whole transactions, or reads outside one), tried again when it was a deadlock
        victim or a serialization failure (a few times, pausing a little longer each time) or timed
        out waiting for another session's locks (for up to half an hour); between tries, the
        :attr:`while_waiting` hook runs. The last failure is raised, saying how often it was tried."""
        conflicts = waits = 0
        while True:
            try:
                return action()
            except DatabaseError as exc:
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

    # -- the catalogue -------------------------------------------------------------

    def columns(self, table: str) -> list[ColumnInfo] | None:
        """The table's columns (names in lower case), or None when the table does not exist."""
        validate_table_name(table)
        if self.dialect.name == "sqlite":
            if "." in table:
                schema, name = table.split(".", 1)
                rows = list(self.query(f"PRAGMA {schema}.table_info({name})"))
            else:
                rows = list(self.query(f"PRAGMA table_info({table})"))
            return [
                sqlite_column_info(str(r[1]), str(r[2] or ""), nullable=not r[3], key=bool(r[5])) for r in rows
            ] or None
        qualified = "." in table
        names = table.split(".", 1) if qualified else [table]
        params = [self.dialect.catalogue_name(n) for n in names]
        found: list[ColumnInfo] = []
        schema_seen = None
        for schema, name, data_type, length, nullable, key in self.query(self.dialect.columns_sql(qualified), params):
            if schema_seen is None:
                schema_seen = schema
            if schema != schema_seen:  # the same table name in a schema further down the search order
                break
            size = None if length is None or int(length) < 0 else int(length)
            if str(data_type).lower() in ("text", "ntext", "bytea"):
                size = None
            found.append(
                ColumnInfo(
                    str(name).lower(),
                    str(data_type).lower(),
                    size,
                    nullable=None if nullable is None else str(nullable).upper() == "YES",
                    key=bool(key),
                )
            )
        return found or None

    def resolve_table(self, table: str) -> str | None:
        """``schema.table`` as the database resolves ``table`` (its spelling, default schema and
        search order), or None when there is no such table. ``SSD_Staging``, ``dbo.ssd_staging``
        and ``ssd_staging`` can all be one table; this gives each of them the same name."""
        validate_table_name(table)
        if self.dialect.name == "sqlite":
            return self._resolve_sqlite_table(table)
        sql = self.dialect.resolve_table_sql()
        for schema, name in self.query(sql or "", (table,)):
            if schema is not None and name is not None:
                return f"{schema}.{name}"
        return None

    def _resolve_sqlite_table(self, table: str) -> str | None:
        schemas = [str(row[1]) for row in self.query("PRAGMA database_list")]
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
            for (stored,) in self.query(
                f"SELECT name FROM {catalogue} WHERE type IN ('table', 'view') AND name = ? COLLATE NOCASE",  # noqa: S608
                (name,),
            ):
                return f"{schema}.{stored}"
        return None

    def column_names(self, table: str) -> list[str] | None:
        """The table's columns in lower case, or None when the table does not exist."""
        columns = self.columns(table)
        return None if columns is None else [c.name for c in columns]

    def server_info(self) -> ServerInfo:
        """DBMS, version, driver and who we are logged in as, for test-db."""
        if self._odbc is None:
            return ServerInfo(
                dbms="SQLite",
                version=sqlite3.sqlite_version,
                driver="Python sqlite3 module",
                driver_version=sys.version.split()[0],
                login=f"file access as {process_identity()}",
                database=self._path or "",
            )
        module = self._odbc

        def info(name: str) -> str:
            return str(self._run(lambda: self._conn.getinfo(getattr(module, name))) or "")

        login, database = "", ""
        if self.dialect.whoami_sql:
            for row in self.query(self.dialect.whoami_sql):
                login, database = str(row[0] or ""), str(row[1] or "")
        return ServerInfo(
            dbms=info("SQL_DBMS_NAME"),
            version=info("SQL_DBMS_VER"),
            driver=info("SQL_DRIVER_NAME"),
            driver_version=info("SQL_DRIVER_VER"),
            login=login,
            database=database,
        )


# ---------------------------------------------------------------------------
# The staging table and the ledger
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class StagingRow:
    """A candidate row, with what the ledger says DfE holds for that child."""

    id: int
    person_id: str | None
    json_payload: Any  # text, or whatever an odd column type gave (the pipeline checks)
    submission_status: str | None
    row_state: str | None
    ledger_json: str | None
    ledger_purged: bool
    ledger_receipt: str | None
    ledger_acknowledged_at: Any
    # Whether the ledger has an entry for this child at all (a purged child's has no record).
    ledger_found: bool = False
    # What an earlier tool left: the record before the council's latest change (usually what
    # that tool sent), its answer and the time of it. Used only for a child with no ledger entry.
    previous_json_payload: Any = None
    api_response: str | None = None
    submission_timestamp: Any = None

    @property
    def is_deleted(self) -> bool:
        return (self.row_state or "").strip().lower() == "deleted"

    @property
    def is_sent(self) -> bool:
        return (self.submission_status or "").strip().lower() == "sent"

    def with_ledger(self, entry: LedgerEntry | None) -> StagingRow:
        """This row with ``entry`` as what DfE holds (for a child the join by person_id could not find)."""
        if entry is None:
            return replace(
                self,
                ledger_json=None,
                ledger_purged=False,
                ledger_receipt=None,
                ledger_acknowledged_at=None,
                ledger_found=False,
            )
        return replace(
            self,
            ledger_json=entry.record_json,
            ledger_purged=entry.purged,
            ledger_receipt=entry.receipt,
            ledger_acknowledged_at=entry.acknowledged_at,
            ledger_found=True,
        )


@dataclass(frozen=True)
class LedgerEntry:
    """What DfE acknowledged for one child."""

    la_child_id: str
    mis_child_id: str | None
    staging_id: int
    record_json: str | None
    record_hash: bytes | None
    receipt: str
    acknowledged_at: datetime
    purged: bool


@dataclass(frozen=True)
class FirstContact:
    """Rows whose child has no ledger entry yet, by what the next run does with them (DESIGN §4)."""

    adopt: int  # an earlier tool sent it and it is unchanged: recorded in the ledger, not sent
    changed_since_sent: int  # marked sent but changed since: sent whole, with purges
    with_purges: int  # waiting, with the earlier tool's last copy: sent whole, with purges for what it lost
    whole: int  # waiting, never sent: sent whole
    purge: int  # deleted: purged

    @property
    def total(self) -> int:
        return self.adopt + self.changed_since_sent + self.with_purges + self.whole + self.purge

    def lines(self) -> list[str]:
        """What the next run will do for these children, in words."""
        if not self.total:
            return []
        parts = [
            (self.adopt, "recorded as DfE already holds them (an earlier tool sent them), not sent again"),
            (
                self.changed_since_sent + self.with_purges,
                "sent whole, with purges for what previous_json_payload has and the record now lacks",
            ),
            (self.whole, "sent whole"),
            (self.purge, "purged (deleted children)"),
        ]
        return [f"  {n} {'row' if n == 1 else 'rows'}: {what}" for n, what in parts if n]


@dataclass(frozen=True)
class RowUpdate:
    """The outcome to write to one staging row.

    ``expect_payload`` is the ``json_payload`` text read at the start: the
    update only applies if the council's SQL has not changed it since.
    """

    row_id: int
    status: str
    api_response: str
    expect_payload: str | None
    submission_timestamp: datetime | None = None
    mark_sent: bool = False
    previous_hash: bytes | None = None
    row_state: str | None = None
    purge: bool = False


class StagingTable:
    """Reads candidates from the staging table and writes outcomes back, with the ledger."""

    def __init__(self, db: Database, table: str, ledger: str | None = None) -> None:
        self.db = db
        self.table = validate_table_name(table)
        check_table_name_length(db.dialect, self.table)
        self.ledger = validate_table_name(ledger or ledger_name(table))
        self._has_ledger: bool | None = None
        self._current_hash: bool | None = None
        self._upsert_ledger = True

    # -- schema -------------------------------------------------------------

    def create_staging_table(self) -> None:
        """The table as councils' DDL makes it (no unique index: existing tables may lack one)."""
        with self.db.transaction():
            self.db.execute(staging_ddl(self.db.dialect, self.table))

    def create_person_id_index(self) -> None:
        with self.db.transaction():
            self.db.execute(staging_index_ddl(self.db.dialect, self.table))

    def create_ledger(self) -> None:
        with self.db.transaction():
            self.db.execute(ledger_ddl(self.db.dialect, self.ledger))
            self.db.execute(ledger_index_ddl(self.db.dialect, self.ledger))
        self._has_ledger = True

    def _has_current_hash(self) -> bool:
        if self._current_hash is None:
            self._current_hash = "current_hash" in (self.db.column_names(self.table) or [])
        return self._current_hash

    def has_ledger(self) -> bool:
        if self._has_ledger is None:
            self._has_ledger = self.db.column_names(self.ledger) is not None
        return self._has_ledger

    def ensure_ledger(self) -> None:
        """Create the ledger when it is missing; never alters an existing table."""
        if self.has_ledger():
            return
        try:
            self.create_ledger()
        except DatabaseError as exc:
            raise DatabaseError(
                f"the submission ledger table {self.ledger} does not exist and could not be created "
                f"({exc}). Ask your DBA to create it: csc-api-pipeline init-db --print"
            ) from None
        log.info("created the submission ledger table %s", self.ledger)

    def missing_columns(self) -> list[str] | None:
        """Required columns the staging table lacks; None when the table itself is missing."""
        present = self.db.column_names(self.table)
        if present is None:
            return None
        return [c for c in REQUIRED_COLUMNS if c not in present]

    def require_columns(self) -> None:
        """Raise the DatabaseError that says so when the staging table, or a column the tool needs, is missing."""
        missing = self.missing_columns()
        if missing is None:
            raise DatabaseError(
                f"the staging table {self.table} was not found. Check TABLE_NAME and DB_CONNECTION_STRING "
                "(run test-schema for details)."
            )
        if missing:
            raise DatabaseError(
                f"the staging table {self.table} lacks required column(s): {', '.join(missing)} "
                "(run test-schema for the fix)"
            )

    def column_issues(self) -> list[ColumnIssue] | None:
        """Missing or unusable staging columns with the DDL to fix each; None when the table is missing."""
        present = self.db.columns(self.table)
        return None if present is None else check_columns(self.db.dialect, self.table, STAGING_SPEC, present)

    def ledger_issues(self) -> list[ColumnIssue] | None:
        """The same for the ledger; None when it does not exist yet."""
        present = self.db.columns(self.ledger)
        return None if present is None else check_columns(self.db.dialect, self.ledger, LEDGER_SPEC, present)

    # -- reading --------------------------------------------------------------

    def duplicate_person_ids(self) -> frozenset[str]:
        """person_id values (spaces trimmed) on more than one row: the tool cannot tell which row is the child."""
        trimmed = self.db.dialect.trim("person_id")
        sql = (
            f"SELECT {trimmed} FROM {self.table} WHERE person_id IS NOT NULL AND {trimmed} <> '' "
            f"GROUP BY {trimmed} HAVING COUNT(*) > 1"
        )
        return frozenset(str(row[0]).strip() for row in self.db.query(sql))

    def person_ids(self) -> frozenset[str]:
        """Every row's person_id, spaces trimmed: whose la_child_id each matching row claims."""
        sql = f"SELECT person_id FROM {self.table} WHERE person_id IS NOT NULL"
        return frozenset(text for row in self.db.query(sql, chunk=2000) if (text := str(row[0]).strip()))

    def rows_without_person_id(self) -> Iterator[tuple[int, Any]]:
        """``(id, json_payload)`` of rows whose person_id is NULL or blank: only their record says who they are."""
        sql = (
            f"SELECT id, json_payload FROM {self.table} "
            f"WHERE person_id IS NULL OR {self.db.dialect.trim('person_id')} = '' ORDER BY id"
        )
        for row_id, payload in self.db.query(sql):
            yield int(row_id), payload

    def payload_of(self, row_id: int) -> Any:
        """One row's json_payload (None when the row is gone)."""
        return self.db.scalar(f"SELECT json_payload FROM {self.table} WHERE id = ?", (row_id,))

    def candidate_source(self, *, all_rows: bool = False) -> tuple[str, str]:
        """``(FROM source, WHERE condition)`` for the rows a run reads; the one definition of them.

        Candidates: every row not yet ``sent``/``invalid`` (any case); deleted children whose
        purge DfE has not acknowledged; and rows an earlier tool marked ``sent`` whose child
        has no ledger entry yet (switch-over: adopted into the ledger, DESIGN §4). The ledger
        is joined as ``l`` on the trimmed person_id (its columns are NULL when it does not exist
        yet: read-only runs do not create it). A row whose person_id is not its record's
        la_child_id is found in the ledger by its staging id instead.
        """
        source, unknown, not_purged = self._joined()
        if all_rows:
            return source, "1 = 1"
        wanted = (
            f"({_STATE} <> 'deleted' AND {_STATUS} NOT IN ('sent', 'invalid')) "
            f"OR ({_STATE} = 'deleted' AND {not_purged}) "
            f"OR ({_STATE} <> 'deleted' AND {_STATUS} = 'sent' AND {unknown})"
        )
        return source, wanted

    def candidates_from_where(self, *, all_rows: bool = False) -> str:
        """``FROM … WHERE …`` selecting the rows a run would read (no parameters)."""
        source, wanted = self.candidate_source(all_rows=all_rows)
        return f"FROM {source} WHERE {wanted}"

    def count_candidates(self, *, all_rows: bool = False, limit: int | None = None) -> int:
        """How many rows the next run (or ``validate``) will read: one cheap COUNT, for the progress bar."""
        found = int(self.db.scalar(f"SELECT COUNT(*) {self.candidates_from_where(all_rows=all_rows)}") or 0)
        return found if limit is None else min(found, limit)

    def _joined(self) -> tuple[str, str, str]:
        """The staging table ``t`` joined to the ledger ``l``; the conditions "the ledger has
        no entry for this row's child" and "the ledger has not recorded its purge"."""
        if not self.has_ledger():
            source = (
                f"{self.table} t LEFT JOIN (SELECT NULL AS la_child_id, NULL AS record_json, "
                "CAST(NULL AS INTEGER) AS purged, NULL AS receipt, NULL AS acknowledged_at) l ON 1 = 0"
            )
            return source, "1 = 1", "1 = 1"
        source = f"{self.table} t LEFT JOIN {self.ledger} l ON l.la_child_id = {self.db.dialect.trim('t.person_id')}"
        by_row = f"SELECT 1 FROM {self.ledger} r WHERE r.staging_id = t.id"
        unknown = f"l.la_child_id IS NULL AND NOT EXISTS ({by_row})"
        not_purged = f"(l.purged IS NULL OR l.purged = 0) AND NOT EXISTS ({by_row} AND r.purged = 1)"
        return source, unknown, not_purged

    def first_contact(self) -> FirstContact:
        """Children the ledger has no entry for yet (switch-over), by what the next run will do."""
        source, unknown, _ = self._joined()
        same = self.db.dialect.same_columns("t.previous_json_payload", "t.json_payload")
        live = f"{_STATE} <> 'deleted'"
        cases = (
            f"{live} AND {_STATUS} = 'sent' AND (t.previous_json_payload IS NULL OR {same})",
            f"{live} AND {_STATUS} = 'sent' AND t.previous_json_payload IS NOT NULL AND NOT ({same})",
            f"{live} AND {_STATUS} NOT IN ('sent', 'invalid') AND t.previous_json_payload IS NOT NULL",
            f"{live} AND {_STATUS} NOT IN ('sent', 'invalid') AND t.previous_json_payload IS NULL",
            f"{_STATE} = 'deleted'",
        )
        sums = ", ".join(f"SUM(CASE WHEN {case} THEN 1 ELSE 0 END)" for case in cases)
        for row in self.db.query(f"SELECT {sums} FROM {source} WHERE {unknown}"):
            return FirstContact(*(int(n or 0) for n in row))
        return FirstContact(0, 0, 0, 0, 0)

    _CANDIDATE_COLUMNS = (
        "t.id, t.person_id, t.json_payload, t.submission_status, t.row_state, "
        "l.record_json, l.purged, l.receipt, l.acknowledged_at, l.la_child_id, "
        "t.previous_json_payload, t.api_response, t.submission_timestamp"
    )

    @staticmethod
    def _candidate(row: Sequence[Any]) -> StagingRow:
        return StagingRow(
            id=int(row[0]),
            person_id=None if row[1] is None else str(row[1]).strip(),
            json_payload=row[2],
            submission_status=row[3],
            row_state=row[4],
            ledger_json=row[5],
            ledger_purged=bool(row[6]),
            ledger_receipt=row[7],
            ledger_acknowledged_at=row[8],
            ledger_found=row[9] is not None,
            previous_json_payload=row[10],
            api_response=row[11],
            submission_timestamp=row[12],
        )

    def iter_candidates(
        self, *, page_size: int = PAGE_SIZE, limit: int | None = None, all_rows: bool = False
    ) -> Iterator[StagingRow]:
        """Rows that may need sending (:meth:`candidate_source`), in id order, one page at a time.

        Keyset pagination (``id > last``) keeps memory flat, lets the writes of
        earlier batches commit between pages, and never re-reads a row.
        """
        source, wanted = self.candidate_source(all_rows=all_rows)
        rest = f"FROM {source} WHERE t.id > ? AND ({wanted}) ORDER BY t.id"
        sql = self.db.dialect.select_top(self._CANDIDATE_COLUMNS, rest)
        last_id, produced = 0, 0
        reader = self.db.reader
        while limit is None or produced < limit:
            size = page_size if limit is None else min(page_size, limit - produced)
            params = (size, last_id) if self.db.dialect.limit_first() else (last_id, size)
            with reader.lock:  # the whole page: on a shared connection, no write-back interleaves
                page = reader.fetch_all(sql, params)
            for row in page:
                produced += 1
                yield self._candidate(row)
            if len(page) < size:
                return
            last_id = int(page[-1][0])

    def rows_by_id(self, row_ids: Sequence[int]) -> Iterator[StagingRow]:
        """These rows, as :meth:`iter_candidates` gives them, in id order (the pipeline's second look)."""
        source, _ = self.candidate_source(all_rows=True)
        for chunk in _chunks(sorted(row_ids), MAX_PARAMETERS):
            marks = ", ".join("?" * len(chunk))
            sql = f"SELECT {self._CANDIDATE_COLUMNS} FROM {source} WHERE t.id IN ({marks}) ORDER BY t.id"
            with self.db.reader.lock:
                page = list(self.db.reader.query(sql, chunk))
            yield from (self._candidate(row) for row in page)

    def ledger_entry(self, la_child_id: str) -> LedgerEntry | None:
        """The ledger's entry for one child, or None (always None before the ledger exists)."""
        if not self.has_ledger():
            return None
        sql = (
            "SELECT la_child_id, mis_child_id, staging_id, record_json, record_hash, receipt, "
            f"acknowledged_at, purged FROM {self.ledger} WHERE la_child_id = ?"
        )
        for row in self.db.query(sql, (la_child_id,)):
            return LedgerEntry(
                la_child_id=row[0],
                mis_child_id=row[1],
                staging_id=row[2],
                record_json=row[3],
                record_hash=None if row[4] is None else bytes(row[4]),
                receipt=row[5],
                acknowledged_at=row[6],
                purged=bool(row[7]),
            )
        return None

    # -- writing --------------------------------------------------------------

    def _locked_rows(self, row_ids: Sequence[int]) -> dict[int, tuple[Any, str | None]]:
        """``json_payload`` (as :meth:`Dialect.stored_text` reads it: SQL Server, its SHA-256, so no
        payload travels back) and ``row_state`` of these rows, locked until the transaction ends.

        SQLite's ``BEGIN IMMEDIATE`` already holds the write lock; the others lock the rows read.
        """
        found: dict[int, tuple[Any, str | None]] = {}
        d = self.db.dialect
        hint = " WITH (UPDLOCK, ROWLOCK)" if d.name == "mssql" else ""
        tail = " FOR UPDATE" if d.name == "postgresql" else ""
        payload = d.stored_text("json_payload")
        for chunk in _chunks(sorted(set(row_ids)), MAX_PARAMETERS):
            marks = ", ".join("?" * len(chunk))
            # In id order, so concurrent writers that also go in id order cannot deadlock with it.
            sql = f"SELECT id, {payload}, row_state FROM {self.table}{hint} WHERE id IN ({marks}) ORDER BY id{tail}"
            for row_id, stored, state in self.db.query(sql, chunk, chunk=len(chunk)):
                found[int(row_id)] = (None if stored is None else d.comparable(stored), state)
        return found

    def _write_ledger(self, ledger: Sequence[LedgerEntry]) -> None:
        """Replace these children's ledger entries (inside the caller's transaction).

        SQLite and PostgreSQL update each entry in place (``ON CONFLICT ... DO UPDATE``), which
        leaves the key's index alone and dirties half the pages a delete and insert would;
        SQL Server, and a ledger whose ``la_child_id`` is not a key, delete and insert.
        """
        d = self.db.dialect
        upsert = self._upsert_ledger and d.name in ("sqlite", "postgresql")
        if not upsert:
            for chunk in _chunks([e.la_child_id for e in ledger], MAX_PARAMETERS):
                marks = ", ".join("?" * len(chunk))
                self.db.execute(f"DELETE FROM {self.ledger} WHERE la_child_id IN ({marks})", chunk)
        ledger_kinds = (None, None, None, LONG_TEXT, BINARY, None, None, None)
        values = [
            (
                e.la_child_id,
                e.mis_child_id,
                e.staging_id,
                e.record_json,
                e.record_hash,
                e.receipt,
                d.timestamp_param(e.acknowledged_at),
                1 if e.purged else 0,
            )
            for e in ledger
        ]
        insert = f"INSERT INTO {self.ledger} (la_child_id, {', '.join(_LEDGER_VALUES)}) VALUES "
        marks = "(?, ?, ?, ?, ?, ?, ?, ?)"
        on_conflict = ""
        if upsert:
            updates = ", ".join(f"{c} = excluded.{c}" for c in _LEDGER_VALUES)
            on_conflict = f" ON CONFLICT (la_child_id) DO UPDATE SET {updates}"
        if self.db.fast_executemany:  # one parameter array: as fast as it gets
            self.db.executemany(insert + marks + on_conflict, values, kinds=ledger_kinds)
        else:  # a multi-row VALUES: one round trip where executemany makes one per row
            for rows in _chunks(values, MAX_PARAMETERS // len(ledger_kinds)):
                self.db.execute(
                    insert + ", ".join([marks] * len(rows)) + on_conflict,
                    [value for row in rows for value in row],
                    kinds=ledger_kinds * len(rows),
                )

    def write_back(self, updates: Sequence[RowUpdate], ledger: Sequence[LedgerEntry]) -> int:
        """Write one batch's outcomes and ledger entries in one transaction.

        Returns how many row updates were skipped because the council's SQL
        changed the row since it was read (those rows stay pending). A transaction the
        database rolled back as a deadlock victim, or one that waited too long for the
        staging SQL's locks, is written again from the start (Database.retry_conflicts).
        """
        return self.db.retry_conflicts(lambda: self._write_back_once(updates, ledger), "writing back a batch")

    def _write_back_once(self, updates: Sequence[RowUpdate], ledger: Sequence[LedgerEntry]) -> int:
        try:
            return self._write_back(updates, ledger)
        except DatabaseError as exc:
            # A ledger made by hand without its primary key: nothing was written (the
            # transaction rolled back); delete and insert from now on.
            if not (self._upsert_ledger and ledger and _NO_CONFLICT_KEY.search(str(exc))):
                raise
            self._upsert_ledger = False
            log.warning(
                "the ledger table %s has no primary key on la_child_id; writing it the slower way. "
                "csc-api-pipeline init-db --print shows the DDL it should have",
                self.ledger,
            )
            return self._write_back(updates, ledger)

    def _write_back(self, updates: Sequence[RowUpdate], ledger: Sequence[LedgerEntry]) -> int:
        d = self.db.dialect
        t = self.table
        # previous_hash takes current_hash, as the earlier tools and the council's SQL do;
        # a table without current_hash gets the hash of the record sent.
        copy_hash = self._has_current_hash()
        # Each statement in two forms: for rows re-read under the transaction's lock and found
        # as they were (the lock keeps them so: no check needed), and with the optimistic check
        # for any other row, so the database's own comparison decides.
        same_payload = f" AND {d.same_stored_text('json_payload')}"
        # kind -> (the columns set from parameters, as (column, PostgreSQL type), in parameter
        # order before the row id; what else is set; the optimistic check).
        shapes: dict[str, tuple[tuple[tuple[str, str], ...], str, str]] = {
            "sent": (
                (
                    ("submission_status", "TEXT"),
                    ("api_response", "TEXT"),
                    ("submission_timestamp", "TIMESTAMP"),
                    *(() if copy_hash else (("previous_hash", "BYTEA"),)),
                    ("row_state", "TEXT"),
                ),
                "previous_json_payload = json_payload, partial_json_payload = NULL"
                + (", previous_hash = current_hash" if copy_hash else ""),
                same_payload,
            ),
            "purge": (
                (("submission_status", "TEXT"), ("api_response", "TEXT"), ("submission_timestamp", "TIMESTAMP")),
                "",
                " AND LOWER(row_state) = 'deleted'",
            ),
            "outcome": ((("submission_status", "TEXT"), ("api_response", "TEXT")), "", same_payload),
            "note": ((("api_response", "TEXT"),), "", same_payload),
        }
        kinds_of = {"TEXT": None, "TIMESTAMP": None, "BYTEA": BINARY}
        statements: dict[str, tuple[str, tuple[Any, ...], str]] = {}
        for kind, (columns, also, check) in shapes.items():
            assignments = ", ".join([*(f"{column} = ?" for column, _ in columns), *([also] if also else [])])
            param_kinds = tuple(LONG_TEXT if c == "api_response" else kinds_of[pg] for c, pg in columns) + (None,)
            statements[kind] = (f"UPDATE {t} SET {assignments} WHERE id = ?", param_kinds, check)

        def set_based(kind: str, rows: list[tuple[Any, ...]]) -> None:
            """PostgreSQL: many rows' updates in one statement, one round trip (psqlODBC's
            executemany makes one per row). Every parameter is cast: psqlODBC sends them untyped."""
            columns, also, _ = shapes[kind]
            names = [column for column, _ in columns]
            casts = [f"CAST(? AS {pg})" for _, pg in columns] + ["CAST(? AS INTEGER)"]
            row_marks = "(" + ", ".join(casts) + ")"
            assignments = ", ".join([*(f"{n} = v.{n}" for n in names), *([also] if also else [])])
            for chunk in _chunks(rows, MAX_PARAMETERS // len(casts)):
                self.db.execute(
                    f"UPDATE {t} SET {assignments} FROM (VALUES {', '.join([row_marks] * len(chunk))}) "
                    f"AS v({', '.join([*names, 'row_id'])}) WHERE {t}.id = v.row_id",
                    [value for row in chunk for value in row],
                )

        def plan(u: RowUpdate) -> tuple[str, tuple[Any, ...]]:
            if u.purge:
                return "purge", (u.status, u.api_response, d.timestamp_param(u.submission_timestamp), u.row_id)
            if u.mark_sent:
                hashed = () if copy_hash else (u.previous_hash,)
                params = (u.status, u.api_response, d.timestamp_param(u.submission_timestamp), *hashed, u.row_state)
                return "sent", (*params, u.row_id)
            if u.status:
                return "outcome", (u.status, u.api_response, u.row_id)
            return "note", (u.api_response, u.row_id)

        skipped = 0
        with self.db.transaction():
            if ledger:
                self._write_ledger(ledger)
            # The optimistic check, in bulk: the batch's rows are read once under a write lock;
            # those still as they were read are updated together (executemany); any other
            # row is updated on its own so the database's own comparison decides and is counted.
            current = self._locked_rows([u.row_id for u in updates])
            together: dict[str, list[tuple[Any, ...]]] = {}
            for u in updates:
                kind, params = plan(u)
                payload, state = current.get(u.row_id, (None, None))
                # The text read, as stored_text reads it (SQL Server: its hash; the text of a row
                # that was not valid as stored is never bound back, only the hash of its bytes).
                expected = None if u.purge else d.expected_text(u.expect_payload)
                if u.row_id in current and ((state or "").lower() == "deleted" if u.purge else payload == expected):
                    together.setdefault(kind, []).append(params)
                    continue
                sql, kinds, check = statements[kind]
                if u.purge:
                    checked = self.db.execute(sql + check, params, kinds=kinds)
                else:
                    checked = self.db.execute(sql + check, (*params, expected), kinds=(*kinds, d.expected_kind))
                if checked == 0:
                    skipped += 1
            for kind, rows in together.items():
                if d.name == "postgresql" and len(rows) > 1:
                    set_based(kind, rows)
                    continue
                sql, kinds, _ = statements[kind]
                self.db.executemany(sql, rows, kinds=kinds)
        return skipped
