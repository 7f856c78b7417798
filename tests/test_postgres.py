"""PostgreSQL through pyodbc and psqlODBC, against the real test server (.ci/postgres.sh).

The end-to-end suite runs here too (test_end_to_end.py, parametrised by database);
these are the PostgreSQL specifics: driver settings, streaming, long and non-ASCII
text, real error messages, init-db, test-db and test-schema. Skipped, with the
reason, when no server is configured or reachable.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import socket
import threading
import time
import uuid
from collections.abc import Iterator

import pytest

from api_pipeline.cli import diagnostics
from api_pipeline.errors import DatabaseError
from api_pipeline.job.runner import execute_run
from api_pipeline.rehearsal.synthetic import make_children
from api_pipeline.settings.config import load_settings
from api_pipeline.settings.context import Context
from api_pipeline.store.catalogue import column_names
from api_pipeline.store.db import Database
from api_pipeline.store.dialects import POSTGRES
from api_pipeline.store.staging import StagingTable
from conftest import MARKER, Staging, acknowledged, ctx, run_cli, settings_for, unique_table

NAMES = {"first_name": "Zoë Łukasz 🙂", "surname": "O'Brien-Żółć"}


def output(context: Context) -> str:
    return context.out.getvalue()  # type: ignore[attr-defined]


def with_value(connection_string: str, key: str, value: str) -> str:
    return re.sub(rf"(?i)\b{key}=[^;]*", f"{key}={value}", connection_string)


@pytest.fixture
def schema(postgres_odbc: str) -> Iterator[str]:
    """A fresh schema, for schema-qualified TABLE_NAMEs like ssd_development.ssd_api_data_staging."""
    name = f"ssd_{uuid.uuid4().hex[:10]}"
    with Database.connect(postgres_odbc) as db:
        db.execute(f"CREATE SCHEMA {name}")
    try:
        yield name
    finally:
        with Database.connect(postgres_odbc) as db:
            db.execute(f"DROP SCHEMA {name} CASCADE")


def big_record(record: dict) -> dict:
    """A valid record over 200 KB: many care workers on one episode, and names no code page holds."""
    record["child_details"].update(NAMES)
    episode = record["social_care_episodes"][0]
    start = episode.get("referral_date", "2020-01-01")
    episode["care_worker_details"] = [{"worker_id": f"W{n:09d}", "start_date": start} for n in range(4000)]
    assert len(json.dumps(record, ensure_ascii=False).encode()) > 200_000
    return record


# ---------------------------------------------------------------------------
# The driver and the connection
# ---------------------------------------------------------------------------


def test_connection_uses_psqlodbc_with_its_settings(postgres_odbc):
    with Database.connect(postgres_odbc) as db:
        assert db.dialect is POSTGRES
        assert "PostgreSQL" in db.description and "psqlodbc" in db.description.lower()
        assert db.fast_executemany is False  # psqlODBC: plain executemany only


def test_results_stream_through_a_server_side_cursor(postgres_odbc):
    """UseDeclareFetch=1 is applied: a query in progress is a DECLAREd cursor, not a loaded result."""
    with Database.connect(postgres_odbc) as db, db.transaction():
        rows = db.query("SELECT g FROM generate_series(1, 5000) g ORDER BY g", chunk=10)
        assert next(rows) == (1,)
        cursors = [r[0] for r in db.query("SELECT statement FROM pg_cursors")]
        assert any("generate_series" in statement for statement in cursors)
        assert sum(1 for _ in rows) == 4999


def test_reads_do_not_leave_a_transaction_open(postgres_odbc):
    """No snapshot or lock is held while the pipeline waits on DfE between batches."""
    with Database.connect(postgres_odbc) as db, Database.connect(postgres_odbc) as watcher:
        pid = db.scalar("SELECT pg_backend_pid()")
        state = watcher.scalar("SELECT state FROM pg_stat_activity WHERE pid = ?", (pid,))
        assert state == "idle"


# ---------------------------------------------------------------------------
# Long and non-ASCII text, through the database and a run to the simulator
# ---------------------------------------------------------------------------


def test_200kb_and_non_ascii_records_round_trip(postgres_table: Staging, simulator):
    first, small = make_children(2, seed=1)
    big = big_record(first)
    small["child_details"].update(NAMES)
    postgres_table.insert([big, small])
    by_id = {r["person_id"]: r for r in postgres_table.rows()}
    assert by_id[big["la_child_id"]]["json_payload"] == json.dumps(big, ensure_ascii=False)
    assert json.loads(by_id[small["la_child_id"]]["json_payload"]) == small

    summary = execute_run(settings_for(simulator, postgres_table))
    assert summary.outcomes["sent"] == 2 and summary.problems == 0
    held = simulator.snapshot()
    assert held[big["la_child_id"]] == big and held[small["la_child_id"]] == small
    (posted,) = [e.body for e in simulator.request_log() if e.path.endswith("/children")]
    assert "Zoë Łukasz 🙂".encode() in posted and "O'Brien-Żółć".encode() in posted
    for row in postgres_table.rows():
        assert row["submission_status"] == "Sent"
        assert row["previous_json_payload"] == row["json_payload"]  # the optimistic check matched 200 KB exactly
        assert len(row["previous_hash"]) == 32
    assert postgres_table.ledger()[big["la_child_id"]]["record"] == big

    # A changed long record is seen as changed, and only the change goes.
    big["child_details"]["first_name"] = "Zoë 🙂 again"
    postgres_table.set_payload(big["la_child_id"], big)
    simulator.clear_log()
    assert execute_run(settings_for(simulator, postgres_table)).outcomes["sent"] == 1
    assert simulator.snapshot()[big["la_child_id"]] == big
    (delta_body,) = [e.body for e in simulator.request_log() if e.path.endswith("/children")]
    assert len(delta_body) < 10_000


# ---------------------------------------------------------------------------
# Real errors, explained
# ---------------------------------------------------------------------------


def connect_error(connection_string: str) -> str:
    with pytest.raises(DatabaseError) as caught:
        Database.connect(connection_string).close()
    return str(caught.value)


def test_wrong_password_is_explained_without_the_password(postgres_odbc):
    text = connect_error(with_value(postgres_odbc, "Pwd", "not-the-password-xyz"))
    assert "refused the login for user 'csc_test'" in text
    assert "not-the-password-xyz" not in text


def test_missing_database_is_explained(postgres_odbc):
    assert "the database no_such_db was not found" in connect_error(with_value(postgres_odbc, "Database", "no_such_db"))


def test_server_not_listening_is_explained(postgres_odbc):
    with socket.socket() as probe:  # a port on this machine that nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    assert "cannot reach the database server" in connect_error(with_value(postgres_odbc, "Port", str(port)))


def test_missing_table_is_explained_and_the_connection_stays_usable(postgres_odbc):
    with Database.connect(postgres_odbc) as db:
        with pytest.raises(DatabaseError) as caught:
            db.scalar("SELECT COUNT(*) FROM no_such_staging_table")
        assert "the table no_such_staging_table was not found" in str(caught.value)
        assert db.scalar("SELECT 1") == 1  # the failed statement's transaction was rolled back


def test_permission_denied_is_explained(postgres_table: Staging):
    reader = os.environ.get("CSC_TEST_POSTGRES_ODBC_READER")
    if not reader:
        pytest.skip("CSC_TEST_POSTGRES_ODBC_READER (a SELECT-only role) is not set; .ci/postgres.sh sets it")
    postgres_table.insert(list(make_children(1, seed=3)))
    with Database.connect(reader) as db:
        assert db.scalar(f"SELECT COUNT(*) FROM {postgres_table.table}") == 1
        with pytest.raises(DatabaseError) as caught:
            db.execute(f"UPDATE {postgres_table.table} SET submission_status = 'Sent'")
    assert "lacks a permission" in str(caught.value) and "42501" in str(caught.value)


def test_run_against_a_missing_table_exits_3(postgres_odbc, simulator, tmp_path):
    environ = dict(simulator.settings_env()) | {"DB_CONNECTION_STRING": postgres_odbc, "TABLE_NAME": "no_such_table"}
    result = run_cli(["run"], environ=environ, cwd=tmp_path)
    assert result.code == 3 and "no_such_table" in result.err
    assert "Pwd=" not in result.err


# ---------------------------------------------------------------------------
# init-db, test-db, test-schema
# ---------------------------------------------------------------------------


def test_init_db_then_test_schema_and_a_run_on_a_schema_qualified_anon_table(postgres_odbc, schema, simulator):
    table = f"{schema}.ssd_api_data_staging_anon"
    settings = load_settings(command="test-db", environ={"DB_CONNECTION_STRING": postgres_odbc, "TABLE_NAME": table})
    first = ctx()
    assert diagnostics.init_db(settings, first, False) == 0
    assert f"staging table {table}: created" in output(first)
    assert "unique index on person_id" in output(first) and f"ledger table {table}_ledger: created" in output(first)
    again = ctx()
    assert diagnostics.init_db(settings, again, False) == 0  # never drops or alters
    assert output(again).count("already exists, left as it is") == 5

    checked = ctx()
    assert diagnostics.test_schema(settings, checked) == 0
    assert f"staging table {table}: OK" in output(checked) and f"ledger table {table}_ledger: OK" in output(checked)

    staging = Staging("postgresql", postgres_odbc, table)
    children = list(make_children(12, seed=4))
    staging.insert(children)
    with staging.open() as db, pytest.raises(DatabaseError, match="duplicate key"):
        StagingTable(db, table).db.execute(
            f"INSERT INTO {table} (person_id, json_payload) VALUES (?, ?)", (children[0]["la_child_id"], "{}")
        )
    summary = execute_run(settings_for(simulator, staging))
    assert summary.outcomes["sent"] == 12
    assert set(staging.ledger()) == {c["la_child_id"] for c in children}


def test_init_db_print_for_postgresql_runs_as_printed(postgres_odbc, schema):
    table = f"{schema}.printed"
    printed = ctx()
    settings = load_settings(command="init-db --print", environ={"TABLE_NAME": table})
    assert diagnostics.init_db(settings, printed, True, dialect="postgresql") == 0
    script = re.sub(r"(?m)^--.*\n", "", output(printed))
    statements = [s for s in script.split(";\n") if s.strip()]
    assert len(statements) == 8
    with Database.connect(postgres_odbc) as db:
        for statement in statements:
            db.execute(statement)
        names = {table, f"{table}_ledger", f"{table}_in_flight", f"{table}_in_doubt", f"{table}_run_lock"}
        assert all(column_names(db, name) for name in names)
        assert StagingTable(db, table).column_issues() == []


def test_test_db_reports_dbms_driver_login_and_database(postgres_odbc, tmp_path):
    result = run_cli(["test-db"], environ={"DB_CONNECTION_STRING": postgres_odbc}, cwd=tmp_path)
    assert result.code == 0, result.err
    assert "DBMS:     PostgreSQL" in result.out
    assert "driver:   psqlodbc" in result.out.lower()
    assert "login:    csc_test" in result.out and "database: csc_test" in result.out


def test_test_schema_lists_unusable_columns_with_fixes_that_work(postgres_table: Staging, tmp_path):
    with postgres_table.open() as db, db.transaction():
        db.execute(f"ALTER TABLE {postgres_table.table} ALTER COLUMN json_payload TYPE VARCHAR(4000)")
        db.execute(f"ALTER TABLE {postgres_table.table} ALTER COLUMN row_state TYPE VARCHAR(5)")
        db.execute(f"ALTER TABLE {postgres_table.table} DROP COLUMN previous_hash")
    result = run_cli(["test-schema"], environ=postgres_table.env, cwd=tmp_path)
    assert result.code == 3
    assert "3 column(s) the tool cannot use" in result.out
    assert "json_payload is CHARACTER VARYING(4000)" in result.out and "previous_hash is missing" in result.out
    fixes = re.findall(r"fix: (.*);", result.out)
    assert len(fixes) == 3
    with postgres_table.open() as db, db.transaction():
        for fix in fixes:
            db.execute(fix)
    fixed = run_cli(["test-schema"], environ=postgres_table.env, cwd=tmp_path)
    assert fixed.code == 0, fixed.out


# ---------------------------------------------------------------------------
# Issue 18: deadlocks and lock waits with the council's SQL, for real
# ---------------------------------------------------------------------------


def wait_until(condition, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.02)


def blocked_on_a_lock(watcher: Database, pid: int) -> bool:
    """Whether that backend is waiting for a lock (each read here is its own transaction: a fresh view)."""
    return watcher.scalar("SELECT wait_event_type FROM pg_stat_activity WHERE pid = ?", (pid,)) == "Lock"


class CouncilJob(threading.Thread):
    """The council's nightly SQL, touching the run's rows in the opposite order, ``rounds`` times.

    Each round locks the second row, waits until the run's write-back holds the first and waits for
    the second, then updates the first: a deadlock, in which PostgreSQL rolls back the run's
    transaction (it waited first, so its deadlock check runs first). The round then commits.
    """

    def __init__(self, staging: Staging, ids: list[int], run_pid: int, rounds: int) -> None:
        super().__init__(daemon=True)
        self.staging, self.ids, self.run_pid, self.rounds = staging, ids, run_pid, rounds
        self.error: BaseException | None = None
        self.holding = threading.Event()  # the first round holds the second row

    def run(self) -> None:
        try:
            first, second = self.ids
            table = self.staging.table
            with self.staging.open() as council, self.staging.open() as watcher:
                for _ in range(self.rounds):
                    with council.transaction():
                        council.execute(f"UPDATE {table} SET last_updated = CURRENT_TIMESTAMP WHERE id = ?", (second,))
                        self.holding.set()
                        wait_until(lambda: blocked_on_a_lock(watcher, self.run_pid))
                        council.execute(f"UPDATE {table} SET last_updated = CURRENT_TIMESTAMP WHERE id = ?", (first,))
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc


def deadlocked_write_back(staging: Staging, rounds: int) -> int:
    """Write back an acknowledged batch of two rows while the council's job deadlocks with it ``rounds`` times."""
    staging.insert(list(make_children(2, seed=182)))
    updates, ledger = acknowledged(staging)
    with staging.open() as run:
        table = StagingTable(run, staging.table)
        table.ensure_ledger()
        job = CouncilJob(staging, [u.row_id for u in updates], int(run.scalar("SELECT pg_backend_pid()")), rounds)
        job.start()
        try:
            assert job.holding.wait(15)
            return table.write_back(updates, ledger)
        finally:
            job.join(30)
            assert job.error is None, job.error


def test_write_back_chosen_as_a_deadlock_victim_is_written_again(postgres_table: Staging, caplog):
    caplog.set_level(logging.WARNING, logger="api_pipeline")
    assert deadlocked_write_back(postgres_table, rounds=1) == 0
    assert all(row["submission_status"] == "Sent" for row in postgres_table.rows())
    assert len(postgres_table.ledger()) == 2
    (retry,) = [r.getMessage() for r in caplog.records if "deadlock victim" in r.getMessage()]
    assert "writing back a batch" in retry and "attempt 2 of 5" in retry and "nothing was kept" in retry


def test_write_back_gives_up_after_repeated_deadlocks_and_leaves_nothing_half_written(
    postgres_table: Staging, monkeypatch
):
    monkeypatch.setattr("api_pipeline.store.retry.CONFLICT_ATTEMPTS", 3)
    with pytest.raises(DatabaseError) as caught:
        deadlocked_write_back(postgres_table, rounds=3)
    text = str(caught.value)
    assert text.startswith("writing back a batch failed after 3 attempts: the database chose this work as the victim")
    assert "deadlock detected" in text and "40P01" in text and caught.value.kind == "conflict"
    assert all(row["submission_status"] == "Pending" for row in postgres_table.rows())
    assert postgres_table.ledger() == {}


@pytest.mark.parametrize("read", ["page of candidates", "any other query"])
def test_a_read_blocked_by_the_councils_sql_waits_in_bounded_steps_and_beats(
    postgres_table: Staging, monkeypatch, read: str
):
    """lock_timeout bounds each wait; between tries the run lock's heartbeat is written; then it reads."""
    monkeypatch.setattr("api_pipeline.store.retry.LOCK_WAIT_SECONDS", 0.5)
    postgres_table.insert(list(make_children(3, seed=183)))
    beats: list[float] = []
    locked, beaten = threading.Event(), threading.Event()

    def beat() -> None:
        beats.append(time.monotonic())
        if len(beats) >= 3:
            beaten.set()

    def council_sql() -> None:  # e.g. a TRUNCATE and reload, or an ALTER, until the run has waited 3 times
        with postgres_table.open() as council, council.transaction():
            council.execute(f"LOCK TABLE {postgres_table.table} IN ACCESS EXCLUSIVE MODE")
            locked.set()
            beaten.wait(30)  # held for as many bounded waits as the test needs, however slow the machine

    council = threading.Thread(target=council_sql, daemon=True)
    council.start()
    assert locked.wait(10)
    with postgres_table.open() as run:
        run.while_waiting = beat
        if read == "any other query":
            found = [run.scalar(f"SELECT COUNT(*) FROM {postgres_table.table}")] * 3
        else:
            found = list(StagingTable(run, postgres_table.table).iter_candidates())
    council.join(10)
    assert len(found) == 3 and found[0] is not None
    assert len(beats) >= 3  # after each half-second wait


def test_the_output_converter_gets_the_drivers_bytes_through_pyodbc(postgres_odbc):
    """pyodbc hands a registered output converter the column's raw bytes: here a BYTEA holding
    UTF-16LE with a lone surrogate, which the converter reads as SQL Server's text would be read."""
    from api_pipeline.store.odbc import UnreadableText, decode_wide_text

    raw = "Zoë ".encode("utf-16-le") + b"\x3d\xd8" + "!".encode("utf-16-le")
    with Database.connect(postgres_odbc) as db:
        connection = db._conn  # the pyodbc connection itself
        connection.add_output_converter(-3, decode_wide_text)  # SQL_VARBINARY
        connection.add_output_converter(-4, decode_wide_text)  # SQL_LONGVARBINARY: psqlODBC's BYTEA
        try:
            value = db.scalar("SELECT CAST(? AS BYTEA)", (raw,))
        finally:
            connection.clear_output_converters()
    assert isinstance(value, UnreadableText) and value == "Zoë \ufffd!"
    assert value.digest == hashlib.sha256(raw).digest()


# ---------------------------------------------------------------------------
# Issue 23.2: text that is not UTF-8, in a SQL_ASCII database (which stores whatever bytes it is given)
# ---------------------------------------------------------------------------

SQL_ASCII_ENV = "CSC_TEST_POSTGRES_ODBC_SQL_ASCII"


@pytest.fixture
def sql_ascii_table(postgres_odbc: str) -> Iterator[Staging]:
    """A fresh staging table in the test server's SQL_ASCII database (.ci/postgres.sh makes it; without
    CSC_TEST_POSTGRES_ODBC_SQL_ASCII, the test database's name with _sql_ascii after it)."""
    text = os.environ.get(SQL_ASCII_ENV, "").strip()
    if not text:
        database = re.search(r"(?i)\bdatabase=([^;]*)", postgres_odbc)
        text = with_value(postgres_odbc, "Database", f"{database.group(1) if database else 'csc_test'}_sql_ascii")
    problem = None
    try:
        with Database.connect(text) as db:
            encoding = db.scalar("SHOW server_encoding")
        if encoding != "SQL_ASCII":
            problem = f"the database of {SQL_ASCII_ENV} is in {encoding}, not SQL_ASCII"
    except DatabaseError as exc:
        problem = f"no SQL_ASCII test database ({str(exc).splitlines()[0]}): source .ci/postgres.sh to make one"
    if problem:
        if os.environ.get(SQL_ASCII_ENV) and os.environ.get("CSC_TEST_POSTGRES_REQUIRED"):
            pytest.fail(problem)
        pytest.skip(problem)
    staging = Staging("postgresql", text, unique_table("ascii"))
    staging.create()
    try:
        yield staging
    finally:
        staging.drop()


def test_text_the_server_cannot_send_as_utf8_holds_back_its_row_only(sql_ascii_table: Staging, simulator, tmp_path):
    """PostgreSQL refuses to send a value that is not valid UTF-8 (SQLSTATE 22021), failing the whole
    read and naming no row, with the bytes around the bad one in its message. The page is read again
    row by row: the rows that hold such text are reported and left as they are, the others are sent."""
    children = list(make_children(6, seed=72))
    for child in children[1], children[4]:
        child["child_details"].update(MARKER, first_name="Bront\u00e9")
    sql_ascii_table.insert(children)
    with sql_ascii_table.open() as db, db.transaction():
        for row_id in (2, 5):
            raw = json.dumps(children[row_id - 1], ensure_ascii=False).encode("cp1252")
            db.execute(
                f"UPDATE {sql_ascii_table.table} SET json_payload = convert_from(CAST(? AS BYTEA), 'SQL_ASCII') "
                "WHERE id = ?",
                (raw, row_id),
            )
        # Row 5 has no person_id: only its record could say who it is (find_duplicates reads it).
        db.execute(f"UPDATE {sql_ascii_table.table} SET person_id = NULL WHERE id = 5")
    with sql_ascii_table.open() as db, pytest.raises(DatabaseError) as caught:  # what the server does
        db.fetch_all(f"SELECT json_payload FROM {sql_ascii_table.table} ORDER BY id")
    assert caught.value.kind == "undecodable" and "0xe9" not in str(caught.value)

    logs = tmp_path / "logs"
    environ = dict(simulator.settings_env()) | sql_ascii_table.env | {"LOG_DIR": str(logs)}
    checked = run_cli(["validate"], environ=environ, cwd=tmp_path)
    assert checked.code == 1 and "checked 6 rows: 4 would be sent" in checked.out and "2 skipped" in checked.out
    assert "json_payload cannot be read as text       2  2, 5" in checked.out
    ran = run_cli(["-vv", "run"], environ=environ, cwd=tmp_path)
    assert ran.code == 1, ran.err
    assert set(simulator.snapshot()) == {c["la_child_id"] for i, c in enumerate(children) if i not in (1, 4)}
    with sql_ascii_table.open() as db:
        states = db.fetch_all(f"SELECT id, submission_status, api_response FROM {sql_ascii_table.table} ORDER BY id")
    assert [state for state in states if state[0] in (2, 5)] == [(2, "Pending", None), (5, "Pending", None)]
    again = execute_run(settings_for(simulator, sql_ascii_table))
    assert again.outcomes["skipped"] == 2 and again.outcomes["sent"] == 0

    written = "\n".join([checked.out, checked.err, ran.out, ran.err, *(f.read_text("utf-8") for f in logs.glob("*"))])
    assert "json_payload cannot be read as text" in written
    for value in [*MARKER.values(), "Bront", "0xe9"]:
        assert value not in written, f"{value!r} leaked"


def test_a_status_or_note_the_server_cannot_send_is_read_as_empty(sql_ascii_table: Staging, simulator):
    children = list(make_children(3, seed=73))
    sql_ascii_table.insert(children)
    with sql_ascii_table.open() as db, db.transaction():
        db.execute(
            f"UPDATE {sql_ascii_table.table} SET api_response = convert_from(CAST(? AS BYTEA), 'SQL_ASCII') "
            "WHERE id = 2",
            (b"caf\xe9",),
        )
    summary = execute_run(settings_for(simulator, sql_ascii_table))
    assert summary.outcomes["sent"] == 3 and not summary.problems
    assert [r["submission_status"] for r in sql_ascii_table.rows()] == ["Sent"] * 3
