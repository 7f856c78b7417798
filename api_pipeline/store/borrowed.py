"""A database connection the caller opened and owns (the Python API's ``connection=``), wrapped as a
:class:`~api_pipeline.store.db.Database` for one run.

A notebook often has its connection already: a ``sqlite3`` one, or a ``pyodbc`` one opened with
an Entra ID access token that no connection string could hold. The run uses it as it would one
of its own: the DBMS it reports picks the dialect (``SQL_DBMS_NAME``, Babelfish told apart as
``connect`` does), Microsoft's drivers get the same converters, and the dialect's session
settings are applied. What the tool has to change on the connection for the run (autocommit
off, SQLite's transaction handling and text decoding, the converters, SQLite's bulk-write
pragmas) is put back when the run ends, and the connection is never closed: it is the caller's.

Two things stay as the run left them, as they would on a connection of the tool's own: a SQLite
file in write-ahead-logging mode (a property of the file), and on SQL Server or PostgreSQL the
session settings (``SET NOCOUNT ON``, the lock time-out, the deadlock priority).
"""

from __future__ import annotations

import contextlib
import sqlite3
import sys
import threading
from collections.abc import Callable
from typing import Any

from api_pipeline.errors import ConfigError
from api_pipeline.store.connect import add_output_converters, says_babelfish
from api_pipeline.store.db import Database
from api_pipeline.store.dialects import BABELFISH, MSSQL, SQLITE, dialect_for_dbms
from api_pipeline.store.odbc import (
    SQL_CHAR,
    SQL_SS_TIMESTAMPOFFSET,
    SQL_WCHAR,
    SQL_WLONGVARCHAR,
    SQL_WVARCHAR,
    OdbcContext,
)
from api_pipeline.store.odbc_errors import explain_odbc_error

# SQLite's settings a run changes on the connection for its write-backs (sqlite.SQLite.tune_for_bulk_writes).
_SQLITE_PRAGMAS = ("synchronous", "cache_size", "wal_autocheckpoint")
_CONVERTED = (SQL_WCHAR, SQL_WVARCHAR, SQL_WLONGVARCHAR, SQL_SS_TIMESTAMPOFFSET)


def borrow(connection: Any) -> Database:
    """``connection`` (an open ``sqlite3`` or ``pyodbc`` connection) as a Database whose ``close``
    gives it back as it was instead of closing it. Raises ConfigError for anything else, or for a
    connection the run cannot use (closed, in the middle of a transaction, tied to one thread)."""
    if isinstance(connection, sqlite3.Connection):
        return _borrow_sqlite(connection)
    module = sys.modules.get("pyodbc")
    if module is not None and isinstance(connection, module.Connection):
        return _borrow_odbc(connection, module)
    raise ConfigError(
        f"connection: a {type(connection).__module__}.{type(connection).__name__} cannot be used; give an open "
        "sqlite3 connection or a pyodbc connection (to SQL Server or PostgreSQL)"
    )


def _borrow_sqlite(connection: sqlite3.Connection) -> Database:
    try:
        files = connection.execute("PRAGMA database_list").fetchall()
    except sqlite3.ProgrammingError as exc:  # closed
        raise ConfigError(f"connection: the sqlite3 connection cannot be used: {exc}") from None
    if connection.in_transaction:
        raise ConfigError(
            "connection: the sqlite3 connection has a transaction open; commit or roll back your own changes "
            "first (the run commits its own work batch by batch)"
        )
    if not _usable_from_another_thread(connection):
        raise ConfigError(
            "connection: the sqlite3 connection can be used only by the thread that opened it, and the run "
            "writes back on a thread of its own: open it with sqlite3.connect(path, check_same_thread=False)"
        )
    path = next((str(file) for _, name, file in files if name == "main" and file), ":memory:")
    before: dict[str, Any] = {name: connection.execute(f"PRAGMA {name}").fetchone()[0] for name in _SQLITE_PRAGMAS}
    isolation_level, text_factory = connection.isolation_level, connection.text_factory
    connection.isolation_level = None  # the store begins and commits its transactions itself

    def give_back() -> None:
        with contextlib.suppress(sqlite3.Error):
            if connection.in_transaction:  # a run that stopped on an error mid-statement
                connection.rollback()
            for name, value in before.items():
                connection.execute(f"PRAGMA {name}={int(value)}")
        connection.isolation_level = isolation_level
        connection.text_factory = text_factory

    description = f"SQLite {sqlite3.sqlite_version} ({path}), a connection given to the run"
    return Database(connection, SQLITE, description=description, path=path, give_back=give_back)


def _usable_from_another_thread(connection: sqlite3.Connection) -> bool:
    """Whether ``connection`` was opened with ``check_same_thread=False``: tried, as nothing else tells."""
    usable: list[bool] = []

    def attempt() -> None:
        try:
            connection.execute("SELECT 1").fetchone()
            usable.append(True)
        except sqlite3.ProgrammingError:
            usable.append(False)

    thread = threading.Thread(target=attempt, name="connection-check")
    thread.start()
    thread.join(timeout=30)
    return usable == [True]


def _borrow_odbc(connection: Any, module: Any) -> Database:
    context = OdbcContext()
    try:
        dbms = str(connection.getinfo(module.SQL_DBMS_NAME) or "")
        driver_file = str(connection.getinfo(module.SQL_DRIVER_NAME) or "")
        version = str(connection.getinfo(module.SQL_DBMS_VER) or "")
        driver_version = str(connection.getinfo(module.SQL_DRIVER_VER) or "")
        autocommit = bool(connection.autocommit)
        connection.autocommit = False  # the store commits each transaction itself
        dialect = dialect_for_dbms(dbms)
        if dialect is MSSQL and says_babelfish(connection):
            dialect = BABELFISH
    except module.ProgrammingError as exc:  # closed
        raise ConfigError(f"connection: the pyodbc connection cannot be used: {exc}") from None
    except module.Error as exc:
        raise explain_odbc_error(exc, context, connected=True) from None
    put_back: list[Callable[[], None]] = []
    if dialect.uses_microsoft_driver(driver_file):
        put_back.append(_converters_put_back(connection))
        add_output_converters(connection)

    def give_back() -> None:
        with contextlib.suppress(module.Error):
            connection.rollback()  # nothing of the run's is left uncommitted; a failed statement's is undone
        for restore in put_back:
            restore()
        with contextlib.suppress(module.Error):
            connection.autocommit = autocommit

    return Database(
        connection,
        dialect,
        description=f"{dbms} {version} via ODBC driver {driver_file} {driver_version}, a connection given to the run",
        odbc=module,
        driver_file=driver_file,
        context=context,
        give_back=give_back,
    ).in_session()


def _converters_put_back(connection: Any) -> Callable[[], None]:
    """What puts back the converters and the decoding that ``add_output_converters`` replaces."""
    converters = {sql_type: connection.get_output_converter(sql_type) for sql_type in _CONVERTED}
    encoding, ctype = connection.getdecoding(SQL_CHAR)

    def put_back() -> None:
        for sql_type, converter in converters.items():
            if converter is None:
                connection.remove_output_converter(sql_type)
            else:
                connection.add_output_converter(sql_type, converter)
        connection.setdecoding(SQL_CHAR, encoding=encoding, ctype=ctype)

    return put_back
