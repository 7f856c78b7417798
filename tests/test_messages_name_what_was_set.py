"""Messages name what the person set, and the earlier tool's habits get an answer (issue 25, item 4).

The earlier Python tool (data-to-insight/dfe-csc-api-data-flows) took the database as
SQL_CONN_STR or USER_SERVER + USER_DATABASE, installed a ``d2i-csc-api`` command beside
``csc-api-pipeline``, and had a ``run-smoke`` command: a database check, a token and a POST,
then a staging table check.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from api_pipeline.rehearsal.synthetic import make_children
from conftest import db_env, insert, rows, run_cli

REPO = Path(__file__).resolve().parents[1]


class NoSqlServerDriver:
    """pyodbc on a machine whose ODBC has no SQL Server driver (where one is installed, as here)."""

    class Error(Exception):
        pass

    @staticmethod
    def drivers() -> list[str]:
        return ["PostgreSQL Unicode", "SQLite3"]

    def connect(self, text: str, autocommit: bool = True):
        raise AssertionError("no driver was chosen, so nothing may be connected to")


def sql_server_driver_installed() -> bool:
    try:
        import pyodbc
    except ImportError:
        return False
    return any("sql server" in name.lower() or "freetds" in name.lower() for name in pyodbc.drivers())


# -- (a) the earlier tool's USER_SERVER and USER_DATABASE are named, not DB_CONNECTION_STRING ---------------


def test_no_sql_server_driver_names_user_server_and_user_database(tmp_path, monkeypatch):
    monkeypatch.setattr("api_pipeline.store.db.import_pyodbc", lambda setting="": NoSqlServerDriver())
    (tmp_path / ".env").write_text("USER_SERVER=sql01\nUSER_DATABASE=HDM_Local\n", encoding="utf-8")
    result = run_cli(["test-db"], cwd=tmp_path)
    assert result.code == 3
    assert "error: USER_SERVER and USER_DATABASE connect to SQL Server, and no SQL Server ODBC driver" in result.err
    assert "installed: PostgreSQL Unicode, SQLite3" in result.err
    assert "DB_CONNECTION_STRING names" not in result.err and "to DB_CONNECTION_STRING" not in result.err


def test_sql_conn_str_is_named_when_it_is_what_was_set(tmp_path, monkeypatch):
    monkeypatch.setattr("api_pipeline.store.db.import_pyodbc", lambda setting="": NoSqlServerDriver())
    (tmp_path / ".env").write_text("SQL_CONN_STR=SERVER=sql01;DATABASE=HDM_Local;Trusted_Connection=yes;\n")
    result = run_cli(["test-db"], cwd=tmp_path)
    assert result.code == 3
    assert "error: SQL_CONN_STR names no ODBC driver" in result.err and "add DRIVER={...} to SQL_CONN_STR" in result.err
    assert "DB_CONNECTION_STRING" not in result.err


@pytest.mark.skipif(not sql_server_driver_installed(), reason="needs a SQL Server ODBC driver (FreeTDS or Microsoft's)")
def test_an_unreachable_user_server_is_named_as_such(tmp_path):
    """The real driver, refused on a closed port: the server to check is USER_SERVER."""
    (tmp_path / ".env").write_text("USER_SERVER=127.0.0.1,1\nUSER_DATABASE=HDM_Local\n", encoding="utf-8")
    result = run_cli(["test-db"], cwd=tmp_path)
    assert result.code == 3
    assert "cannot reach the database server. Check USER_SERVER, that the server is running" in result.err
    assert "DB_CONNECTION_STRING" not in result.err


def test_a_driver_named_but_not_installed_names_the_setting_that_named_it(tmp_path):
    pytest.importorskip("pyodbc")
    (tmp_path / ".env").write_text(
        "SQL_CONN_STR=DRIVER={No Such Driver 99};SERVER=sql01;DATABASE=HDM;Trusted_Connection=yes;\n",
        encoding="utf-8",
    )
    result = run_cli(["test-db"], cwd=tmp_path)
    assert result.code == 3
    assert "name an installed one with DRIVER={...} in SQL_CONN_STR" in result.err


# -- (b) a file's path where the connection string belongs ---------------------------------------------------


@pytest.mark.parametrize(
    ("given", "suggested"),
    [
        ("rehearsal.db", "sqlite:///rehearsal.db"),
        ("data/rehearsal.sqlite", "sqlite:///data/rehearsal.sqlite"),
        ("C:\\CSC\\rehearsal.db", "sqlite:///C:/CSC/rehearsal.db"),
        ("/srv/csc/rehearsal.db", "sqlite:////srv/csc/rehearsal.db"),
    ],
)
def test_a_file_path_gets_did_you_mean_sqlite(tmp_path, given, suggested):
    (tmp_path / ".env").write_text(f"DB_CONNECTION_STRING={given}\n", encoding="utf-8")
    result = run_cli(["test-db"], cwd=tmp_path)
    assert result.code == 2
    assert f"did you mean DB_CONNECTION_STRING={suggested}?" in result.err, result.err
    assert "ODBC" not in result.err.split("did you mean")[0]  # not the SQL Server driver answer


def test_an_existing_file_without_a_suffix_gets_did_you_mean_too_and_the_suggestion_works(tmp_path):
    (tmp_path / ".env").write_text("SQL_CONN_STR=staging\n", encoding="utf-8")
    result = run_cli(["init-db"], cwd=tmp_path)
    assert result.code == 2 and "SQL_CONN_STR: staging" not in result.err  # it is no file yet: no guess
    assert "SQL_CONN_STR: not a connection string (it has no KEY=value in it)" in result.err
    assert "sqlite:///path/to/file.db" in result.err

    (tmp_path / ".env").write_text("DB_CONNECTION_STRING=sqlite:///staging\n", encoding="utf-8")
    assert run_cli(["init-db"], cwd=tmp_path).code == 0  # makes the file
    (tmp_path / ".env").write_text("SQL_CONN_STR=staging\n", encoding="utf-8")
    result = run_cli(["test-db"], cwd=tmp_path)
    assert result.code == 2 and "did you mean SQL_CONN_STR=sqlite:///staging?" in result.err
    (tmp_path / ".env").write_text("SQL_CONN_STR=sqlite:///staging\n", encoding="utf-8")
    assert run_cli(["test-db"], cwd=tmp_path).code == 0


def test_another_databases_url_is_not_taken_for_a_file(tmp_path):
    (tmp_path / ".env").write_text("DB_CONNECTION_STRING=postgresql://csc:Do-Not-Show@db/hdm\n", encoding="utf-8")
    result = run_cli(["test-db"], cwd=tmp_path)
    assert result.code == 2 and "not a connection string" in result.err and "did you mean" not in result.err
    assert "Do-Not-Show" not in result.err


# -- (c) run-smoke --------------------------------------------------------------------------------------------


def test_run_smoke_runs_test_db_test_endpoint_and_test_schema_in_order(simulator, db_path, tmp_path):
    insert(db_path, list(make_children(2, seed=251)))
    environ = dict(simulator.settings_env()) | db_env(db_path)
    result = run_cli(["run-smoke"], environ=environ, cwd=tmp_path)
    assert result.code == 0, result.err
    headings = [line for line in result.out.splitlines() if line.startswith("== ")]
    assert headings == ["== test-db ==", "== test-endpoint ==", "== test-schema =="]
    assert "database: OK" in result.out and "PASS: Token" in result.out and "staging table" in result.out
    assert result.out.rstrip().endswith("run-smoke: test-db passed; test-endpoint passed; test-schema passed")
    posts = [e for e in simulator.request_log() if e.path.endswith("/children")]
    assert [e.body for e in posts] == [b"[]"]  # no record sent


def test_run_smoke_goes_on_past_a_failure_and_exits_with_the_first(simulator, tmp_path):
    environ = dict(simulator.settings_env()) | {"DB_CONNECTION_STRING": f"sqlite:///{tmp_path / 'none.db'}"}
    result = run_cli(["run-smoke"], environ=environ, cwd=tmp_path)
    assert result.code == 3  # test-db's, the first to fail
    assert "PASS: Token" in result.out  # test-endpoint still ran
    assert "run-smoke: test-db FAILED (exit 3); test-endpoint passed; test-schema FAILED (exit 3)" in result.out


# -- (d) d2i-csc-api ------------------------------------------------------------------------------------------


def test_d2i_csc_api_is_declared_as_the_same_program():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11 and later
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]["scripts"]
    assert scripts["d2i-csc-api"] == scripts["csc-api-pipeline"] == "api_pipeline.cli.main:main"


@pytest.mark.parametrize(
    "argv",
    [["--help"], ["test-db-connection"], ["test-schema"], ["run-smoke"], ["run"], []],
    ids=["--help", "test-db-connection", "test-schema", "run-smoke", "run", "no command"],
)
def test_the_earlier_readmes_d2i_csc_api_commands_work(db_path, tmp_path, argv):
    """The earlier README's ``d2i-csc-api run``, ``test-db-connection``, ``test-schema`` and ``--help``."""
    script = shutil.which("d2i-csc-api")
    if script is None:
        pytest.skip("d2i-csc-api not installed (pip install -e . to test it)")
    (tmp_path / ".env").write_text(f"DB_CONNECTION_STRING=sqlite:///{db_path.as_posix()}\n", encoding="utf-8")
    result = subprocess.run([script, *argv], capture_output=True, text=True, cwd=tmp_path, timeout=60)
    if argv == ["--help"]:
        assert result.returncode == 0 and "run-smoke" in result.stdout
    elif argv in (["test-db-connection"], ["test-schema"]):
        assert result.returncode == 0, result.stderr
    else:  # run, run-smoke and no command need DfE's settings: each is named
        assert result.returncode == 2 and "API_ENDPOINT: not set" in result.stderr, result.stderr


def test_python_m_api_pipeline_is_the_same_program_too(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "api_pipeline", "run-smoke", "--help"], capture_output=True, text=True, cwd=REPO
    )
    assert result.returncode == 0 and "test-db, test-endpoint and test-schema" in result.stdout


# -- (e) an invalid record's reason says what is allowed, where the schema says it ---------------------------

ETHNICITY_CODES = [f"E{n:03d}" for n in range(30)]  # a code list longer than a reason lists


def schema_with_code_lists(tmp_path: Path) -> Path:
    """DfE's schema as bundled, with code lists for sex and ethnicity, as a newer DfE schema might have."""
    from api_pipeline.dfe.schema import load_bundled_schema

    schema = load_bundled_schema()
    details = schema["properties"]["child_details"]["properties"]
    details["sex"]["enum"] = ["M", "F", "U"]
    details["ethnicity"]["enum"] = ETHNICITY_CODES
    path = tmp_path / "openapi-with-code-lists.json"
    path.write_text(json.dumps(schema), encoding="utf-8")
    return path


def test_an_invalid_records_reason_lists_the_allowed_values_the_length_and_the_date_form(simulator, db_path, tmp_path):
    children = list(make_children(4, seed=253))
    children[0]["child_details"]["sex"] = "Female"
    children[1]["child_details"]["ethnicity"] = "ZZZZ"
    children[2]["child_details"]["date_of_birth"] = "01/02/2015"
    insert(db_path, children)
    environ = (
        dict(simulator.settings_env()) | db_env(db_path) | {"PAYLOAD_SCHEMA": str(schema_with_code_lists(tmp_path))}
    )

    checked = run_cli(["validate"], environ=environ, cwd=tmp_path)
    assert checked.code == 1
    assert re.search(r"^problem +rows +example row ids$", checked.out, re.M), checked.out  # the staging table's id

    assert run_cli(["run"], environ=environ, cwd=tmp_path).code == 1
    reasons = {row["person_id"]: row["api_response"] for row in rows(db_path)}
    sex, ethnicity, born = (reasons[child["la_child_id"]] for child in children[:3])
    assert 'child_details.sex: a value is not one of those allowed: "M", "F", "U"' in sex
    assert "child_details.sex: a value is longer than 1 character" in sex and "1 characters" not in sex
    listed = ", ".join(f'"{code}"' for code in ETHNICITY_CODES[:12])
    assert f"child_details.ethnicity: a value is not one of those allowed: {listed} and 18 more (see the schema)" in (
        ethnicity
    )
    assert "child_details.date_of_birth: a value is not a valid date (YYYY-MM-DD)" in born
    for text in (sex, ethnicity, born):  # what is allowed, never what the record held
        assert "Female" not in text and "ZZZZ" not in text and "01/02/2015" not in text


# -- (f) a lock kept by a process on this computer says so, and when it is free -----------------------------


def test_a_lock_held_on_this_computer_says_its_process_is_running_and_is_free_once_it_ends(
    simulator, db_path, tmp_path
):
    """A run that crashed leaves its lock; straight after, on the same computer, its process may
    still be there (the one-file exe's second process, or another program given its id)."""
    from api_pipeline.store.db import Database
    from api_pipeline.store.lock import RunLock

    insert(db_path, list(make_children(3, seed=254)))
    still_there = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        with Database.open_sqlite(db_path) as db:
            crashed = RunLock(db, "ssd_api_data_staging", run_id="crashed")
            crashed.holder = f"{socket.gethostname()} pid {still_there.pid} run crashed"
            crashed.acquire()  # and never released
        environ = dict(simulator.settings_env()) | db_env(db_path)
        refused = run_cli(["run"], environ=environ, cwd=tmp_path)
        assert refused.code == 6
        assert f"Its process, pid {still_there.pid}, is still running on this computer" in refused.err
        assert "takes the lock over as soon as that process has ended" in refused.err
        assert "If that run crashed" not in refused.err
    finally:
        still_there.kill()
        still_there.wait(10)
    taken = run_cli(["run", "--log-dir", str(tmp_path / "after")], environ=environ, cwd=tmp_path)
    assert taken.code == 0, taken.err
    (log_file,) = (tmp_path / "after").glob("*.log")
    assert "took over the run lock" in log_file.read_text(encoding="utf-8")  # at once, its process gone


def test_a_lock_held_on_another_computer_still_expires_after_its_silence(simulator, db_path, tmp_path):
    from api_pipeline.store.db import Database
    from api_pipeline.store.lock import RunLock

    insert(db_path, list(make_children(1, seed=255)))
    with Database.open_sqlite(db_path) as db:
        elsewhere = RunLock(db, "ssd_api_data_staging", run_id="elsewhere")
        elsewhere.holder = "otherhost pid 7 run elsewhere"
        elsewhere.acquire()
    refused = run_cli(["run"], environ=dict(simulator.settings_env()) | db_env(db_path), cwd=tmp_path)
    assert refused.code == 6
    assert "If that run crashed, its lock expires 60 minutes after its last activity." in refused.err
    assert "still running on this computer" not in refused.err
