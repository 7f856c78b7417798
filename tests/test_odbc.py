"""ODBC connection strings, driver choice and error messages (api_pipeline.odbc).

The error shapes are the ones pyodbc raises: ``pyodbc.Error(sqlstate, message)``,
with the driver's message as SQL Server's drivers and psqlODBC write it. The
PostgreSQL ones are also triggered for real in test_postgres.py.
"""

from __future__ import annotations

import sys

import pytest

from api_pipeline.db import Database
from api_pipeline.errors import DatabaseError
from api_pipeline.odbc import (
    PSQLODBC_DEFAULTS,
    OdbcContext,
    choose_sql_server_driver,
    explain_odbc_error,
    is_microsoft_sql_driver,
    odbc_value,
    parse_odbc_string,
    with_psqlodbc_defaults,
)

pyodbc = pytest.importorskip("pyodbc", reason="pyodbc cannot be loaded: install unixODBC (apt-get install unixodbc)")


def explain(state: str, message: str, **context) -> str:
    """The message a council officer sees for this pyodbc error."""
    return str(explain_odbc_error(pyodbc.Error(state, message), OdbcContext(**context)))


# ---------------------------------------------------------------------------
# Connection strings and drivers
# ---------------------------------------------------------------------------


def test_parse_odbc_string_handles_braces_spaces_and_case():
    text = "Driver={ODBC Driver 18 for SQL Server}; SERVER=sql01\\LIVE;Database=HDM;PWD={a;b}}c};Trusted_Connection=yes"
    pairs = parse_odbc_string(text)
    assert odbc_value(pairs, "DRIVER") == "ODBC Driver 18 for SQL Server"
    assert odbc_value(pairs, "server") == "sql01\\LIVE"
    assert odbc_value(pairs, "Pwd") == "a;b}c"
    assert odbc_value(pairs, "trusted_connection") == "yes"
    assert odbc_value(pairs, "UID") is None


@pytest.mark.parametrize(
    ("installed", "chosen"),
    [
        (
            ["ODBC Driver 17 for SQL Server", "ODBC Driver 18 for SQL Server", "FreeTDS"],
            "ODBC Driver 18 for SQL Server",
        ),
        (["SQL Server", "ODBC Driver 17 for SQL Server", "FreeTDS"], "ODBC Driver 17 for SQL Server"),
        (["FreeTDS", "PostgreSQL Unicode"], "FreeTDS"),
        (["SQL Server", "SQL Server Native Client 11.0", "ODBC Driver 13 for SQL Server"], None),
        ([], None),
    ],
)
def test_newest_sql_server_driver_is_chosen(installed, chosen):
    assert choose_sql_server_driver(installed) == chosen


def test_fast_executemany_only_for_microsoft_drivers():
    assert is_microsoft_sql_driver("msodbcsql18.dll") and is_microsoft_sql_driver("libmsodbcsql-17.10.so.6.1")
    assert not is_microsoft_sql_driver("libtdsodbc.so") and not is_microsoft_sql_driver("psqlodbcw.so")
    assert not is_microsoft_sql_driver("sqlite3odbc.so")


def test_psqlodbc_defaults_are_added_only_when_missing():
    text = "Driver={PostgreSQL Unicode};Server=db;Database=csc;Uid=u;Pwd=p;usedeclarefetch=0"
    tuned = with_psqlodbc_defaults(text)
    pairs = parse_odbc_string(tuned)
    assert odbc_value(pairs, "UseDeclareFetch") == "0"  # the council's own choice stands
    for key, value in PSQLODBC_DEFAULTS:
        if key != "UseDeclareFetch":
            assert odbc_value(pairs, key) == value
    assert with_psqlodbc_defaults(tuned) == tuned


def test_a_missing_pyodbc_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "pyodbc", None)  # import pyodbc -> ImportError
    with pytest.raises(DatabaseError) as caught:
        Database.connect("DRIVER={ODBC Driver 18 for SQL Server};SERVER=s;DATABASE=d;Trusted_Connection=yes;")
    assert "unixODBC" in str(caught.value) and "pip install csc-api-pipeline" in str(caught.value)
    assert "exe" in str(caught.value)


def test_sqlite_never_imports_pyodbc(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "pyodbc", None)
    with Database.connect(f"sqlite:///{(tmp_path / 'x.db').as_posix()}") as db:
        assert db.scalar("SELECT 1") == 1


def test_the_demo_runs_where_pyodbc_cannot_load(monkeypatch, tmp_path):
    """pyodbc is a dependency, but a machine with no ODBC driver manager cannot load it: the
    demo (SQLite) must not need it."""
    from conftest import run_cli

    monkeypatch.setitem(sys.modules, "pyodbc", None)
    result = run_cli(["demo", "--children", "20", "--dir", str(tmp_path / "demo")], cwd=tmp_path)
    assert result.code == 0, result.out + result.err


def test_no_sql_server_driver_installed_lists_what_is(monkeypatch):
    class NoDrivers:
        Error = pyodbc.Error

        @staticmethod
        def drivers():
            return ["PostgreSQL Unicode", "SQLite3"]

    with pytest.raises(DatabaseError) as caught:
        Database.open_odbc("SERVER=sql01;DATABASE=HDM;Trusted_Connection=yes;", odbc=NoDrivers())
    message = str(caught.value)
    assert "ODBC Driver 18 for SQL Server" in message and "PostgreSQL Unicode, SQLite3" in message


# ---------------------------------------------------------------------------
# Error messages from real error shapes
# ---------------------------------------------------------------------------

MS18 = "[Microsoft][ODBC Driver 18 for SQL Server]"


def test_login_failed_with_integrated_security_names_the_windows_account(monkeypatch):
    monkeypatch.setattr("api_pipeline.odbc.process_identity", lambda: "CORP\\svc_csc")
    text = explain(
        "28000",
        f"[28000] {MS18}[SQL Server]Login failed for user 'CORP\\svc_csc'. (18456) (SQLDriverConnect)",
        integrated=True,
    )
    assert "CORP\\svc_csc" in text and "Task Scheduler" in text and "Run as" in text
    assert "SQLSTATE 28000" in text and "18456" in text


def test_login_failed_with_a_sql_login_never_shows_the_password():
    context = OdbcContext.from_string("DRIVER={ODBC Driver 18 for SQL Server};SERVER=s;UID=csc_app;PWD=S3cret!pw;")
    error = pyodbc.Error(
        "28000",
        f"[28000] {MS18}[SQL Server]Login failed for user 'csc_app'. (18456) (SQLDriverConnect); "
        "connection string was PWD=S3cret!pw",
    )
    text = str(explain_odbc_error(error, context))
    assert "'csc_app'" in text and "UID and PWD" in text
    assert "S3cret!pw" not in text


def test_driver_not_installed_on_windows_and_linux_lists_installed_drivers():
    installed = lambda: ["SQL Server", "ODBC Driver 17 for SQL Server"]  # noqa: E731
    windows = explain(
        "IM002",
        "[IM002] [Microsoft][ODBC Driver Manager] Data source name not found and no default driver specified "
        "(0) (SQLDriverConnect)",
        driver="ODBC Driver 18 for SQL Server",
        installed_drivers=installed,
    )
    linux = explain(
        "01000",
        "[01000] [unixODBC][Driver Manager]Can't open lib 'ODBC Driver 18 for SQL Server' : file not found "
        "(0) (SQLDriverConnect)",
        driver="ODBC Driver 18 for SQL Server",
        installed_drivers=installed,
    )
    for text in (windows, linux):
        assert "is not installed" in text and "SQL Server, ODBC Driver 17 for SQL Server" in text
    dsn = explain("IM002", "[IM002] [unixODBC][Driver Manager]Data source name not found (0)", dsn="CSC_LIVE")
    assert "DSN" in dsn and "CSC_LIVE" in dsn


@pytest.mark.parametrize(
    "message",
    [
        # Linux (OpenSSL) and Windows (Schannel) wordings of Driver 18's certificate check.
        f"[08001] {MS18}SSL Provider: [error:0A000086:SSL routines::certificate verify failed:unable to get local "
        "issuer certificate] (-1) (SQLDriverConnect)",
        f"[08001] {MS18}SSL Provider: The certificate chain was issued by an authority that is not trusted.\r\n "
        f"(-2146893019) (SQLDriverConnect); [08001] {MS18}Client unable to establish connection (-2146893019)",
    ],
)
def test_driver_18_certificate_error_explains_both_fixes(message):
    text = explain("08001", message)
    assert "TrustServerCertificate=yes" in text and "Trusted Root" in text and "Driver 18" in text
    assert "cannot reach" not in text


def test_database_not_found_wins_over_the_login_failure_that_follows_it():
    text = explain(
        "42000",
        f'[42000] {MS18}[SQL Server]Cannot open database "HDM_Locl" requested by the login. The login failed. '
        f"(4060) (SQLDriverConnect); [28000] {MS18}[SQL Server]Login failed for user 'CORP\\svc'. (18456)",
    )
    assert "database HDM_Locl was not found" in text and "DATABASE=" in text


def test_table_not_found():
    text = explain(
        "42S02",
        f"[42S02] {MS18}[SQL Server]Invalid object name 'ssd_api_data_staging'. (208) (SQLExecDirectW)",
    )
    assert "table ssd_api_data_staging was not found" in text and "TABLE_NAME" in text


@pytest.mark.parametrize(
    ("native", "message"),
    [
        (229, "The UPDATE permission was denied on the object 'ssd_api_data_staging', database 'HDM', schema 'dbo'."),
        (230, "The SELECT permission was denied on the column 'json_payload' of the object 'ssd_api_data_staging'."),
        (262, "CREATE TABLE permission denied in database 'HDM'."),
    ],
)
def test_permission_denied(native, message):
    text = explain("42000", f"[42000] {MS18}[SQL Server]{message} ({native}) (SQLExecDirectW)")
    assert "lacks a permission" in text and "UPDATE" in text and str(native) in text


def test_value_too_long_never_echoes_the_value():
    text = explain(
        "22001",
        f"[22001] {MS18}[SQL Server]String or binary data would be truncated in table 'HDM.dbo.ssd_api_data_staging',"
        " column 'api_response'. Truncated value: 'rejected by DfE: Zoë O'Brien...'. (2628) (SQLExecDirectW)",
    )
    assert "too long" in text and "test-schema" in text
    assert "Zoë" not in text and "Truncated value" not in text


@pytest.mark.parametrize(
    ("state", "message"),
    [
        (
            "08001",
            f"[08001] {MS18}TCP Provider: Error code 0x2749 (10057) (SQLDriverConnect); [08001] {MS18}A network-related"
            " or instance-specific error has occurred while establishing a connection to SQL Server. (10057)",
        ),
        ("HYT00", f"[HYT00] {MS18}Login timeout expired (0) (SQLDriverConnect)"),
    ],
)
def test_server_unreachable(state, message):
    assert "cannot reach the database server" in explain(state, message)


@pytest.mark.parametrize(
    ("state", "message", "expected"),
    [
        (
            "08001",
            '[08001] connection to server at "db", port 5432 failed: FATAL:  password authentication failed for user '
            '"csc"\n (101) (SQLDriverConnect)',
            "refused the login for user 'csc'",
        ),
        (
            "08001",
            '[08001] connection to server at "db", port 5432 failed: FATAL:  database "csc_live" does not exist\n '
            "(101) (SQLDriverConnect)",
            "database csc_live was not found",
        ),
        ("28P01", '[28P01] FATAL: password authentication failed for user "csc"', "refused the login"),
        ("3D000", '[3D000] FATAL: database "x" does not exist', "database x was not found"),
        (
            "42P01",
            '[42P01] ERROR: relation "ssd_development.staging" does not exist;\nError while executing the query (1)',
            "table ssd_development.staging was not found",
        ),
        ("42501", "[42501] ERROR: permission denied for table staging;\nError while executing the query (1)", "lacks"),
        (
            "08001",
            '[08001] connection to server at "127.0.0.1", port 5999 failed: Connection refused\n\tIs the server '
            "running on that host and accepting TCP/IP connections?\n (101) (SQLDriverConnect)",
            "cannot reach the database server",
        ),
        ("3F000", '[3F000] ERROR: schema "ssd_dev" does not exist;\nError while executing the query (1)', "schema"),
    ],
)
def test_postgresql_error_shapes(state, message, expected):
    assert expected in explain(state, message)


def test_unrecognised_errors_keep_the_drivers_first_line_only():
    text = explain(
        "23505",
        '[23505] ERROR: duplicate key value violates unique constraint "ux_person"\nDETAIL:  Key (person_id)=(C1) '
        "already exists.;\nError while executing the query (1) (SQLExecDirectW)",
    )
    assert "duplicate key value violates unique constraint" in text and "DETAIL" not in text


def test_braced_passwords_with_escaped_braces_are_masked_whole():
    from api_pipeline.logs import mask_text

    text = "Driver={PostgreSQL Unicode};Server=db;Uid=csc;Pwd={pa;ss}}word-Do-Not-Show};Database=csc"
    masked = mask_text(text)
    assert "Do-Not-Show" not in masked and "pa;ss" not in masked
    assert masked.endswith(";Database=csc")
