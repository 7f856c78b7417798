"""The SQL Server path run for real: T-SQL over TDS, through pyodbc and FreeTDS (issue 24).

The server is Babelfish for PostgreSQL, which .ci/babelfish.sh builds from ../shared/babelfish
and starts on loopback (CSC_TEST_SQLSERVER_ODBC; skipped, with the reason, without one). It runs
T-SQL and answers ODBC as SQL Server does, but it is not SQL Server. Where it differs in what the
tool relies on, the test here says so and the statement stays covered by the recording driver and
the T-SQL parser (test_sql_server.py, test_tsql.py, test_identity.py):

- table hints (UPDLOCK, ROWLOCK, READPAST) are accepted and ignored: the lock ``_locked_rows``
  takes is not shown here; the optimistic check in the UPDATE itself still is;
- a lock time-out is error 33557097 (its number for many errors, so the tool knows it by its
  words), not 1222; and any error ends the transaction, where SQL Server ends only the statement;
- text is stored as UTF-8: a lone surrogate cannot be stored at all, and HASHBYTES hashes UTF-8
  bytes (the tool tells Babelfish apart by @@VERSION: sql_server.Babelfish);
- ``SERVERPROPERTY`` fails through FreeTDS, ``CONVERT(..., 126)`` differs, ``sys.indexes`` names
  carry a suffix.

The end-to-end tests (test_end_to_end.py, test_run_lock.py, test_identity.py, test_status.py)
run here too through the ``staging`` fixture; these are the SQL Server specifics.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from api_pipeline.errors import DatabaseError, RunLocked
from api_pipeline.job.runner import execute_run
from api_pipeline.rehearsal.demo import apply_nightly_changes
from api_pipeline.rehearsal.synthetic import make_children
from api_pipeline.store.catalogue import columns
from api_pipeline.store.columns import LOCK_NAME_SIZE
from api_pipeline.store.db import Database
from api_pipeline.store.dialects import BABELFISH
from api_pipeline.store.ledger import LedgerEntry
from api_pipeline.store.lock import RunLock
from api_pipeline.store.odbc import LOCK_TIMEOUT, odbc_value, parse_odbc_string
from api_pipeline.store.sql_server import tds_version
from api_pipeline.store.staging import StagingTable
from conftest import Staging, acknowledged, converged, run_cli, sent_records, settings_for, unique_table
from earlier_tool import hand_over

ADMIN_ENV = "CSC_BABELFISH_ADMIN_ODBC"  # .ci/babelfish.sh: the server's administrator, in master

# The staging table as the earlier tools' builder made it on SQL Server: NVARCHAR(20) person_id,
# NVARCHAR(MAX) payloads, BINARY(32) hashes, DATETIME defaults, the database's default collation
# (case-insensitive, as in most councils' databases), previous_json_payload before json_payload.
EARLIER_BUILDER_DDL = """CREATE TABLE {table} (
    id INT IDENTITY(1,1) PRIMARY KEY,
    person_id NVARCHAR(20) NULL,
    legacy_id NVARCHAR(36) NULL,
    previous_json_payload NVARCHAR(MAX) NULL,
    json_payload NVARCHAR(MAX) NOT NULL,
    partial_json_payload NVARCHAR(MAX) NULL,
    current_hash BINARY(32) NULL,
    previous_hash BINARY(32) NULL,
    submission_status NVARCHAR(50) DEFAULT 'Pending',
    submission_timestamp DATETIME DEFAULT GETDATE(),
    api_response NVARCHAR(MAX) NULL,
    row_state NVARCHAR(10) DEFAULT 'New',
    last_updated DATETIME DEFAULT GETDATE()
)"""


def with_value(connection_string: str, key: str, value: str | None) -> str:
    """The string with ``key`` set to ``value`` (removed when None)."""
    pairs = [(k, v) for k, v in parse_odbc_string(connection_string) if k.lower() != key.lower()]
    if value is not None:
        pairs.append((key, value))
    return "".join(f"{k}={{{v}}};" if k.lower() == "driver" else f"{k}={v};" for k, v in pairs)


@pytest.fixture
def earlier_table(sqlserver_odbc: str) -> Iterator[Staging]:
    """A staging table made by the earlier builder's DDL, dropped afterwards."""
    staging = Staging("mssql", sqlserver_odbc, unique_table("old"))
    with staging.open() as db, db.transaction():
        db.execute(EARLIER_BUILDER_DDL.format(table=staging.table))
    try:
        yield staging
    finally:
        staging.drop()


@pytest.fixture
def admin_odbc(sqlserver_odbc: str) -> str:
    """The server administrator's string (to make logins); .ci/babelfish.sh sets it."""
    text = os.environ.get(ADMIN_ENV, "").strip()
    if not text:
        pytest.skip(f"{ADMIN_ENV} is not set (.ci/babelfish.sh sets it): no administrator to create a login with")
    return text


# ---------------------------------------------------------------------------
# The connection: SQL Server's dialect through FreeTDS, and test-db
# ---------------------------------------------------------------------------


def test_the_connection_is_sql_servers_dialect_through_freetds(sqlserver_odbc: str) -> None:
    with Database.connect(sqlserver_odbc) as db:
        assert db.dialect is BABELFISH and db.dialect.name == "mssql"
        assert "Microsoft SQL Server" in db.description and "libtdsodbc" in db.description
        assert db.fast_executemany is False  # FreeTDS: plain executemany


def test_test_db_names_the_driver_and_the_tds_version(sqlserver_odbc: str, admin_odbc: str, tmp_path: Path) -> None:
    """Item 5: a council on Linux sees which driver and which TDS version it used."""
    result = run_cli(["test-db"], environ={"DB_CONNECTION_STRING": sqlserver_odbc}, cwd=tmp_path)
    assert result.code == 0, result.err
    assert "DBMS:     Microsoft SQL Server" in result.out
    assert re.search(r"driver:   libtdsodbc\.so \S+ \(FreeTDS\)", result.out)
    # The test login may not read sys.dm_exec_connections (VIEW SERVER STATE): the string's TDS_Version.
    assert "protocol: TDS 7.4, as DB_CONNECTION_STRING asks (TDS_Version" in result.out
    unset = run_cli(
        ["test-db"], environ={"DB_CONNECTION_STRING": with_value(sqlserver_odbc, "TDS_Version", None)}, cwd=tmp_path
    )
    assert unset.code == 0 and "protocol: TDS: not set in DB_CONNECTION_STRING" in unset.out
    # The administrator may: the version the server says this connection uses.
    told = run_cli(["test-db"], environ={"DB_CONNECTION_STRING": admin_odbc}, cwd=tmp_path)
    assert told.code == 0 and "protocol: TDS 7.4\n" in told.out


def test_tds_versions_as_sql_server_numbers_them() -> None:
    assert [tds_version(v) for v in (0x70000000, 0x71000001, 0x72090002, 0x730B0003, 0x74000004, 0x08000000)] == [
        "7.0",
        "7.1",
        "7.2",
        "7.3",
        "7.4",
        "8.0",
    ]
    assert tds_version(0) is None and tds_version(0x12345678) is None


def test_the_freetds_string_in_the_docs_works(sqlserver_odbc: str, tmp_path: Path) -> None:
    """docs/configuration.md's FreeTDS line, filled in with this server's details, connects."""
    docs = (Path(__file__).resolve().parents[1] / "docs" / "configuration.md").read_text(encoding="utf-8")
    (line,) = re.findall(r"^\s*(DB_CONNECTION_STRING=Driver=\{FreeTDS\};.*)$", docs, re.MULTILINE)
    pairs = dict(parse_odbc_string(sqlserver_odbc))
    filled = (
        line.split("=", 1)[1]
        .replace("sqlreports01.council.local", pairs["SERVER"])
        .replace("Port=1433", f"Port={pairs['PORT']}")
        .replace("<reporting database>", pairs["DATABASE"])
    )
    environ = {"DB_CONNECTION_STRING": filled, "DB_USER": pairs["UID"], "DB_PASSWORD": pairs["PWD"]}
    result = run_cli(["test-db"], environ=environ, cwd=tmp_path)
    assert result.code == 0, result.err
    assert "protocol: TDS 7.4" in result.out


# ---------------------------------------------------------------------------
# The SQL login from DB_USER and DB_PASSWORD
# ---------------------------------------------------------------------------


@pytest.fixture
def sql_login(sqlserver_odbc: str, admin_odbc: str) -> Iterator[Any]:
    """Makes a new SQL login, a user in the test database, with the password the test gives."""
    made: list[str] = []
    database = odbc_value(parse_odbc_string(sqlserver_odbc), "DATABASE")

    def make(password: str) -> str:
        login = unique_table("csc_login")
        with Database.connect(admin_odbc) as admin:
            admin.execute(f"CREATE LOGIN {login} WITH PASSWORD = '{password}', DEFAULT_DATABASE = {database}")
        made.append(login)
        with Database.connect(sqlserver_odbc) as owner:
            owner.execute(f"CREATE USER {login} FOR LOGIN {login}")
        return login

    yield make
    for login in made:
        with Database.connect(sqlserver_odbc) as owner:
            owner.execute(f"DROP USER IF EXISTS {login}")
        for _ in range(50):  # the server may still be ending the login's last session
            try:
                with Database.connect(admin_odbc) as admin:
                    admin.execute(f"DROP LOGIN {login}")
                break
            except DatabaseError:
                time.sleep(0.1)


@pytest.mark.parametrize(
    "password",
    ["Plain-Pass-1", "Pa}ss=w0rd x{1}", "Pa;ss=w0rd {1"],
    ids=["plain", "with a closing brace", "with a semicolon"],
)
def test_db_user_and_db_password_make_the_sql_login(sqlserver_odbc: str, sql_login, tmp_path: Path, password: str):
    """DB_USER and DB_PASSWORD, added to a connection string that names no login, log in through
    FreeTDS, whatever the password holds of the characters ODBC strings treat specially. FreeTDS 1.3
    (Debian 12's) misread a '}' written as ODBC escapes it: the login was refused (odbc.for_freetds)."""
    login = sql_login(password)
    bare = with_value(with_value(sqlserver_odbc, "UID", None), "PWD", None)
    environ = {"DB_CONNECTION_STRING": bare, "DB_USER": login, "DB_PASSWORD": password}
    result = run_cli(["test-db"], environ=environ, cwd=tmp_path)
    assert result.code == 0, result.err
    assert f"login:    {login}" in result.out
    assert password not in result.out + result.err
    wrong = run_cli(["test-db"], environ=environ | {"DB_PASSWORD": "wrong"}, cwd=tmp_path)
    assert wrong.code == 3 and f"refused the login for user '{login}'" in wrong.err


def test_a_password_freetds_versions_read_differently_is_refused_before_logging_in(
    sqlserver_odbc: str, tmp_path: Path
) -> None:
    bare = with_value(with_value(sqlserver_odbc, "UID", None), "PWD", None)
    environ = {"DB_CONNECTION_STRING": bare, "DB_USER": "csc_test", "DB_PASSWORD": "a;b}c"}
    result = run_cli(["test-db"], environ=environ, cwd=tmp_path)
    assert result.code == 3
    assert "holds both ';' and '}'" in result.err and "did not try to log in" in result.err
    assert "a;b}c" not in result.err


# ---------------------------------------------------------------------------
# init-db, init-db --print, test-schema
# ---------------------------------------------------------------------------


def drop_tables(connection_string: str, table: str) -> None:
    Staging("mssql", connection_string, table).drop()


def test_init_db_makes_every_table_with_binary_keys_and_test_schema_passes(sqlserver_odbc: str, tmp_path: Path):
    table = unique_table("init")
    environ = {"DB_CONNECTION_STRING": sqlserver_odbc, "TABLE_NAME": table}
    try:
        made = run_cli(["init-db"], environ=environ, cwd=tmp_path)
        assert made.code == 0, made.err
        assert f"staging table {table}: created" in made.out and f"run lock table {table}_run_lock: created" in made.out
        again = run_cli(["init-db"], environ=environ, cwd=tmp_path)
        assert again.code == 0 and again.out.count("already exists, left as it is") == 5
        checked = run_cli(["test-schema"], environ=environ, cwd=tmp_path)
        assert checked.code == 0, checked.out
        assert "warning" not in checked.out
        with Database.connect(sqlserver_odbc) as db:
            keys = {
                f"{suffix}.{c.name}": c.collation
                for suffix in ("_ledger", "_in_doubt", "_run_lock")
                for c in columns(db, table + suffix) or []
                if c.name in ("la_child_id", "lock_name")
            }
        # Babelfish names Latin1_General_100_BIN2 so: compared code point by code point.
        assert keys == dict.fromkeys(
            ["_ledger.la_child_id", "_in_doubt.la_child_id", "_run_lock.lock_name"], "bbf_unicode_bin2"
        )
    finally:
        drop_tables(sqlserver_odbc, table)


def test_init_db_print_runs_as_printed_in_one_batch(sqlserver_odbc: str, tmp_path: Path) -> None:
    """What a DBA is given runs as it is, pasted whole into one batch (no GO needed)."""
    table = unique_table("dba")
    printed = run_cli(["init-db", "--print", "--dialect", "mssql"], environ={"TABLE_NAME": table}, cwd=tmp_path)
    assert printed.code == 0
    environ = {"DB_CONNECTION_STRING": sqlserver_odbc, "TABLE_NAME": table}
    try:
        with Database.connect(sqlserver_odbc) as db:
            db.execute(printed.out)
            assert StagingTable(db, table).column_issues() == []
        checked = run_cli(["test-schema"], environ=environ, cwd=tmp_path)
        assert checked.code == 0, checked.out
        assert run_cli(["init-db"], environ=environ, cwd=tmp_path).out.count("already exists, left as it is") == 5
        # Run twice, each statement creates only what is missing. Babelfish cannot show that for the
        # indexes: sys.indexes gives their names with a suffix, so IF NOT EXISTS (... sys.indexes WHERE
        # name = ...) does not find them (test_tsql.py parses the statements; SQL Server finds them).
        with Database.connect(sqlserver_odbc) as db:
            with pytest.raises(DatabaseError, match="already exists"):
                db.execute(printed.out)
            suffixed = db.scalar(
                "SELECT name FROM sys.indexes WHERE object_id = OBJECT_ID(?) AND name LIKE ?",
                (table, f"ix_{table}_person_id%"),
            )
        assert suffixed and suffixed != f"ix_{table}_person_id"
    finally:
        drop_tables(sqlserver_odbc, table)


def test_test_schema_accepts_the_earlier_builders_table(earlier_table: Staging, tmp_path: Path) -> None:
    result = run_cli(["test-schema"], environ=earlier_table.env, cwd=tmp_path)
    assert result.code == 0, result.out
    assert f"staging table {earlier_table.table}: OK" in result.out
    assert f"ledger table {earlier_table.table}_ledger: not created yet" in result.out
    assert "COLLATE Latin1_General_100_BIN2" in result.out  # the ledger it prints for a DBA


def test_test_schema_fixes_run_as_printed(sqlserver_table: Staging, tmp_path: Path) -> None:
    """test-schema's DDL for a missing column runs. For a column too short it gives ALTER COLUMN
    with NULL or NOT NULL, which SQL Server needs to keep the column's nullability and Babelfish
    does not support at all ('NOT NULL in ALTER TABLE ALTER COLUMN' is not supported): that
    statement is covered by test_sql_server.py (test_test_schema_fixes_keep_nullability_...);
    here the column is changed as Babelfish allows, and test-schema then passes."""
    table = sqlserver_table.table
    with sqlserver_table.open() as db, db.transaction():
        db.execute(f"ALTER TABLE {table} ALTER COLUMN json_payload NVARCHAR(4000)")
        db.execute(f"ALTER TABLE {table} DROP COLUMN previous_hash")
    result = run_cli(["test-schema"], environ=sqlserver_table.env, cwd=tmp_path)
    assert result.code == 3
    assert "json_payload is NVARCHAR(4000)" in result.out and "previous_hash is missing" in result.out
    alter, add = re.findall(r"fix: (.*);", result.out)
    assert alter == f"ALTER TABLE {table} ALTER COLUMN json_payload NVARCHAR(MAX) NOT NULL"
    assert add == f"ALTER TABLE {table} ADD previous_hash BINARY(32) NULL"
    with sqlserver_table.open() as db:
        with pytest.raises(DatabaseError, match="not currently supported in Babelfish"):
            db.execute(alter)
        db.execute(add)
        db.execute(f"ALTER TABLE {table} ALTER COLUMN json_payload NVARCHAR(MAX)")
    fixed = run_cli(["test-schema"], environ=sqlserver_table.env, cwd=tmp_path)
    assert fixed.code == 0, fixed.out


# ---------------------------------------------------------------------------
# The earlier builder's table: switch-over, then nights of changes in both modes
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["partial", "full"])
def test_switch_over_then_nights_of_changes_converge(earlier_table: Staging, simulator, tmp_path: Path, mode: str):
    """The earlier tool sent the table; a night of the council's SQL (updates, removals, deleted and
    new children); then this tool's first run adopts what DfE holds and sends only what changed,
    and three more nights of changes converge, with purges, in both modes."""
    night = hand_over(simulator, earlier_table, children=30, seed=241)
    simulator.clear_log()
    settings = settings_for(simulator, earlier_table, USE_PARTIAL_PAYLOAD=str(mode == "partial").lower())
    first = execute_run(settings)
    assert first.problems == 0
    converged(earlier_table, simulator)
    sent = {r["la_child_id"] for r in sent_records(simulator)}
    assert sent == set(night["updated"]) | set(night["deleted"]) | set(night["new"])  # nothing adopted was sent
    assert {r["la_child_id"] for r in sent_records(simulator) if r.get("purge") is True} == set(night["deleted"])
    for n in range(3):
        with earlier_table.open() as db:
            apply_nightly_changes(db, earlier_table.table, random.Random(n), update_fraction=0.25, delete_fraction=0.05)
        summary = execute_run(settings)
        assert summary.problems == 0
        converged(earlier_table, simulator)
    simulator.clear_log()
    assert execute_run(settings).requests == 0
    status = run_cli(["status"], environ=earlier_table.env | {"LOG_DIR": str(tmp_path / "logs")}, cwd=tmp_path)
    assert status.code == 0, status.err
    validated = run_cli(["validate"], environ=earlier_table.env | {"LOG_DIR": str(tmp_path / "logs")}, cwd=tmp_path)
    assert validated.code == 0, validated.out + validated.err


def test_validate_names_the_fields_of_invalid_rows(sqlserver_table: Staging, tmp_path: Path) -> None:
    children = list(make_children(3, seed=242))
    children[1]["child_details"]["date_of_birth"] = "not a date"
    sqlserver_table.insert(children)
    result = run_cli(["validate"], environ=sqlserver_table.env | {"LOG_DIR": str(tmp_path / "logs")}, cwd=tmp_path)
    assert result.code == 1, result.out + result.err
    assert "date_of_birth" in result.out and "not a date" not in result.out


# ---------------------------------------------------------------------------
# Text: beyond the BMP, long, and what Babelfish cannot store
# ---------------------------------------------------------------------------


def test_text_beyond_the_bmp_and_records_over_4000_characters_round_trip(sqlserver_table: Staging, simulator):
    """FreeTDS binds NVARCHAR(MAX) text its own way (sql_server.SqlServer.input_sizes): a 200 KB record with
    emoji and CJK goes in and out exactly, is sent exactly, and passes the optimistic check."""
    big, small = make_children(2, seed=243)
    big["child_details"].update(first_name="Zoë 😀", surname="王秀英 Łukasz")
    episode = big["social_care_episodes"][0]
    episode["care_worker_details"] = [
        {"worker_id": f"W{n:09d}", "start_date": episode.get("referral_date", "2020-01-01")} for n in range(4000)
    ]
    small["child_details"]["surname"] = "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 😀"
    sqlserver_table.insert([big, small])
    stored = {r["person_id"]: r["json_payload"] for r in sqlserver_table.rows()}
    assert stored[big["la_child_id"]] == json.dumps(big, ensure_ascii=False)
    assert len(stored[big["la_child_id"]]) > 200_000
    summary = execute_run(settings_for(simulator, sqlserver_table))
    assert summary.outcomes["sent"] == 2 and summary.problems == 0
    assert simulator.snapshot()[big["la_child_id"]] == big and simulator.snapshot()[small["la_child_id"]] == small
    assert {r["submission_status"] for r in sqlserver_table.rows()} == {"Sent"}  # the optimistic check matched
    assert sqlserver_table.ledger()[big["la_child_id"]]["record"] == big


def test_a_lone_surrogate_cannot_be_stored_on_babelfish(sqlserver_odbc: str) -> None:
    """SQL Server keeps NVARCHAR as UTF-16 code units, so half an emoji (a LEFT() that cut one) can be in
    a council's table; the tool marks that row invalid and never binds its text back. Babelfish keeps
    text as UTF-8 and refuses to store one, so that path cannot run here: it is covered by the
    recording driver (test_sql_server.py, test_a_lone_surrogate_marks_the_row_invalid_...)."""
    with Database.connect(sqlserver_odbc) as db:
        try:
            stored = db.scalar("SELECT NCHAR(55357)")  # U+D83D, a high surrogate on its own
        except DatabaseError as exc:
            assert "not valid for encoding" in str(exc)
            pytest.skip(
                "Babelfish cannot store a lone surrogate (text is UTF-8 there); covered by the recording driver "
                "in test_sql_server.py"
            )
    pytest.fail(f"this server stored a lone surrogate ({stored!r}): add a real run over it here")


# ---------------------------------------------------------------------------
# Letter case: the council's columns ignore it, the tool's keys do not
# ---------------------------------------------------------------------------


def test_the_ledger_keeps_ids_that_differ_only_in_case_apart_and_joins_them_exactly(sqlserver_table: Staging):
    """The staging table's default collation is case-insensitive (bbf_unicode_cp1_ci_as, as
    Latin1_General_CI_AS in most councils' databases); the ledger's key is binary. Two entries that
    differ only in case are two keys, and a row reads only its own child's entry, not its twin's."""
    with sqlserver_table.open() as db:
        person = {c.name: c for c in columns(db, sqlserver_table.table) or []}["person_id"]
        assert person.collation and "_ci_" in person.collation.lower()
        assert db.scalar("SELECT CASE WHEN N'AB12' = N'ab12' THEN 1 ELSE 0 END") == 1  # the default ignores case
    child = next(make_children(1, seed=244))
    child["la_child_id"] = "ab12"
    sqlserver_table.insert([child])
    with sqlserver_table.open() as db:
        table = StagingTable(db, sqlserver_table.table)
        table.ensure_ledger()
        now = datetime(2026, 3, 1, 21, 4, 33)
        entry = LedgerEntry("AB12", None, 999, json.dumps({"la_child_id": "AB12"}), None, "r.json", now, False)
        table.write_back([], [entry])
        (row,) = list(table.iter_candidates())
        assert row.person_id == "ab12" and not row.ledger_found  # AB12's entry is not ab12's
        table.write_back([], [LedgerEntry("ab12", None, row.id, "{}", None, "s.json", now, False)])
        assert {r[0] for r in db.query(f"SELECT la_child_id FROM {table.ledger}")} == {"AB12", "ab12"}
        (row,) = list(table.iter_candidates())
        assert row.ledger_found


# ---------------------------------------------------------------------------
# The run lock: taken, held, taken over after a crash, stolen
# ---------------------------------------------------------------------------


def test_the_run_lock_is_taken_held_and_taken_over_after_a_crash(sqlserver_table: Staging, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="api_pipeline")
    with sqlserver_table.open() as db, sqlserver_table.open() as other:
        first = RunLock(db, sqlserver_table.table, run_id="first")
        first.holder = f"{socket.gethostname()} pid {os.getppid()} run first"  # a live process: held
        first.acquire()
        second = RunLock(other, sqlserver_table.table, run_id="second")
        second.holder = f"{socket.gethostname()} pid {os.getppid()} run second"
        with pytest.raises(RunLocked, match="another run is already working on"):
            second.acquire()
        # The first run crashes: its process is gone and its lock stays behind.
        dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
        crashed = f"{socket.gethostname()} pid {int(dead.stdout)} run first"
        db.execute(f"UPDATE {first.lock_table} SET holder = ? WHERE lock_name = ?", (crashed, first.name))
        second.acquire()
        assert any("took over the run lock" in r.getMessage() for r in caplog.records)
        assert other.scalar(f"SELECT holder FROM {second.lock_table}") == second.holder
        assert len(first.name) <= LOCK_NAME_SIZE
        second.release()
        assert other.scalar(f"SELECT COUNT(*) FROM {second.lock_table}") == 0


# ---------------------------------------------------------------------------
# Deadlocks and lock time-outs with the council's SQL
# ---------------------------------------------------------------------------


def blocked(watcher: Database, spid: int) -> bool:
    """Whether that session waits for a lock (Babelfish's @@SPID is its PostgreSQL backend)."""
    state = watcher.scalar("SELECT wait_event_type FROM pg_catalog.pg_stat_activity WHERE pid = ?", (spid,))
    return state == "Lock"


def wait_until(condition, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.05)


def test_a_write_blocked_by_the_councils_sql_times_out_in_steps_and_beats(
    sqlserver_table: Staging, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SET LOCK_TIMEOUT bounds each wait; the time-out is recognised and the work tried again, the
    run lock's heartbeat written between tries. Babelfish reports the time-out as error 33557097
    with PostgreSQL's words 'canceling statement due to lock timeout' (33557097 is its number for
    any error it has no SQL Server number for, so the tool knows it by the words); SQL Server's
    1222 is covered in test_odbc.py. (Reads are not blocked here: Babelfish reads the last
    committed row, as SQL Server does with READ_COMMITTED_SNAPSHOT on.)"""
    monkeypatch.setattr("api_pipeline.store.retry.LOCK_WAIT_SECONDS", 0.5)
    sqlserver_table.insert(list(make_children(3, seed=245)))
    locked, release = threading.Event(), threading.Event()

    def council_sql() -> None:
        with sqlserver_table.open() as council, council.transaction():
            council.execute(f"UPDATE {sqlserver_table.table} SET last_updated = GETDATE()")
            locked.set()
            release.wait(20)

    council = threading.Thread(target=council_sql, daemon=True)
    council.start()
    assert locked.wait(10)
    beats: list[float] = []
    update = f"UPDATE {sqlserver_table.table} SET api_response = 'checked'"
    with sqlserver_table.open() as run:
        with pytest.raises(DatabaseError) as caught:
            run.execute(update)
        assert caught.value.kind == LOCK_TIMEOUT
        assert "canceling statement due to lock timeout" in str(caught.value) and "33557097" in str(caught.value)

        def beat() -> None:
            beats.append(time.monotonic())
            if len(beats) >= 3:
                release.set()  # the council's SQL finishes

        run.while_waiting = beat
        changed = run.retry_conflicts(lambda: run.execute(update), "writing back a batch")
    council.join(10)
    assert changed == 3 and len(beats) >= 3


def test_a_write_back_chosen_as_a_deadlock_victim_is_written_again(sqlserver_table: Staging, caplog) -> None:
    """The council's job locks the second row, then waits for the first, which the write-back holds:
    a deadlock (error 1205). The write-back is rolled back, tried again, and written whole."""
    caplog.set_level(logging.WARNING, logger="api_pipeline")
    sqlserver_table.insert(list(make_children(2, seed=246)))
    updates, ledger = acknowledged(sqlserver_table)
    first, second = (u.row_id for u in updates)
    table_name = sqlserver_table.table
    errors: list[BaseException] = []
    holding = threading.Event()
    with sqlserver_table.open() as run, sqlserver_table.open() as watcher:
        spid = int(run.scalar("SELECT @@SPID"))

        def council_job() -> None:
            try:
                with sqlserver_table.open() as council, council.transaction():
                    council.execute(f"UPDATE {table_name} SET last_updated = GETDATE() WHERE id = ?", (second,))
                    holding.set()
                    wait_until(lambda: blocked(watcher, spid))
                    council.execute(f"UPDATE {table_name} SET last_updated = GETDATE() WHERE id = ?", (first,))
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        table = StagingTable(run, table_name)
        table.ensure_ledger()
        job = threading.Thread(target=council_job, daemon=True)
        job.start()
        assert holding.wait(15)
        skipped = table.write_back(updates, ledger)
        job.join(30)
    deadlocked = [r.getMessage() for r in caplog.records if "deadlock victim" in r.getMessage()]
    council_lost = [e for e in errors if isinstance(e, DatabaseError) and e.kind == "conflict"]
    # PostgreSQL's deadlock detector rolls back whichever session's check runs first: the write-back
    # (tried again, as the log says) or the council's job (which then has nothing to wait for).
    assert deadlocked or council_lost, errors
    assert not [e for e in errors if e not in council_lost]
    assert skipped == 0
    assert {row["submission_status"] for row in sqlserver_table.rows()} == {"Sent"}
    assert len(sqlserver_table.ledger()) == 2


def test_hint_based_row_locks_are_not_shown_by_babelfish(sqlserver_table: Staging) -> None:
    """The write-back reads its rows WITH (UPDLOCK, ROWLOCK), which on SQL Server makes a second
    reader that asks the same wait. Babelfish accepts the hints and ignores them, so the lock cannot
    be shown here: test_sql_server.py covers the statement; the optimistic check in each UPDATE (run
    for real in test_end_to_end.py::test_row_changed_during_the_run_stays_pending) guards either way."""
    sqlserver_table.insert(list(make_children(1, seed=247)))
    select = f"SELECT id FROM {sqlserver_table.table} WITH (UPDLOCK, ROWLOCK) WHERE id > ?"
    with sqlserver_table.open() as first, sqlserver_table.open() as second, first.transaction():
        assert len(list(first.query(select, (0,)))) == 1
        with second.transaction():
            second.execute("SET LOCK_TIMEOUT 500")
            try:
                read = list(second.query(select, (0,)))
            except DatabaseError as exc:
                assert exc.kind == LOCK_TIMEOUT
                pytest.fail("this server honours UPDLOCK: show the write-back's lock here")
    assert len(read) == 1
    pytest.skip("Babelfish ignores UPDLOCK and ROWLOCK (a second session read the locked row)")


def test_each_connection_counts_rows_and_bounds_lock_waits_for_real(sqlserver_odbc: str) -> None:
    with Database.connect(sqlserver_odbc) as db:
        assert db.scalar("SELECT @@LOCK_TIMEOUT") == 30_000
        assert db.scalar("SELECT @@OPTIONS & 512") == 0  # NOCOUNT off
