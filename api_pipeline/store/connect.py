"""Opening a connection: a SQLite file, or an ODBC connection string with the driver, DBMS and dialect it leads to.

``sqlite:///…`` opens the standard library's ``sqlite3``. Anything else is an ODBC connection
string: ``pyodbc`` is imported only then (:func:`import_pyodbc`), and the DBMS the connection
reports (``SQL_DBMS_NAME``) picks the dialect, so one code path serves SQL Server and PostgreSQL.
``db.Database`` wraps what is opened here.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from api_pipeline.errors import ConfigError, DatabaseError
from api_pipeline.settings.config import FROM_SERVER_AND_DATABASE
from api_pipeline.store.dialect import Dialect
from api_pipeline.store.dialects import BABELFISH, MSSQL, dialect_for_dbms
from api_pipeline.store.odbc import (
    SQL_CHAR,
    SQL_SERVER_DRIVER_PREFERENCE,
    SQL_SS_TIMESTAMPOFFSET,
    SQL_WCHAR,
    SQL_WLONGVARCHAR,
    SQL_WVARCHAR,
    OdbcContext,
    choose_sql_server_driver,
    decode_datetimeoffset,
    decode_wide_text,
    for_freetds,
    is_freetds_driver,
    is_psqlodbc,
    odbc_value,
    parse_odbc_string,
    with_psqlodbc_defaults,
)
from api_pipeline.store.odbc_errors import explain_odbc_error

log = logging.getLogger(__name__)

SQLITE_PREFIX = "sqlite:///"


def sqlite_path(connection_string: str, setting: str = "DB_CONNECTION_STRING") -> str:
    """``sqlite:///relative.db`` → ``relative.db``; ``sqlite:////abs.db`` → ``/abs.db``."""
    path = connection_string[len(SQLITE_PREFIX) :]
    if not path:
        raise ConfigError(f"{setting}: sqlite:/// needs a file path, e.g. sqlite:///staging.db")
    return path


def open_sqlite_connection(path: str) -> sqlite3.Connection:
    """The SQLite file at ``path`` (made if missing, in a folder that must exist), or ``:memory:``."""
    if path != ":memory:" and not Path(path).absolute().parent.exists():
        shown = Path(path).absolute()
        raise DatabaseError(f"the SQLite database's folder does not exist: {shown.parent} (for {shown})")
    try:
        return sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
    except sqlite3.Error as exc:
        raise DatabaseError(f"cannot open SQLite database {Path(path).absolute()}: {exc}") from None


def import_pyodbc(setting: str = "DB_CONNECTION_STRING") -> Any:
    """pyodbc, imported only for ODBC strings: SQLite works on a machine with no ODBC at all."""
    try:
        import pyodbc  # optional: only for ODBC strings (SQLite needs no ODBC driver manager)
    except ImportError as exc:
        what = (
            "USER_SERVER and USER_DATABASE connect to SQL Server through ODBC"
            if setting == FROM_SERVER_AND_DATABASE
            else f"{setting} is an ODBC connection string"
        )
        raise DatabaseError(
            f"{what}, but pyodbc could not be loaded "
            f"({exc.__class__.__name__}: {exc}). On Linux, install the ODBC driver manager (unixODBC: "
            "apt-get install unixodbc) and your database's ODBC driver; if pyodbc itself is missing, "
            "reinstall this tool (pip install csc-api-pipeline). The Windows csc_api_pipeline.exe includes it."
        ) from None
    return pyodbc


def _no_sql_server_driver(setting: str, installed: Sequence[str]) -> str:
    """A connection string naming no driver means SQL Server, and this machine has no driver for it."""
    looked = f"(looked for {', '.join(SQL_SERVER_DRIVER_PREFERENCE)}; installed: {', '.join(installed) or 'none'})"
    if setting == FROM_SERVER_AND_DATABASE:
        return (
            "USER_SERVER and USER_DATABASE connect to SQL Server, and no SQL Server ODBC driver is installed on this "
            f"machine {looked}. Install Microsoft 'ODBC Driver 18 for SQL Server', or set DB_CONNECTION_STRING "
            "instead, naming an installed driver with DRIVER={...}."
        )
    return (
        f"{setting} names no ODBC driver and no SQL Server driver is installed {looked}. Install Microsoft "
        f"'ODBC Driver 18 for SQL Server', or add DRIVER={{...}} to {setting}."
    )


@dataclass(frozen=True)
class OdbcConnection:
    """An ODBC connection just opened, and what was learnt opening it."""

    connection: Any
    module: Any  # pyodbc, or a test's stand-in
    dialect: Dialect
    description: str
    driver_file: str
    context: OdbcContext
    open_again: Callable[[], Any]  # a new connection as this one was made (raises the driver's error)


def open_odbc_connection(text: str, module: Any, setting: str = "DB_CONNECTION_STRING") -> OdbcConnection:
    """Connect through ODBC with ``module`` (pyodbc): the driver chosen when none is named, FreeTDS's and
    psqlODBC's settings applied, the DBMS (and Babelfish) told apart, Microsoft's drivers' converters added.

    ``setting`` is the setting ``text`` came from, for the messages (see ``config.ConnectionString``).
    """
    pairs = parse_odbc_string(text)
    chosen = not any(key.lower() in ("driver", "dsn", "filedsn") for key, _ in pairs)
    if chosen:
        # No driver named: SQL Server (e.g. the USER_SERVER + USER_DATABASE form).
        driver = choose_sql_server_driver(module.drivers())
        if driver is None:
            raise DatabaseError(_no_sql_server_driver(setting, module.drivers()))
        named = "USER_SERVER and USER_DATABASE name" if setting == FROM_SERVER_AND_DATABASE else f"{setting} names"
        log.info("%s no ODBC driver: using %s, the newest SQL Server driver here", named, driver)
        text = f"DRIVER={{{driver}}};{text}"
    driver_named = odbc_value(parse_odbc_string(text), "DRIVER")
    if is_freetds_driver(driver_named or "") or "freetds" in (driver_named or "").lower():
        text = for_freetds(text)
    tuned = is_psqlodbc(driver_named)
    if tuned:
        text = with_psqlodbc_defaults(text)
    context = OdbcContext.from_string(text, installed_drivers=module.drivers, driver_chosen=chosen, setting=setting)
    conn = _odbc_connect(module, text, context)
    try:
        dbms = str(conn.getinfo(module.SQL_DBMS_NAME) or "")
        driver_file = str(conn.getinfo(module.SQL_DRIVER_NAME) or "")
        if "postgres" in dbms.lower() and not tuned and is_psqlodbc(driver_file):
            # A DSN hid the driver: reconnect with the psqlODBC settings applied.
            conn.close()
            text = with_psqlodbc_defaults(text)
            conn = _odbc_connect(module, text, context)
        dialect = dialect_for_dbms(dbms)
        if dialect is MSSQL and says_babelfish(conn):
            dialect = BABELFISH
        version = str(conn.getinfo(module.SQL_DBMS_VER) or "")
        driver_version = str(conn.getinfo(module.SQL_DRIVER_VER) or "")
        if dialect.uses_microsoft_driver(driver_file):
            add_output_converters(conn)
    except module.Error as exc:
        conn.close()
        raise explain_odbc_error(exc, context, connected=True) from None
    except DatabaseError:
        conn.close()
        raise
    description = f"{dbms} {version} via ODBC driver {driver_file} {driver_version}"
    microsoft = dialect.uses_microsoft_driver(driver_file)

    def open_again() -> Any:
        """A new connection as this one was made (raises the driver's error)."""
        again = module.connect(text, autocommit=False)
        if microsoft:
            add_output_converters(again)
        return again

    return OdbcConnection(conn, module, dialect, description, driver_file, context, open_again)


def says_babelfish(conn: Any) -> bool:
    """Whether a server that speaks SQL Server's protocol is Babelfish for PostgreSQL, which names
    itself in ``@@VERSION`` (its ODBC answers are SQL Server's). It differs where the tool relies
    on it: see :class:`~api_pipeline.store.sql_server.Babelfish`."""
    cursor = conn.cursor()
    try:
        cursor.execute("SELECT @@VERSION")
        row = next(iter(cursor.fetchmany(1)), None)
    finally:
        cursor.close()
    conn.commit()  # autocommit is off: end the read's implicit transaction
    return row is not None and "babelfish" in str(row[0]).lower()


def add_output_converters(conn: Any) -> None:
    """Microsoft's drivers: read Unicode text so that one lone surrogate cannot stop a run (pyodbc
    decodes strictly: a UnicodeDecodeError, which is no database error), and datetimeoffset,
    which pyodbc cannot read at all. VARCHAR text is asked for as UTF-16, which the driver
    converts to from the column's code page: as pyodbc's default SQL_C_CHAR, Windows' driver
    gives it in the ANSI code page, which pyodbc would decode as UTF-8."""
    for sql_type in (SQL_WCHAR, SQL_WVARCHAR, SQL_WLONGVARCHAR):
        conn.add_output_converter(sql_type, decode_wide_text)
    conn.add_output_converter(SQL_SS_TIMESTAMPOFFSET, decode_datetimeoffset)
    conn.setdecoding(SQL_CHAR, encoding="utf-16le", ctype=SQL_WCHAR)


def _odbc_connect(module: Any, text: str, context: OdbcContext) -> Any:
    try:
        return module.connect(text, autocommit=False)
    except module.Error as exc:
        raise explain_odbc_error(exc, context) from None
