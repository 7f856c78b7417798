"""The SQL Server path's mechanics (issue 18), through the recording stand-in of test_tsql.py.

No SQL Server runs here. The stand-in answers as SQL Server and Microsoft's driver do where it
matters: text comes back as the driver's raw UTF-16LE and datetimeoffset as its
SQL_SS_TIMESTAMPOFFSET_STRUCT, through whatever output converters the connection registered
(as pyodbc does; without one, pyodbc decodes strictly and cannot read datetimeoffset at all).
Every statement sent is parsed as T-SQL. The same mechanisms run for real on PostgreSQL and
SQLite in test_postgres.py and test_faults.py.
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
from datetime import datetime
from typing import Any

import pytest

pytest.importorskip("sqlglot")
from sqlglot import exp, parse_one  # noqa: E402

from api_pipeline.cli import diagnostics
from api_pipeline.dfe.api import Outcome
from api_pipeline.dfe.schema import RecordValidator
from api_pipeline.errors import DatabaseError, RunLocked
from api_pipeline.job.pipeline import Pipeline, RunOptions
from api_pipeline.job.run_files import RunSummary
from api_pipeline.rehearsal.synthetic import make_children
from api_pipeline.settings.config import load_settings
from api_pipeline.store.columns import LEDGER_SPEC, STAGING_SPEC, ColumnInfo
from api_pipeline.store.db import Database
from api_pipeline.store.dialects import BABELFISH, MSSQL
from api_pipeline.store.lock import RunLock
from api_pipeline.store.odbc import UnreadableText, decode_wide_text
from api_pipeline.store.staging import StagingTable
from api_pipeline.store.tables import check_columns
from api_pipeline.store.write_back import RowUpdate
from conftest import ctx
from fake_sql_server import (  # noqa: E402
    CONNECTION,
    SQL_SERVER_COLUMNS,
    TABLE,
    FakeOdbcError,
    FakePyodbc,
    Narrow,
    Offset,
    Recorder,
    Wide,
    assert_tsql,
    connect,
    every_bound_value,
    wide,
)

LEDGER = f"{TABLE}_ledger"


# ---------------------------------------------------------------------------
# 18.2, 18.4: the session's settings
# ---------------------------------------------------------------------------


def test_each_connection_counts_rows_gives_way_in_deadlocks_and_bounds_lock_waits():
    rec = Recorder()
    connect(rec).close()
    # First the question whether the server is Babelfish (whose HASHBYTES differs), then the settings.
    assert rec.statements[:4] == [
        "SELECT @@VERSION",
        "SET NOCOUNT OFF",
        "SET DEADLOCK_PRIORITY LOW",
        "SET LOCK_TIMEOUT 30000",
    ]
    for sql in rec.statements[:4]:
        assert_tsql(sql)


def test_microsofts_driver_gets_the_output_converters_and_freetds_does_not(monkeypatch):
    rec = Recorder()
    connect(rec).close()
    assert set(rec.converters) == {-8, -9, -10, -155}
    assert rec.converters[-9] is decode_wide_text
    tds = Recorder()
    monkeypatch.setattr(
        "test_tsql.FakeConnection.getinfo", lambda self, code: "Microsoft SQL Server" if code == 17 else "libtdsodbc.so"
    )
    connect(tds, "DRIVER={FreeTDS};SERVER=s;DATABASE=d;UID=u;PWD=p;").close()
    assert tds.converters == {}


# ---------------------------------------------------------------------------
# 18.3: a lone surrogate in an NVARCHAR column
# ---------------------------------------------------------------------------


def damaged(record: dict) -> bytes:
    """The record's JSON as SQL Server would store it with half an emoji in the surname (LEFT() cut)."""
    record["child_details"]["surname"] = "O'Brien QQ"
    text = json.dumps(record, ensure_ascii=False)
    return text.encode("utf-16-le").replace("QQ".encode("utf-16-le"), b"\x3d\xd8" + "Q".encode("utf-16-le"))


class Receipts:
    """Stands in for the API client: DfE acknowledges every record."""

    def __init__(self) -> None:
        self.sent: list[str] = []

    def send(self, bodies: list[bytes], batch_id: str) -> list[Outcome]:
        self.sent += [json.loads(body)["la_child_id"] for body in bodies]
        return [
            Outcome(i, receipt=f"2026-03-01_21:04:33.12_{i:08d}-aaaa-bbbb-cccc-000000000000.json")
            for i in range(len(bodies))
        ]


def test_a_lone_surrogate_marks_the_row_invalid_and_its_text_is_never_bound_back():
    bad_child, good_child = make_children(2, seed=18)
    raw_bad = damaged(bad_child)
    good_text = json.dumps(good_child, ensure_ascii=False)
    stored = {1: raw_bad, 2: good_text.encode("utf-16-le")}
    people = {1: bad_child["la_child_id"], 2: good_child["la_child_id"]}
    rec = Recorder()

    def candidate(i: int, column: str) -> Any:
        return {
            "t.id": i,
            "t.person_id": wide(people[i]),
            "t.json_payload": Wide(stored[i]),
            "t.submission_status": wide("Pending"),
            "t.row_state": wide("New"),
        }.get(column)

    def answer(sql: str, params: tuple) -> list[tuple] | None:
        if "TOP (?)" in sql:  # the candidate page, as the driver returns it (NULL for the ledger's columns)
            columns = sql.split("TOP (?) ", 1)[1].split(" FROM ", 1)[0].split(", ")
            return [tuple(candidate(i, c) for c in columns) for i in (1, 2) if i > params[1]]
        if "WITH (UPDLOCK, ROWLOCK)" in sql:  # write-back: the hash of what is stored, no payload
            assert "HASHBYTES('SHA2_256', CAST(json_payload AS NVARCHAR(MAX)))" in sql
            return [(i, hashlib.sha256(stored[i]).digest(), wide("New")) for i in params]
        return None

    rec.more = answer
    with connect(rec) as db:
        table = StagingTable(db, TABLE)
        # Without the converter this page stops the run: pyodbc's strict decoding raises.
        with pytest.raises(UnicodeDecodeError):
            Wide(raw_bad).decode("utf-16-le")
        (bad, good) = list(table.iter_candidates())
        assert isinstance(bad.json_payload, UnreadableText) and "\ufffd" in bad.json_payload
        assert type(good.json_payload) is str
        sender = Receipts()
        summary = RunSummary(run_id="r18", mode="partial")
        Pipeline(table, sender, RecordValidator.from_settings(None), RunOptions(), summary).run()
    assert summary.outcomes["invalid"] == 1 and summary.outcomes["sent"] == 1
    assert "text not valid Unicode" in summary.invalid_reasons
    assert sender.sent == [good_child["la_child_id"]]  # the damaged record never went to DfE
    # The row is marked invalid, with a reason a DBA can act on...
    (marked,) = [row for rows in rec.many_params for row in rows if row[-1] == 1]
    assert marked[0] == "Invalid"
    text = json.dumps(bad_child, ensure_ascii=False)
    position = len(text[: text.index("QQ")].encode("utf-16-le")) // 2 + 1  # as SUBSTRING() counts
    assert f"json_payload (character {position}) holds text that is not valid Unicode" in marked[1]
    assert "lone UTF-16 surrogate" in marked[1]
    # ...and neither its text nor any altered copy of it was sent back to the server.
    texts = [v for v in every_bound_value(rec) if isinstance(v, str)]
    assert not [t for t in texts if "\ufffd" in t or bad_child["la_child_id"] in t]
    assert hashlib.sha256(raw_bad).digest() not in every_bound_value(rec)  # matched under the lock, by hash


def test_the_check_for_a_row_that_is_not_valid_as_stored_binds_only_the_hash_of_its_bytes():
    raw = damaged(next(make_children(1, seed=19)))
    text = decode_wide_text(raw)
    rec = Recorder()
    rec.more = lambda sql, params: [] if "WITH (UPDLOCK" in sql else None  # not found under the lock: checked
    with connect(rec) as db:
        StagingTable(db, TABLE).write_back([RowUpdate(7, "Invalid", "invalid: ...", text)], [])
    checked = [(sql, params) for sql, params in zip(rec.statements, rec.params) if sql.startswith("UPDATE")]
    ((sql, params),) = checked
    assert sql.endswith("AND HASHBYTES('SHA2_256', CAST(json_payload AS NVARCHAR(MAX))) = ?")
    assert params[-1] == hashlib.sha256(raw).digest()
    assert rec.input_sizes[-1][-1] == (-3, 32, 0)  # bound as VARBINARY(32)
    assert_tsql(sql)


# ---------------------------------------------------------------------------
# 18.8: write-back compares hashes, so no payload travels back
# ---------------------------------------------------------------------------


def test_write_back_compares_the_payloads_hash_and_sends_no_payload_back():
    payloads = {1: json.dumps({"la_child_id": "C1", "name": "Zoë 🙂" * 2000}, ensure_ascii=False), 2: "{}"}
    changed = {2: '{"changed": true}'}  # the council's SQL rewrote row 2 since it was read
    rec = Recorder()

    def current(i: int) -> bytes:
        return hashlib.sha256(changed.get(i, payloads[i]).encode("utf-16-le")).digest()

    def answer(sql: str, params: tuple) -> list[tuple] | None:
        if "WITH (UPDLOCK, ROWLOCK)" in sql:
            return [(i, current(i), wide("Updated")) for i in params]
        return None

    def rowcount(sql: str, params: tuple) -> int:
        if sql.startswith("UPDATE") and "HASHBYTES" in sql:  # the database's own comparison
            return int(params[-1] == current(params[-2]))
        return 1

    rec.more, rec.rowcount_of = answer, rowcount
    now = datetime(2026, 3, 1, 21, 4, 33)
    updates = [
        RowUpdate(
            i, "Sent", "receipt.json", payloads[i], now, mark_sent=True, previous_hash=b"\0" * 32, row_state="Unchanged"
        )
        for i in (1, 2)
    ]
    with connect(rec) as db:
        skipped = StagingTable(db, TABLE).write_back(updates, [])
    assert skipped == 1  # row 2 stays pending: its new data goes next run
    locked = [s for s in rec.statements if "WITH (UPDLOCK, ROWLOCK)" in s]
    assert locked and all(
        s.startswith("SELECT id, HASHBYTES('SHA2_256', CAST(json_payload AS NVARCHAR(MAX))), row_state") for s in locked
    )
    bound = every_bound_value(rec)
    assert not any(isinstance(v, str) and v in (payloads[1], payloads[2]) for v in bound)
    assert hashlib.sha256(payloads[2].encode("utf-16-le")).digest() in bound  # row 2's check, by hash
    for sql in rec.statements:
        assert_tsql(sql)


def test_babelfish_is_told_apart_and_the_optimistic_check_hashes_text_as_it_does():
    """Babelfish for PostgreSQL answers ODBC as SQL Server does, but its HASHBYTES hashes NVARCHAR text
    as UTF-8, not SQL Server's UTF-16LE. Judged by SQL Server's bytes, no row passed the optimistic
    check: every run left every row pending, to be sent again the next night (found running the SQL
    Server path on Babelfish, issue 24; tests/test_babelfish.py runs it for real)."""
    payloads = {1: json.dumps({"la_child_id": "C1", "name": "Zoë 🙂 漢字"}, ensure_ascii=False), 2: "{}"}
    changed = {2: '{"changed": true}'}
    rec = Recorder()

    def current(i: int) -> bytes:  # as Babelfish's HASHBYTES('SHA2_256', CAST(... AS NVARCHAR(MAX)))
        return hashlib.sha256(changed.get(i, payloads[i]).encode("utf-8")).digest()

    def answer(sql: str, params: tuple) -> list[tuple] | None:
        if sql == "SELECT @@VERSION":
            return [("Babelfish for PostgreSQL with SQL Server Compatibility - 12.0.2000.8\nPostgreSQL 16.3",)]
        if "WITH (UPDLOCK, ROWLOCK)" in sql:
            return [(i, current(i), wide("Updated")) for i in params]
        return None

    def rowcount(sql: str, params: tuple) -> int:
        if sql.startswith("UPDATE") and "HASHBYTES" in sql:
            return int(params[-1] == current(params[-2]))
        return 1

    rec.more, rec.rowcount_of = answer, rowcount
    now = datetime(2026, 3, 1, 21, 4, 33)
    updates = [
        RowUpdate(
            i, "Sent", "receipt.json", payloads[i], now, mark_sent=True, previous_hash=b"\0" * 32, row_state="Unchanged"
        )
        for i in (1, 2)
    ]
    with connect(rec) as db:
        assert db.dialect is BABELFISH and db.dialect.name == "mssql"
        skipped = StagingTable(db, TABLE).write_back(updates, [])
    assert skipped == 1  # row 1 is written back; row 2 changed since it was read and stays pending
    assert hashlib.sha256(payloads[2].encode("utf-8")).digest() in every_bound_value(rec)
    # Real SQL Server is unchanged: its banner gives the dialect that hashes UTF-16LE.
    plain = Recorder()
    plain.more = lambda sql, params: [("Microsoft SQL Server 2019 (RTM-CU22)",)] if sql == "SELECT @@VERSION" else None
    with connect(plain) as db:
        assert db.dialect is MSSQL
        assert db.dialect.expected_text("Zoë") == hashlib.sha256("Zoë".encode("utf-16-le")).digest()


@pytest.mark.parametrize(
    ("driver_file", "text", "answer", "shown"),
    [
        ("msodbcsql18.dll", CONNECTION, [(0x74000004,)], "protocol: TDS 7.4"),
        ("msodbcsql18.dll", CONNECTION, [], "protocol: TDS: chosen by the driver (the server did not say which"),
        (
            "libtdsodbc.so",
            "DRIVER={FreeTDS};SERVER=s;PORT=1433;DATABASE=d;UID=u;PWD=p;TDS_Version=7.4;",
            [],
            "protocol: TDS 7.4, as DB_CONNECTION_STRING asks (TDS_Version",
        ),
        ("libtdsodbc.so", "DRIVER={FreeTDS};SERVER=s;DATABASE=d;UID=u;PWD=p;", [], "protocol: TDS: not set in"),
        ("libtdsodbc.so", "DRIVER={FreeTDS};SERVER=s;DATABASE=d;UID=u;PWD=p;", [(0x08000000,)], "protocol: TDS 8.0"),
    ],
)
def test_test_db_names_the_tds_version(monkeypatch, driver_file, text, answer, shown):
    """Which TDS version a connection uses: the server's answer to a login that may ask it (VIEW SERVER
    STATE), else what the connection string asks FreeTDS for (issue 24, item 5)."""
    from fake_sql_server import FakeConnection

    names = {17: "Microsoft SQL Server", 18: "16.00.4135", 6: driver_file, 7: "01.03.0017"}
    monkeypatch.setattr(FakeConnection, "getinfo", lambda self, code: names[code])
    rec = Recorder()
    rec.more = lambda sql, params: answer if "sys.dm_exec_connections" in sql else None
    out = ctx()
    settings = load_settings(command="test-db", environ={"DB_CONNECTION_STRING": text})
    monkeypatch.setattr(Database, "open_existing", classmethod(lambda cls, cs: connect(rec, cs.reveal())))
    assert diagnostics.test_db(settings, out) == 0
    printed = out.out.getvalue()  # type: ignore[attr-defined]
    assert shown in printed
    assert ("(FreeTDS)" in printed) == (driver_file == "libtdsodbc.so")
    for sql in rec.statements:
        assert_tsql(sql)


# ---------------------------------------------------------------------------
# 18.5: datetimeoffset columns are read
# ---------------------------------------------------------------------------


def offset(value: datetime, hours: int) -> Offset:
    return Offset(
        struct.pack("<h5HI2h", value.year, value.month, value.day, value.hour, value.minute, value.second, 0, hours, 0)
    )


def test_a_datetimeoffset_column_is_read_as_naive_utc(monkeypatch):
    """pyodbc cannot fetch ODBC type -155 by itself; the converter reads it as naive UTC. Here it is
    the oldest pending last_updated that status reports. (A DBA-made run lock table with a
    datetimeoffset heartbeat_at is never read: SQL Server works the lock's ages out itself.)"""
    rec = Recorder()
    rec.tables["ssd_api_data_staging"] = [
        c if c[0] != "last_updated" else ("last_updated", "datetimeoffset", None, "YES", 0) for c in SQL_SERVER_COLUMNS
    ]

    def oldest(sql: str, params: tuple) -> list[tuple] | None:
        if "MIN(t.last_updated)" in sql:  # 02:30 local at +01:00 = 01:30 UTC
            return [(3, offset(datetime(2026, 3, 1, 2, 30), 1))]
        return None

    rec.more = oldest
    with connect(rec) as db:
        assert StagingTable(db, TABLE).pending() == (3, datetime(2026, 3, 1, 1, 30))
    # Without the converter (pyodbc as it is), the same read is an error that names the type.
    monkeypatch.setattr("test_tsql.FakeConnection.add_output_converter", lambda self, t, f: None)
    rec.converters.clear()
    with connect(rec) as db, pytest.raises(DatabaseError, match="datetimeoffset"):
        StagingTable(db, TABLE).pending()


def test_test_schema_accepts_datetimeoffset_now_that_it_is_read():
    columns = [
        ColumnInfo(name, "datetimeoffset" if kind == "datetime" else kind, None if size in (None, -1) else size)
        for name, kind, size, *_ in SQL_SERVER_COLUMNS
    ]
    assert any(c.data_type == "datetimeoffset" for c in columns)
    assert check_columns(MSSQL, TABLE, STAGING_SPEC, columns) == []


# ---------------------------------------------------------------------------
# 18.6: test-schema warns of init-db's old filtered index
# ---------------------------------------------------------------------------


def test_test_schema_warns_of_a_filtered_index_and_prints_its_replacement(monkeypatch):
    rec = Recorder()
    rec.filtered_indexes = ["ux_ssd_api_data_staging_person_id"]
    fake = FakePyodbc(rec)
    monkeypatch.setattr(Database, "connect", classmethod(lambda cls, cs: cls.open_odbc(cs.reveal(), odbc=fake)))
    rec.tables["ssd_api_data_staging"] = SQL_SERVER_COLUMNS
    settings = load_settings(command="test-schema", environ={"DB_CONNECTION_STRING": CONNECTION, "TABLE_NAME": TABLE})
    context = ctx()
    assert diagnostics.test_schema(settings, context) == 0  # a warning: the tool itself works
    out = context.out.getvalue()  # type: ignore[attr-defined]
    assert "warning: index ux_ssd_api_data_staging_person_id is filtered" in out
    assert "QUOTED_IDENTIFIER and ANSI_NULLS" in out and "error 1934" in out
    (fix,) = re.findall(r"fix: (DROP INDEX .*);$", out, re.M)
    drop, create = fix.split("; ")
    assert drop == f"DROP INDEX ux_ssd_api_data_staging_person_id ON {TABLE}"
    assert create == f"CREATE INDEX ix_ssd_api_data_staging_person_id ON {TABLE} (person_id)"
    for statement in (drop, create):
        assert_tsql(statement)


def test_init_db_on_sql_server_makes_a_plain_person_id_index_and_says_why(monkeypatch):
    rec = Recorder()
    fake = FakePyodbc(rec)
    monkeypatch.setattr(Database, "connect", classmethod(lambda cls, cs: cls.open_odbc(cs.reveal(), odbc=fake)))
    settings = load_settings(command="init-db", environ={"DB_CONNECTION_STRING": CONNECTION, "TABLE_NAME": TABLE})
    context = ctx()
    assert diagnostics.init_db(settings, context, False) == 0
    out = context.out.getvalue()  # type: ignore[attr-defined]
    assert f"index on person_id on {TABLE}: created" in out
    assert "not unique on SQL Server" in out and "QUOTED_IDENTIFIER and ANSI_NULLS" in out and "1934" in out
    (index,) = [s for s in rec.statements if "person_id)" in s and "INDEX" in s]
    assert "UNIQUE" not in index and "WHERE person_id" not in index
    assert_tsql(index)


# ---------------------------------------------------------------------------
# 18.7: test-schema's fixes keep each column's nullability and leave the key alone
# ---------------------------------------------------------------------------


def altered(statement: str) -> tuple[str, str, bool]:
    """(column, type, NOT NULL?) of an ALTER TABLE ... ALTER COLUMN, as T-SQL parses it."""
    tree = parse_one(statement, read="tsql")
    (action,) = tree.args["actions"]
    assert isinstance(action, exp.AlterColumn)
    not_null = statement.rstrip().upper().endswith(" NOT NULL")
    assert not_null or statement.rstrip().upper().endswith(" NULL")
    return action.this.name, action.args["dtype"].sql("tsql"), not_null


def test_test_schema_fixes_keep_nullability_and_never_alter_the_key(monkeypatch):
    rec = Recorder()
    rec.tables["ssd_api_data_staging"] = [
        ("id", "nvarchar", 10, "NO", 1),  # the key, of the wrong type
        ("person_id", "nvarchar", 10, "NO", 0),  # NOT NULL here, though the design allows NULL
        ("json_payload", "nvarchar", 4000, "YES", 0),  # NULL here, though the design says NOT NULL
        *[c for c in SQL_SERVER_COLUMNS if c[0] not in ("id", "person_id", "json_payload")],
    ]
    rec.tables["ssd_api_data_staging_ledger"] = [
        ("la_child_id", "nvarchar", 10, "NO", 1),  # the ledger's key, too short
        *[
            (c.name, "nvarchar" if c.kind != "int" else "int", 200 if c.kind != "long_text" else -1, "YES", 0)
            for c in LEDGER_SPEC[1:]
        ],
    ]
    fake = FakePyodbc(rec)
    monkeypatch.setattr(Database, "connect", classmethod(lambda cls, cs: cls.open_odbc(cs.reveal(), odbc=fake)))
    settings = load_settings(command="test-schema", environ={"DB_CONNECTION_STRING": CONNECTION, "TABLE_NAME": TABLE})
    context = ctx()
    assert diagnostics.test_schema(settings, context) == 3
    out = context.out.getvalue()  # type: ignore[attr-defined]
    fixes = re.findall(r"fix: (ALTER TABLE .*);$", out, re.M)
    for fix in fixes:
        assert_tsql(fix)
    by_column = {altered(f)[0]: altered(f) for f in fixes}
    assert by_column["person_id"] == ("person_id", "NVARCHAR(20)", True)  # stays NOT NULL
    assert by_column["json_payload"] == ("json_payload", "NVARCHAR(MAX)", False)  # stays NULL
    assert "id" not in by_column and "la_child_id" not in by_column  # keys are never altered
    assert "- id is NVARCHAR(10)" in out and "it is the table's key, which ALTER COLUMN cannot change" in out
    assert "- la_child_id is NVARCHAR(10)" in out


# ---------------------------------------------------------------------------
# Issue 15.7: one lock per table, however TABLE_NAME spells it
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("spelling", ["ssd_api_data_staging", "SSD_API_DATA_STAGING", TABLE])
def test_the_lock_is_keyed_on_the_table_sql_server_resolves(spelling):
    rec = Recorder()
    with connect(rec) as db, RunLock(db, spelling, run_id="r1"):
        pass
    (insert,) = [p for s, p in zip(rec.statements, rec.params) if s.startswith("INSERT INTO")]
    assert insert[0] == "ssd_development.ssd_api_data_staging"
    assert any(s.startswith(f"INSERT INTO {TABLE}_run_lock") for s in rec.statements)


def test_only_a_duplicate_key_means_another_run_took_the_lock():
    rec = Recorder()

    def refuse(sql: str, params: tuple) -> list[tuple] | None:
        if sql.startswith("INSERT INTO"):
            raise FakeOdbcError(
                "42000",
                "[42000] [Microsoft][ODBC Driver 18 for SQL Server][SQL Server]The INSERT "
                "permission was denied on the object 'ssd_api_data_staging_run_lock'. (229)",
            )
        return None

    rec.more = refuse
    with connect(rec) as db, pytest.raises(DatabaseError) as caught:
        RunLock(db, TABLE, run_id="r1").acquire()
    assert not isinstance(caught.value, RunLocked) and "lacks a permission" in str(caught.value)

    def duplicate(sql: str, params: tuple) -> list[tuple] | None:
        if sql.startswith("INSERT INTO"):
            raise FakeOdbcError(
                "23000",
                "[23000] [Microsoft][ODBC Driver 18 for SQL Server][SQL Server]Violation of "
                "PRIMARY KEY constraint 'PK_lock'. Cannot insert duplicate key in object "
                "'dbo.x_run_lock'. The duplicate key value is (dbo.x). (2627)",
            )
        return None

    rec.more = duplicate
    with connect(rec) as db, pytest.raises(RunLocked, match="at the same moment"):
        RunLock(db, TABLE, run_id="r1").acquire()


def test_a_stolen_lock_stops_the_run_at_its_next_heartbeat():
    rec = Recorder()
    stolen = {"yes": False}

    def answer(sql: str, params: tuple) -> list[tuple] | None:
        if sql.startswith("SELECT holder FROM") and stolen["yes"]:
            return [("otherhost pid 9 run r9",)]
        return None

    rec.more = answer
    rec.rowcount_of = lambda sql, params: 0 if stolen["yes"] and sql.startswith("UPDATE") else 1
    with connect(rec) as db:
        lock = RunLock(db, TABLE, run_id="r1")
        lock.acquire()
        lock.heartbeat(force=True)
        stolen["yes"] = True
        with pytest.raises(RunLocked, match=r"another run \(otherhost pid 9 run r9\) took over"):
            lock.heartbeat(force=True)
        lock.release()  # nothing to release: it is not ours
    assert not any(s.startswith("DELETE") for s in rec.statements)


# ---------------------------------------------------------------------------
# Issue 23.2: text pyodbc cannot decode stops nothing and shows nothing
# ---------------------------------------------------------------------------


def candidate_answers(values: dict[int, dict[str, Any]]) -> Any:
    """Answers to the candidate page, its ids and each row read alone (``values``: row id → column → value,
    as the driver returns them; the ledger's columns are NULL)."""

    def answer(sql: str, params: tuple) -> list[tuple] | None:
        if "TOP (?)" in sql:
            columns = sql.split("TOP (?) ", 1)[1].split(" FROM ", 1)[0].split(", ")
            return [tuple(row.get(c, i if c == "t.id" else None) for c in columns) for i, row in values.items()]
        if sql.startswith("SELECT ") and sql.endswith("WHERE t.id = ?"):
            columns = sql[len("SELECT ") :].split(" FROM ", 1)[0].split(", ")
            return [tuple(values[params[0]].get(c, params[0] if c == "t.id" else None) for c in columns)]
        return None

    return answer


def test_text_pyodbc_cannot_decode_holds_back_its_row_and_the_rest_are_sent(monkeypatch):
    """Through FreeTDS (no output converters), pyodbc decodes text strictly: one lone surrogate raises
    UnicodeDecodeError from the fetch, which is no database error and names no row. The page is read
    again one row at a time, and that row's columns one at a time: the row is reported and left as it is."""
    monkeypatch.setattr(
        "test_tsql.FakeConnection.getinfo", lambda self, code: "Microsoft SQL Server" if code == 17 else "libtdsodbc.so"
    )
    bad_child, good_child = make_children(2, seed=23)
    people = {1: bad_child["la_child_id"], 2: good_child["la_child_id"]}
    stored = {1: damaged(bad_child), 2: json.dumps(good_child, ensure_ascii=False).encode("utf-16-le")}
    rec = Recorder()
    answers = candidate_answers(
        {
            i: {
                "t.person_id": wide(people[i]),
                "t.json_payload": Wide(stored[i]),
                "t.submission_status": wide("Pending"),
                "t.row_state": wide("New"),
            }
            for i in (1, 2)
        }
    )

    def answer(sql: str, params: tuple) -> list[tuple] | None:
        if "WITH (UPDLOCK, ROWLOCK)" in sql:
            return [(i, hashlib.sha256(stored[i]).digest(), wide("New")) for i in params]
        return answers(sql, params)

    rec.more = answer
    with connect(rec, "DRIVER={FreeTDS};SERVER=s;DATABASE=d;UID=u;PWD=p;") as db:
        assert rec.converters == {}
        table = StagingTable(db, TABLE)
        with pytest.raises(DatabaseError) as caught:  # what the page read itself now says
            db.fetch_all(f"SELECT t.json_payload FROM {TABLE} t WHERE t.id = ?", (1,))
        assert caught.value.kind == "undecodable" and "utf-16" in str(caught.value)
        sender = Receipts()
        summary = RunSummary(run_id="r23", mode="partial")
        Pipeline(table, sender, RecordValidator.from_settings(None), RunOptions(), summary).run()
    assert sender.sent == [good_child["la_child_id"]]
    assert summary.outcomes["sent"] == 1 and summary.outcomes["skipped"] == 1
    assert summary.invalid_reasons == {"json_payload cannot be read as text": 1}
    # Nothing was written to the row that could not be read (no note: its check could not match it).
    bound = every_bound_value(rec)
    assert "Sent" in bound and not [v for v in bound if isinstance(v, str) and v.startswith("not sent")]
    for sql in rec.statements:
        assert_tsql(sql)


def test_varchar_text_is_read_as_unicode_through_microsofts_driver():
    """A VARCHAR json_payload (test-schema warns of it, and the tool works with it) holding é in the server's
    code page: read as SQL_C_CHAR, pyodbc would take the driver's code-page bytes for UTF-8 and every such
    row would be unreadable. The driver is asked for UTF-16, which it converts to from the column's code page."""
    record = next(make_children(1, seed=24))
    record["child_details"]["first_name"] = "Zoë"
    text = json.dumps(record, ensure_ascii=False)
    rec = Recorder()
    rec.more = candidate_answers(
        {1: {"t.person_id": wide(record["la_child_id"]), "t.json_payload": Narrow(text.encode("cp1252"))}}
    )
    with connect(rec) as db:
        assert rec.decodings == {1: ("utf-16le", -8)}  # SQL_CHAR, read as SQL_C_WCHAR
        (row,) = StagingTable(db, TABLE).iter_candidates()
    assert type(row.json_payload) is str and row.json_payload == text
    with pytest.raises(UnicodeDecodeError):  # as pyodbc reads it by default
        Narrow(text.encode("cp1252")).decode("utf-8")
