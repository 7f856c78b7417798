"""Every statement the SQL Server dialect emits is valid T-SQL (sqlglot, T-SQL dialect).

No SQL Server can run here, so the statements are gathered through the real code
paths — Database.open_odbc, StagingTable, RunLock, init-db, test-db, test-schema —
over a stand-in pyodbc whose connection only records SQL and answers catalogue
questions. A deliberately broken statement proves the check can fail.
"""

from __future__ import annotations

import io
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

sqlglot = pytest.importorskip("sqlglot")
from sqlglot import exp  # noqa: E402
from sqlglot.errors import ErrorLevel, ParseError  # noqa: E402

from api_pipeline.cli import diagnostics  # noqa: E402
from api_pipeline.cli.main import Context  # noqa: E402
from api_pipeline.settings.config import Secret, load_settings  # noqa: E402
from api_pipeline.store.columns import BINARY, LONG_TEXT, STAGING_SPEC, ColumnInfo  # noqa: E402
from api_pipeline.store.db import Database  # noqa: E402
from api_pipeline.store.dialects import MSSQL  # noqa: E402
from api_pipeline.store.ledger import Doubt, InDoubt, LedgerEntry  # noqa: E402
from api_pipeline.store.staging import StagingTable  # noqa: E402
from api_pipeline.store.tables import check_columns, staging_index_ddl  # noqa: E402
from api_pipeline.store.write_back import RowUpdate  # noqa: E402

TABLE = "ssd_development.ssd_api_data_staging"


# ---------------------------------------------------------------------------
# A stand-in for pyodbc talking to SQL Server: records SQL, answers the catalogue.
# ---------------------------------------------------------------------------


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


@pytest.fixture
def recorder(monkeypatch: pytest.MonkeyPatch) -> Recorder:
    """Every Database.connect in this test goes to the recording SQL Server stand-in."""
    rec = Recorder()
    fake = FakePyodbc(rec)
    monkeypatch.setattr(Database, "connect", classmethod(lambda cls, cs: cls.open_odbc(_reveal(cs), odbc=fake)))
    return rec


def _reveal(value: Secret | str) -> str:
    return value.reveal() if isinstance(value, Secret) else value


def _ctx() -> Context:
    return Context(environ={}, cwd=Path.cwd(), out=io.StringIO(), err=io.StringIO(), executable_dir=Path.cwd())


def _settings() -> Any:
    return load_settings(
        command="test-db",
        environ={"USER_SERVER": "sql01.council.local", "USER_DATABASE": "HDM_Local", "TABLE_NAME": TABLE},
    )


# ---------------------------------------------------------------------------
# The check
# ---------------------------------------------------------------------------


def assert_tsql(sql: str) -> None:
    """Parses as T-SQL with errors raised, into real statements (not sqlglot's opaque Command)."""
    tree = sqlglot.parse_one(sql, read="tsql", error_level=ErrorLevel.RAISE)
    assert tree is not None
    assert not list(tree.find_all(exp.Command)), f"not understood as T-SQL: {sql}"
    # sqlglot reads some other dialects' syntax leniently; these are never T-SQL.
    assert " LIMIT " not in f" {sql.upper()} " and "::" not in sql, f"not T-SQL: {sql}"


def test_the_check_fails_a_broken_statement():
    broken = "UPDATE ssd_api_data_staging SET submission_status = WHERE id = ?"
    with pytest.raises(ParseError):
        assert_tsql(broken)
    with pytest.raises(AssertionError):
        assert_tsql("SELECT id FROM ssd_api_data_staging ORDER BY id LIMIT ?")


def gather_sql_server_statements(rec: Recorder) -> list[str]:
    """Drive every code path that talks to SQL Server; return the SQL it sent, in order."""
    settings = _settings()
    # init-db on an empty database: staging table, unique index, ledger, run lock.
    assert diagnostics.init_db(settings, _ctx(), False) == 0
    # From here on the staging table exists, as SQL Server would describe it.
    rec.tables["ssd_api_data_staging"] = SQL_SERVER_COLUMNS
    assert diagnostics.test_db(settings, _ctx()) == 0
    assert diagnostics.test_schema(settings, _ctx()) == 0
    with Database.connect(settings.db_connection_string) as db:  # type: ignore[arg-type]
        table = StagingTable(db, TABLE)
        table.create_staging_table()
        db.execute(staging_index_ddl(db.dialect, TABLE))  # as init-db makes it
        list(table.iter_candidates(limit=5))  # the read-only shape: no ledger yet
        table.ensure_ledger()  # missing in the catalogue: created
        rec.tables["ssd_api_data_staging_ledger"] = [("la_child_id", "nvarchar", 36)]
        rec.tables["ssd_api_data_staging_in_flight"] = [("batch_id", "nvarchar", 64)]
        rec.tables["ssd_api_data_staging_in_doubt"] = [("la_child_id", "nvarchar", 36)]
        table = StagingTable(db, TABLE)
        list(table.iter_candidates())  # the normal shape, joined to the ledger
        list(table.iter_candidates(all_rows=True))
        list(table.iter_candidates(held_back=True))  # validate's: the rows held back as invalid too
        table.count_candidates(held_back=True)
        table.duplicate_person_ids()
        table.person_ids()
        list(table.rows_without_person_id())
        list(table.rows_by_id([1, 2]))
        table.payload_of(1)
        table.ledger_entry("C1001")
        table.doubt_outline("C1001")
        table.left_in_flight()
        table.in_doubt_totals()
        now = datetime(2026, 3, 1, 21, 4, 33)
        # Before a batch is sent: its children in flight (with a note for a row left unsent).
        table.write_back(
            [RowUpdate(5, "Invalid", "invalid: reason", "{}")],
            [],
            doubt=Doubt(in_flight=[InDoubt("C1001", 1, '{"child_details":true}', "r1-00001", now)]),
        )
        table.write_back(
            [
                RowUpdate(
                    1,
                    "Sent",
                    "receipt.json",
                    "{}",
                    now,
                    mark_sent=True,
                    previous_hash=b"\0" * 32,
                    row_state="Unchanged",
                ),
                RowUpdate(2, "Sent", "receipt.json", None, now, purge=True),
                RowUpdate(3, "Invalid", "invalid: reason", "{}"),
                RowUpdate(4, "", "not sent, will retry next run", "{}"),
            ],
            [
                LedgerEntry("C1001", "M1", 1, "{}", b"\0" * 32, "receipt.json", now, False),
                LedgerEntry("C1002", None, 2, None, None, "receipt.json", now, True),
            ],
            doubt=Doubt(
                landed=["r1-00001"],
                in_doubt=[InDoubt("C1003", 3, "{}", "r1-00001", now)],
                resolved=["C1004"],
            ),
        )
        from api_pipeline.errors import RunLocked
        from api_pipeline.store.lock import RunLock

        with RunLock(db, TABLE, run_id="r1") as lock:  # a fresh lock: INSERT
            lock.heartbeat(force=True)
        # The lock row as SQL Server answers: its holder, and its age in seconds by the server's clock.
        rec.lock_row = ("otherhost pid 1 run r0", int(timedelta(days=1).total_seconds()))
        with RunLock(db, TABLE, run_id="r2"):  # a stale lock: taken over
            pass
        rec.lock_row = ("otherhost pid 1 run r0", -int(timedelta(days=2).total_seconds()))
        with pytest.raises(RunLocked, match="ahead of the database's clock"):  # a heartbeat ahead: from now
            RunLock(db, TABLE, run_id="r3").acquire()
    # The fixes test-schema prints for a table that is wrong in every way it can be.
    bad = [
        ColumnInfo("id", "nvarchar", 10),
        ColumnInfo("person_id", "nvarchar", 10),
        ColumnInfo("json_payload", "nvarchar", 4000),
        ColumnInfo("previous_json_payload", "ntext", None),
        ColumnInfo("partial_json_payload", "varchar", None),
        ColumnInfo("submission_timestamp", "nvarchar", 30),
        ColumnInfo("api_response", "nvarchar", 100),
        ColumnInfo("row_state", "nvarchar", 5),
    ]
    issues = check_columns(MSSQL, TABLE, STAGING_SPEC, bad)
    assert [i.column for i in issues if not i.fix] == ["id"]  # the key is never altered
    fixes = [i.fix for i in issues if i.fix]
    assert len(fixes) >= 8
    return rec.statements + fixes


def test_every_sql_server_statement_is_valid_tsql(recorder):
    statements = gather_sql_server_statements(recorder)
    kinds = {s.split(" ", 1)[0] for s in statements}
    assert {"IF", "SELECT", "UPDATE", "INSERT", "DELETE", "ALTER", "SET"} <= kinds
    assert any("TOP (?)" in s for s in statements)
    assert any("LEFT JOIN (SELECT NULL AS la_child_id" in s for s in statements)  # no ledger yet
    assert any("CREATE INDEX ix_ssd_api_data_staging_ledger_staging_id" in s for s in statements)
    assert any("CREATE INDEX ix_ssd_api_data_staging_in_doubt_row" in s for s in statements)
    assert any(s.startswith(f"INSERT INTO {TABLE}_in_flight") for s in statements)
    assert any(s.startswith(f"DELETE FROM {TABLE}_in_flight WHERE batch_id = ?") for s in statements)
    assert any(s.startswith(f"INSERT INTO {TABLE}_in_doubt") for s in statements)
    assert any(s.startswith(f"DELETE FROM {TABLE}_in_doubt WHERE la_child_id IN") for s in statements)
    assert any(f"LEFT JOIN {TABLE}_in_doubt f" in s for s in statements)
    assert any("LTRIM(RTRIM(t.person_id))" in s and "NOT EXISTS" in s for s in statements)
    assert any("HASHBYTES('SHA2_256', CAST(json_payload AS NVARCHAR(MAX))) = ?" in s for s in statements)
    assert any("CREATE INDEX ix_ssd_api_data_staging_person_id" in s for s in statements)
    # The run lock's times and ages are SQL Server's own (DESIGN §7): no time is sent as a parameter.
    lock_statements = [s for s in statements if "_run_lock " in s and not s.startswith("IF ")]
    assert {s.split(" ", 1)[0] for s in lock_statements} == {"SELECT", "INSERT", "UPDATE", "DELETE"}
    assert any("DATEDIFF(SECOND, heartbeat_at, SYSUTCDATETIME())" in s for s in lock_statements)
    assert any("VALUES (?, ?, SYSUTCDATETIME(), SYSUTCDATETIME())" in s for s in lock_statements)
    assert any("SET heartbeat_at = SYSUTCDATETIME() WHERE" in s for s in lock_statements)
    assert any("acquired_at = SYSUTCDATETIME(), heartbeat_at = SYSUTCDATETIME()" in s for s in lock_statements)
    for sql, params in zip(recorder.statements, recorder.params):
        if "_run_lock " in sql:
            assert not any(isinstance(value, datetime) for value in params), sql
    assert not any(
        "UNIQUE INDEX" in s or ("CREATE INDEX" in s and " WHERE " in s.split("CREATE INDEX")[1]) for s in statements
    )
    for sql in statements:
        assert_tsql(sql)


def test_sql_server_binds_long_json_as_nvarchar_max_and_uses_fast_executemany(recorder):
    """The pieces of pyodbc's SQL Server advice the code must follow, seen from the driver's side."""
    gather_sql_server_statements(recorder)
    # The driver was chosen: no DRIVER= in the USER_SERVER form, 18 preferred over 17.
    assert recorder.connection_strings[0].startswith("DRIVER={ODBC Driver 18 for SQL Server};SERVER=sql01")
    # NVARCHAR(MAX) parameters as SQL_WVARCHAR size 0; hashes as VARBINARY.
    assert any((-9, 0, 0) in (sizes or []) for sizes in recorder.input_sizes)
    assert any((-3, 32, 0) in (sizes or []) for sizes in recorder.input_sizes)
    # Microsoft's driver: bulk writes use fast_executemany.
    assert recorder.fast_executemany and all(recorder.fast_executemany)


def test_candidate_query_puts_the_top_parameter_first(recorder):
    with Database.connect("DRIVER={ODBC Driver 18 for SQL Server};SERVER=s;DATABASE=d;UID=u;PWD=p;") as db:
        seen: list[tuple] = []
        real_answer = recorder.answer

        def answer(sql: str, params: tuple) -> list[tuple]:
            if "TOP (?)" in sql:
                seen.append(params)
            return real_answer(sql, params)

        recorder.answer = answer  # type: ignore[method-assign]
        list(StagingTable(db, TABLE).iter_candidates(page_size=50))
    assert seen == [(50, 0)]  # TOP (?) first, then t.id > ?


def test_freetds_gets_no_fast_executemany(monkeypatch):
    rec = Recorder()
    fake = FakePyodbc(rec, drivers=["FreeTDS"])
    monkeypatch.setattr(
        FakeConnection, "getinfo", lambda self, code: "Microsoft SQL Server" if code == 17 else "libtdsodbc.so"
    )
    with Database.open_odbc("SERVER=s;DATABASE=d;Trusted_Connection=yes;", odbc=fake) as db:
        assert rec.connection_strings[0].startswith("DRIVER={FreeTDS};")
        assert db.fast_executemany is False
        db.executemany("DELETE FROM t WHERE la_child_id = ?", [("a",), ("b",)])
    assert rec.fast_executemany == [False]


def test_freetds_binds_long_json_so_that_it_accepts_it(monkeypatch):
    """FreeTDS refuses a string over 4,000 characters bound as SQL_WVARCHAR ("Invalid string or buffer
    length", HY090: every write-back of a batch failed, found on a real T-SQL server through FreeTDS,
    issue 24); bound as SQL_WLONGVARCHAR it sends NVARCHAR(MAX) from TDS 7.2 on. Microsoft's drivers
    keep SQL_WVARCHAR size 0, which they send as NVARCHAR(MAX)."""
    rec = Recorder()
    monkeypatch.setattr(
        FakeConnection, "getinfo", lambda self, code: "Microsoft SQL Server" if code == 17 else "libtdsodbc.so"
    )
    with Database.open_odbc("DRIVER={FreeTDS};SERVER=s;PORT=1433;DATABASE=d;UID=u;PWD=p;", odbc=FakePyodbc(rec)) as db:
        db.execute(
            "UPDATE t SET api_response = ?, previous_hash = ? WHERE id = ?",
            ("x" * 5000, None, 1),
            kinds=(LONG_TEXT, BINARY, None),
        )
    assert rec.input_sizes[-1] == [(-10, 0, 0), (-3, 32, 0), None]
