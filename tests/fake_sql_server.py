"""A stand-in for pyodbc talking to SQL Server: it records the SQL it is sent and answers the catalogue.

No SQL Server can run here, so the SQL Server tests (test_tsql, test_sql_server, test_identity,
test_init_db, test_receipts) drive the real code paths (Database.open_odbc, StagingTable, RunLock,
init-db, test-db, test-schema) over this module's pyodbc. Not a test module: the tests import it,
as they import conftest. The ``recorder`` fixture (conftest.py) sends every Database.connect here.
"""

from __future__ import annotations

from typing import Any

import pytest

from api_pipeline.settings.config import Secret, load_settings
from api_pipeline.store.db import Database

TABLE = "ssd_development.ssd_api_data_staging"
CONNECTION = "DRIVER={ODBC Driver 18 for SQL Server};SERVER=sql01;DATABASE=HDM;Trusted_Connection=yes;"


class FakeOdbcError(Exception):
    pass


class Wide(bytes):
    """An NCHAR/NVARCHAR value as the driver returns it: UTF-16LE code units, not yet decoded."""


class Offset(bytes):
    """A datetimeoffset value as the driver returns it: SQL_SS_TIMESTAMPOFFSET_STRUCT."""


class Narrow(bytes):
    """A VARCHAR value as it is stored, in the column's code page (Windows-1252 here). Asked for it as
    SQL_C_CHAR (pyodbc's default), Microsoft's driver on Windows gives these bytes in the ANSI code page,
    which pyodbc decodes as UTF-8; asked for SQL_C_WCHAR, it converts them to UTF-16 itself."""


def as_pyodbc_reads(value: Any, converters: dict[int, Any], decodings: dict[int, Any] | None = None) -> Any:
    """What pyodbc makes of a column value: its output converter for the type, when one is registered,
    gets the raw bytes; otherwise it decodes Unicode text strictly and cannot read datetimeoffset.
    VARCHAR is decoded as ``setdecoding(SQL_CHAR, ...)`` says (``decodings``; by default UTF-8)."""
    if isinstance(value, Narrow):
        if (decodings or {}).get(1) == ("utf-16le", -8):
            return bytes(value).decode("cp1252").encode("utf-16-le").decode("utf-16-le")
        return bytes(value).decode("utf-8")
    if isinstance(value, Wide):
        return converters[-9](bytes(value)) if -9 in converters else bytes(value).decode("utf-16-le")
    if isinstance(value, Offset):
        if -155 in converters:
            return converters[-155](bytes(value))
        raise FakeOdbcError("ODBC SQL type -155 is not yet supported.  column-index=1  type=-155", "HY106")
    return value


# SQL Server's own description of the councils' staging table (INFORMATION_SCHEMA.COLUMNS:
# name, type, length; then IS_NULLABLE and whether the primary key uses it).
SQL_SERVER_COLUMNS = [
    ("id", "int", None, "NO", 1),
    ("person_id", "nvarchar", 48, "YES", 0),
    ("legacy_id", "nvarchar", 36, "YES", 0),
    ("json_payload", "nvarchar", -1, "NO", 0),
    ("previous_json_payload", "nvarchar", -1, "YES", 0),
    ("partial_json_payload", "nvarchar", -1, "YES", 0),
    ("current_hash", "binary", 32, "YES", 0),
    ("previous_hash", "binary", 32, "YES", 0),
    ("submission_status", "nvarchar", 50, "YES", 0),
    ("submission_timestamp", "datetime", None, "YES", 0),
    ("api_response", "nvarchar", -1, "YES", 0),
    ("row_state", "nvarchar", 10, "YES", 0),
    ("last_updated", "datetime", None, "YES", 0),
]


def _catalogue_row(table: str, column: tuple) -> tuple:
    """A column as INFORMATION_SCHEMA.COLUMNS gives it, from (name, type, length[, nullable, key[, collation]]):
    text columns in the usual case-insensitive collation unless given one."""
    name, data_type, length = column[:3]
    nullable, key = column[3:5] if len(column) >= 5 else ("YES", 0)
    collation = column[5] if len(column) >= 6 else ("Latin1_General_CI_AS" if "char" in data_type else None)
    return (table, "ssd_development", name, data_type, length, nullable, collation, key)


class Recorder:
    """What the fake connection saw, and which tables it pretends exist."""

    def __init__(self, tables: dict[str, list[tuple]] | None = None) -> None:
        self.statements: list[str] = []
        self.input_sizes: list[Any] = []
        self.fast_executemany: list[bool] = []
        self.connection_strings: list[str] = []
        self.tables = tables if tables is not None else {}
        self.lock_row: tuple | None = None
        self.converters: dict[int, Any] = {}
        self.decodings: dict[int, Any] = {}  # setdecoding(sql type, encoding, ctype)
        self.filtered_indexes: list[str] = []
        self.params: list[tuple] = []
        self.many_params: list[list[tuple]] = []
        # Tests set these to answer further statements: (sql, params) -> rows, and -> row count.
        self.more: Any = None
        self.rowcount_of: Any = None

    def answer(self, sql: str, params: tuple) -> list[tuple]:
        if self.more is not None:
            rows = self.more(sql, params)
            if rows is not None:
                return rows
        if "INFORMATION_SCHEMA.COLUMNS" in sql:  # (table, schema, column, type, length, nullable, collation, key)
            return [_catalogue_row(name, c) for name in params for c in self.tables.get(name, [])]
        if "FROM sys.objects" in sql:  # OBJECT_ID(?): as SQL Server resolves the name
            name = params[0].rsplit(".", 1)[-1].lower()
            return [("ssd_development", name)] if name in self.tables else []
        if "has_filter = 1" in sql:
            return [(name,) for name in self.filtered_indexes]
        if sql.startswith("SELECT SUSER_SNAME()"):
            return [("CORP\\svc_csc", "HDM_Local")]
        if sql.startswith("SELECT holder"):
            return [self.lock_row] if self.lock_row else []
        if sql == "SELECT 1":
            return [(1,)]
        return []


class FakeCursor:
    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder
        self.rowcount = 1
        self.fast_executemany = False
        self._rows: list[tuple] = []

    def setinputsizes(self, sizes: Any) -> None:
        self.recorder.input_sizes.append(sizes)

    def execute(self, sql: str, params: tuple = ()) -> None:
        self.recorder.statements.append(sql)
        self.recorder.params.append(params)
        self._rows = self.recorder.answer(sql, params)
        if self.recorder.rowcount_of is not None:
            self.rowcount = self.recorder.rowcount_of(sql, params)

    def executemany(self, sql: str, rows: list[tuple]) -> None:
        self.recorder.statements.append(sql)
        self.recorder.many_params.append(list(rows))
        self.recorder.fast_executemany.append(self.fast_executemany)

    def fetchmany(self, n: int) -> list[tuple]:
        rows, self._rows = self._rows[:n], self._rows[n:]
        return [
            tuple(as_pyodbc_reads(v, self.recorder.converters, self.recorder.decodings) for v in row) for row in rows
        ]

    def close(self) -> None:
        pass


class FakeConnection:
    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder

    def add_output_converter(self, sql_type: int, func: Any) -> None:
        self.recorder.converters[sql_type] = func

    def setdecoding(self, sql_type: int, encoding: str | None = None, ctype: int | None = None) -> None:
        self.recorder.decodings[sql_type] = (encoding, ctype)

    def cursor(self) -> FakeCursor:
        return FakeCursor(self.recorder)

    def getinfo(self, code: int) -> str:
        return {
            FakePyodbc.SQL_DBMS_NAME: "Microsoft SQL Server",
            FakePyodbc.SQL_DBMS_VER: "16.00.4135",
            FakePyodbc.SQL_DRIVER_NAME: "msodbcsql18.dll",
            FakePyodbc.SQL_DRIVER_VER: "18.04.0001",
        }[code]

    def commit(self) -> None:
        pass

    def rollback(self) -> None:
        pass

    def close(self) -> None:
        pass


class FakePyodbc:
    """Just enough of the pyodbc module for Database.open_odbc."""

    Error = FakeOdbcError
    SQL_DBMS_NAME, SQL_DBMS_VER, SQL_DRIVER_NAME, SQL_DRIVER_VER = 17, 18, 6, 7

    def __init__(self, recorder: Recorder, drivers: list[str] | None = None) -> None:
        self.recorder = recorder
        self._drivers = (
            drivers if drivers is not None else ["ODBC Driver 17 for SQL Server", "ODBC Driver 18 for SQL Server"]
        )

    def drivers(self) -> list[str]:
        return list(self._drivers)

    def connect(self, text: str, autocommit: bool = True) -> FakeConnection:
        assert autocommit is False
        self.recorder.connection_strings.append(text)
        return FakeConnection(self.recorder)


def reveal(value: Secret | str) -> str:
    """A connection string as the stand-in's ``connect`` takes it."""
    return value.reveal() if isinstance(value, Secret) else value


def stand_in_settings() -> Any:
    """test-db's settings for a SQL Server login by name (USER_SERVER), on :data:`TABLE`."""
    return load_settings(
        command="test-db",
        environ={"USER_SERVER": "sql01.council.local", "USER_DATABASE": "HDM_Local", "TABLE_NAME": TABLE},
    )


def connect(rec: Recorder, text: str = CONNECTION) -> Database:
    """A Database on the stand-in, whose catalogue holds the councils' staging table unless told otherwise."""
    rec.tables.setdefault("ssd_api_data_staging", SQL_SERVER_COLUMNS)
    return Database.open_odbc(text, odbc=FakePyodbc(rec))


def wide(text: str) -> Wide:
    return Wide(text.encode("utf-16-le"))


def every_bound_value(rec: Recorder) -> list[Any]:
    """Every parameter the stand-in was sent, by execute and executemany alike."""
    return [v for params in rec.params for v in params] + [v for rows in rec.many_params for r in rows for v in r]


def assert_tsql(sql: str) -> None:
    """Parses as T-SQL with errors raised, into real statements (not sqlglot's opaque Command).

    Skips the calling test where sqlglot (a test extra) is not installed."""
    sqlglot = pytest.importorskip("sqlglot")
    from sqlglot import exp
    from sqlglot.errors import ErrorLevel

    tree = sqlglot.parse_one(sql, read="tsql", error_level=ErrorLevel.RAISE)
    assert tree is not None
    assert not list(tree.find_all(exp.Command)), f"not understood as T-SQL: {sql}"
    # sqlglot reads some other dialects' syntax leniently; these are never T-SQL.
    assert " LIMIT " not in f" {sql.upper()} " and "::" not in sql, f"not T-SQL: {sql}"
