"""Every statement the SQL Server dialect emits is valid T-SQL (sqlglot, T-SQL dialect).

No SQL Server can run here, so the statements are gathered through the real code
paths — Database.open_odbc, StagingTable, RunLock, init-db, test-db, test-schema —
over a stand-in pyodbc whose connection only records SQL and answers catalogue
questions. A deliberately broken statement proves the check can fail.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

pytest.importorskip("sqlglot")
from sqlglot.errors import ParseError  # noqa: E402

from api_pipeline.cli import diagnostics
from api_pipeline.store.columns import BINARY, LONG_TEXT, STAGING_SPEC, ColumnInfo
from api_pipeline.store.db import Database
from api_pipeline.store.dialects import MSSQL
from api_pipeline.store.ledger import Doubt, InDoubt, LedgerEntry
from api_pipeline.store.orphans import orphan_candidates, payloads_by_id
from api_pipeline.store.sql_server import BINARY_COLLATION
from api_pipeline.store.staging import StagingTable
from api_pipeline.store.tables import check_columns, staging_index_ddl
from api_pipeline.store.write_back import RowUpdate
from conftest import ctx  # noqa: E402
from fake_sql_server import (  # noqa: E402
    SQL_SERVER_COLUMNS,
    TABLE,
    FakeConnection,
    FakePyodbc,
    Recorder,
    assert_tsql,
    stand_in_settings,
)


def test_the_check_fails_a_broken_statement():
    broken = "UPDATE ssd_api_data_staging SET submission_status = WHERE id = ?"
    with pytest.raises(ParseError):
        assert_tsql(broken)
    with pytest.raises(AssertionError):
        assert_tsql("SELECT id FROM ssd_api_data_staging ORDER BY id LIMIT ?")


def gather_sql_server_statements(rec: Recorder) -> list[str]:
    """Drive every code path that talks to SQL Server; return the SQL it sent, in order."""
    settings = stand_in_settings()
    # init-db on an empty database: staging table, unique index, ledger, run lock.
    assert diagnostics.init_db(settings, ctx(), False) == 0
    # From here on the staging table exists, as SQL Server would describe it.
    rec.tables["ssd_api_data_staging"] = SQL_SERVER_COLUMNS
    assert diagnostics.test_db(settings, ctx()) == 0
    assert diagnostics.test_schema(settings, ctx()) == 0
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
        orphan_candidates(table)  # children the table lost (issue 28)
        payloads_by_id(table, [1, 2])
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
    # Orphans: ids compared exactly, as the ledger's joins compare them (binary collation).
    exactly = f"LTRIM(RTRIM(t.person_id)) COLLATE {BINARY_COLLATION}"
    assert any(f"NOT EXISTS (SELECT 1 FROM {TABLE} t WHERE {exactly} = l.la_child_id)" in s for s in statements)
    assert any(
        s.startswith(f"SELECT f.la_child_id, NULL, f.staging_id, f.outline_json FROM {TABLE}_in_doubt")
        for s in statements
    )
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
