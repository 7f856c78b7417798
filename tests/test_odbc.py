"""ODBC connection strings, driver choice and error messages (api_pipeline.store.odbc).

The error shapes are the ones pyodbc raises: ``pyodbc.Error(sqlstate, message)``,
with the driver's message as SQL Server's drivers and psqlODBC write it. The
PostgreSQL ones are also triggered for real in test_postgres.py.
"""

from __future__ import annotations

import hashlib
import re
import struct
import sys
from datetime import datetime

import pytest

from api_pipeline.errors import DatabaseError
from api_pipeline.store.db import Database
from api_pipeline.store.odbc import (
    CONFLICT,
    CONNECTION_LOST,
    KEY_VIOLATION,
    LOCK_TIMEOUT,
    PSQLODBC_DEFAULTS,
    UNREACHABLE,
    OdbcContext,
    UnreadableText,
    choose_sql_server_driver,
    decode_datetimeoffset,
    decode_wide_text,
    for_freetds,
    is_microsoft_sql_driver,
    odbc_value,
    parse_odbc_string,
    utf16_digest,
    with_psqlodbc_defaults,
)
from api_pipeline.store.odbc_errors import explain_odbc_error, without_values

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
    monkeypatch.setattr("api_pipeline.store.odbc.process_identity", lambda: "CORP\\svc_csc")
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
    from api_pipeline.settings.masking import mask_secrets

    text = "Driver={PostgreSQL Unicode};Server=db;Uid=csc;Pwd={pa;ss}}word-Do-Not-Show};Database=csc"
    masked = mask_secrets(text)
    assert "Do-Not-Show" not in masked and "pa;ss" not in masked
    assert masked.endswith(";Database=csc")


# ---------------------------------------------------------------------------
# Issue 18: Driver 18's certificate checks, Integrated Security, deadlocks, lock
# time-outs and duplicate keys, in Microsoft's and PostgreSQL's own words
# ---------------------------------------------------------------------------

UNTRUSTED = (
    f"[08001] {MS18}SSL Provider: The certificate chain was issued by an authority that is not trusted.\r\n "
    f"(-2146893019) (SQLDriverConnect); [08001] {MS18}Client unable to establish connection (-2146893019)"
)
WRONG_NAME = (
    f"[08001] {MS18}SSL Provider: The target principal name is incorrect.\r\n (-2146893022) (SQLDriverConnect); "
    f"[08001] {MS18}Client unable to establish connection (-2146893022)"
)
WRONG_NAME_LINUX = (
    f"[08001] {MS18}SSL Provider: [error:0A000086:SSL routines::certificate verify failed:subject name does not "
    "match host name] (-1) (SQLDriverConnect)"
)
USER_SERVER_STRING = "DRIVER={ODBC Driver 18 for SQL Server};SERVER=sql01;DATABASE=HDM_Local;Trusted_Connection=yes;"


@pytest.mark.parametrize("message", [WRONG_NAME, WRONG_NAME_LINUX])
def test_certificate_name_mismatch_is_a_certificate_problem_not_a_firewall(message):
    """'The target principal name is incorrect.' has no word 'certificate' in it."""
    context = OdbcContext.from_string("DRIVER={ODBC Driver 18 for SQL Server};SERVER=sql01;DATABASE=HDM;UID=u;PWD=p;")
    text = str(explain_odbc_error(pyodbc.Error("08001", message), context))
    assert "does not name the server as SERVER= gives it (sql01)" in text
    assert "full name" in text and "HostnameInCertificate=" in text and "TrustServerCertificate=yes" in text
    assert "identity is not checked" in text  # the risk, said
    assert "cannot reach" not in text and "firewall" not in text


def test_untrusted_certificate_explains_the_fixes_and_the_risk():
    text = explain("08001", UNTRUSTED)
    assert "not trusted" in text and "self-signed" in text and "Trusted Root" in text
    assert "TrustServerCertificate=yes" in text and "identity is not checked" in text
    assert "DB_CONNECTION_STRING=" not in text  # the council wrote its own string: it edits that


@pytest.mark.parametrize("message", [UNTRUSTED, WRONG_NAME])
def test_driver_the_tool_chose_gets_the_whole_line_to_put_in_env(message):
    """USER_SERVER + USER_DATABASE: the council never set DB_CONNECTION_STRING, so it is given the line."""
    context = OdbcContext.from_string(USER_SERVER_STRING, driver_chosen=True, setting="USER_SERVER")
    text = str(explain_odbc_error(pyodbc.Error("08001", message), context))
    line = re.search(r"DB_CONNECTION_STRING=(.+)$", text.split(" (the driver said")[0])
    assert line is not None, text
    assert line.group(1) == USER_SERVER_STRING + "TrustServerCertificate=yes;"
    assert "in place of USER_SERVER and USER_DATABASE" in text and "chose ODBC Driver 18" in text


def test_the_printed_line_never_shows_a_password():
    context = OdbcContext.from_string("SERVER=sql01;DATABASE=HDM;UID=csc;PWD={S3cr;et};", driver_chosen=True)
    text = str(explain_odbc_error(pyodbc.Error("08001", UNTRUSTED), context))
    assert "S3cr" not in text and ";PWD=<hidden>;TrustServerCertificate=yes;" in text


def test_integrated_security_sspi_is_explained_as_the_odbc_keyword_it_is_not():
    """Microsoft's ODBC driver ignores Integrated Security=SSPI and tries an SQL login with no user."""
    context = OdbcContext.from_string(
        "DRIVER={ODBC Driver 18 for SQL Server};SERVER=sql01;DATABASE=HDM;Integrated Security=SSPI;"
    )
    assert not context.integrated
    error = pyodbc.Error("28000", f"[28000] {MS18}[SQL Server]Login failed for user ''. (18456) (SQLDriverConnect)")
    text = str(explain_odbc_error(error, context))
    assert "Integrated Security" in text and "replace it with Trusted_Connection=yes" in text
    assert "create a login" not in text


DEADLOCK = (
    f"[40001] {MS18}[SQL Server]Transaction (Process ID 52) was deadlocked on lock resources with another process "
    "and has been chosen as the deadlock victim. Rerun the transaction. (1205) (SQLExecDirectW)"
)


@pytest.mark.parametrize(
    ("state", "message", "kind"),
    [
        ("40001", DEADLOCK, CONFLICT),
        ("40P01", "[40P01] ERROR: deadlock detected;\nError while executing the query (1)", CONFLICT),
        (
            "40001",
            "[40001] ERROR: could not serialize access due to concurrent update;\nError while executing the query (1)",
            CONFLICT,
        ),
        (
            "HY000",
            f"[HY000] {MS18}[SQL Server]Lock request time out period exceeded. (1222) (SQLExecDirectW)",
            LOCK_TIMEOUT,
        ),
        (
            "HYT00",
            f"[HYT00] {MS18}[SQL Server]Lock request time out period exceeded. (1222) (SQLExecDirectW)",
            LOCK_TIMEOUT,
        ),
        (
            "55P03",
            "[55P03] ERROR: canceling statement due to lock timeout;\nError while executing the query (1)",
            LOCK_TIMEOUT,
        ),
        (
            "23000",
            f"[23000] {MS18}[SQL Server]Violation of PRIMARY KEY constraint 'PK__ssd_api___lock'. Cannot insert "
            "duplicate key in object 'dbo.ssd_api_data_staging_run_lock'. The duplicate key value is "
            "(dbo.ssd_api_data_staging). (2627) (SQLExecDirectW)",
            KEY_VIOLATION,
        ),
        (
            "23000",
            f"[23000] {MS18}[SQL Server]Cannot insert duplicate key row in object 'dbo.lock' with unique index "
            "'ux_lock'. The duplicate key value is (x). (2601) (SQLExecDirectW)",
            KEY_VIOLATION,
        ),
        (
            "23505",
            '[23505] ERROR: duplicate key value violates unique constraint "t_run_lock_pkey";\nError while executing '
            "the query (1)",
            KEY_VIOLATION,
        ),
        # Babelfish through FreeTDS, as it answered (tests/test_babelfish.py): a deadlock is SQL Server's
        # 1205, a duplicate key 2627; a lock time-out is 33557097, its number for every error it has no
        # SQL Server number for, so it is known by PostgreSQL's words, never by that number.
        ("42000", "[42000] [FreeTDS][SQL Server]deadlock detected (1205) (SQLExecDirectW)", CONFLICT),
        (
            "42000",
            "[42000] [FreeTDS][SQL Server]canceling statement due to lock timeout (33557097) (SQLExecDirectW)",
            LOCK_TIMEOUT,
        ),
        (
            "23000",
            '[23000] [FreeTDS][SQL Server]duplicate key value violates unique constraint "t_run_lock_pkey" (2627) '
            "(SQLExecDirectW)",
            KEY_VIOLATION,
        ),
        (
            "42000",
            "[42000] [FreeTDS][SQL Server]The user does not have permission to perform this action (33557097) "
            "(SQLExecDirectW)",
            None,
        ),
        (
            "42000",
            '[42000] [FreeTDS][SQL Server]relation "t_run_lock" does not exist (33557097) (SQLExecDirectW)',
            None,
        ),
        # Not duplicates: a missing grant, a name too long for its column, a NULL in a NOT NULL column.
        (
            "42000",
            f"[42000] {MS18}[SQL Server]The INSERT permission was denied on the object 'ssd_api_data_staging_run_lock',"
            " database 'HDM', schema 'dbo'. (229) (SQLExecDirectW)",
            None,
        ),
        (
            "22001",
            f"[22001] {MS18}[SQL Server]String or binary data would be truncated in table 'HDM.dbo.x_run_lock', column "
            "'lock_name'. Truncated value: 'dbo.a_very_long'. (2628) (SQLExecDirectW)",
            None,
        ),
        ("23000", f"[23000] {MS18}[SQL Server]Cannot insert the value NULL into column 'holder'. (515)", None),
    ],
)
def test_deadlocks_lock_timeouts_and_duplicate_keys_are_told_apart(state, message, kind):
    error = explain_odbc_error(pyodbc.Error(state, message), OdbcContext())
    assert error.kind == kind
    text = str(error)
    assert "cannot reach" not in text
    if kind == CONFLICT:
        assert "deadlock" in text and "none of it was kept" in text
    if kind == LOCK_TIMEOUT:
        assert "lock time-out" in text and "staging SQL" in text


# A session that worked and went: the shapes drivers give. psqlODBC's are the ones the real server
# gives after pg_terminate_backend (test_db_faults.py); SQL Server's are the Microsoft driver's
# 08S01 "Communication link failure" after the server reset the socket (Windows' 10054), its
# connection-resiliency IMC06, and the error of a statement in a session a DBA KILLed (596).
LOST_SHAPES = [
    (
        "57P01",
        "[57P01] FATAL: terminating connection due to administrator command;\nThe connection has been lost (35) "
        "(SQLExecDirectW)",
    ),
    ("57P02", "[57P02] FATAL: terminating connection because of crash of another server process (35)"),
    ("08S01", "[08S01] SQLExecDirectW unable due to the connection lost (35) (SQLExecDirectW)"),
    ("HY000", "[HY000] The connection has been lost (1) (SQLEndTran)"),
    ("HY000", "[HY000] internal SAVEPOINT failed (8) (SQLExecDirectW)"),
    (
        "HY000",
        "[HY000] server closed the connection unexpectedly\n\tThis probably means the server terminated abnormally"
        "\n\tbefore or while processing the request.\n (26) (SQLExecDirectW)",
    ),
    (
        "08S01",
        f"[08S01] {MS18}TCP Provider: An existing connection was forcibly closed by the remote host.\r\n (10054) "
        f"(SQLExecDirectW); [08S01] {MS18}Communication link failure (10054)",
    ),
    (
        "IMC06",
        f"[IMC06] {MS18}The connection is broken and recovery is not possible. The connection is marked by the "
        "client driver as unrecoverable. No attempt was made to restore the connection. (0) (SQLExecDirectW)",
    ),
    (
        "HY000",
        f"[HY000] {MS18}[SQL Server]Cannot continue the execution because the session is in the kill state. (596) "
        "(SQLExecDirectW)",
    ),
]


@pytest.mark.parametrize(("state", "message"), LOST_SHAPES)
def test_a_connection_lost_during_the_run_is_not_a_wrong_address(state, message):
    error = explain_odbc_error(pyodbc.Error(state, message), OdbcContext(), connected=True)
    assert error.kind == CONNECTION_LOST
    text = str(error)
    assert text.startswith("the connection to the database server was lost while the run was working")
    assert "stay pending and are sent again next run" in text
    assert "SERVER=" not in text and "firewall" not in text


@pytest.mark.parametrize(
    ("state", "message"),
    [
        ("42P01", '[42P01] ERROR: relation "x" does not exist;\nError while executing the query (1)'),
        ("40P01", "[40P01] ERROR: deadlock detected;\nError while executing the query (1)"),
        ("23505", '[23505] ERROR: duplicate key value violates unique constraint "ux"; (1)'),
        ("HYT00", f"[HYT00] {MS18}Query timeout expired (0) (SQLExecDirectW)"),
    ],
)
def test_other_errors_on_an_open_connection_are_not_taken_for_a_lost_one(state, message):
    error = explain_odbc_error(pyodbc.Error(state, message), OdbcContext(), connected=True)
    assert error.kind != CONNECTION_LOST
    assert "cannot reach" not in str(error) and "was lost" not in str(error)


def test_a_connection_that_never_opened_keeps_the_advice_about_the_address():
    message = f"[08S01] {MS18}TCP Provider: An existing connection was forcibly closed by the remote host. (10054)"
    error = explain_odbc_error(pyodbc.Error("08S01", message), OdbcContext())
    assert error.kind == UNREACHABLE and "Check SERVER=" in str(error) and "was lost" not in str(error)


@pytest.mark.parametrize(
    "message",
    [
        '[08001] connection to server at "db" (10.0.0.5), port 5432 failed: FATAL:  the database system is starting '
        "up\n (101) (SQLDriverConnect)",
        '[08001] connection to server at "db", port 5432 failed: FATAL:  the database system is shutting down (101)',
    ],
)
def test_a_server_starting_or_stopping_says_so(message):
    error = explain_odbc_error(pyodbc.Error("08001", message), OdbcContext())
    assert error.kind == UNREACHABLE
    assert "starting up or shutting down" in str(error) and "Check SERVER=" not in str(error)


def test_pyodbcs_own_unsupported_type_error_names_datetimeoffset():
    """pyodbc raises its own errors as (message, SQLSTATE), the other way round from the driver's."""
    error = pyodbc.ProgrammingError("ODBC SQL type -155 is not yet supported.  column-index=3  type=-155", "HY106")
    text = str(explain_odbc_error(error, OdbcContext()))
    assert "datetimeoffset" in text and "test-schema" in text and "SQLSTATE HY106" in text


# ---------------------------------------------------------------------------
# Output converters: what pyodbc hands them is the driver's raw bytes
# ---------------------------------------------------------------------------


def lone_surrogate_text() -> tuple[bytes, str]:
    """UTF-16LE as SQL Server stores an NVARCHAR with half an emoji (LEFT() cut 🙂 = D83D DE42)."""
    good = '{"first_name": "Zoë 🙂", "surname": "QQ"}'
    raw = good.encode("utf-16-le").replace("QQ".encode("utf-16-le"), b"\x3d\xd8" + "Q".encode("utf-16-le"))
    return raw, good


def test_a_lone_surrogate_is_what_pyodbcs_strict_decoding_cannot_read():
    raw, _ = lone_surrogate_text()
    with pytest.raises(UnicodeDecodeError):
        raw.decode("utf-16-le")  # what pyodbc does without a converter: not a database error


def test_the_wide_text_converter_keeps_the_text_readable_and_marks_it():
    raw, good = lone_surrogate_text()
    text = decode_wide_text(raw)
    assert isinstance(text, UnreadableText)
    assert text == good.replace("QQ", "\ufffdQ")
    assert text.encode("utf-8")  # readable: prints, logs and encodes
    # Where, in UTF-16 code units: what SUBSTRING() counts in NVARCHAR (🙂 is two of them).
    assert text.position == len(good[: good.index("QQ")].encode("utf-16-le")) // 2 == good.index("QQ") + 1
    # Its hash is the stored bytes' hash, as HASHBYTES('SHA2_256', the NVARCHAR) gives it.
    assert text.digest == hashlib.sha256(raw).digest() == utf16_digest(text)
    assert utf16_digest(text) != utf16_digest(str(text))
    # Valid text is an ordinary str, hashed as SQL Server hashes NVARCHAR (UTF-16LE).
    fine = decode_wide_text(good.encode("utf-16-le"))
    assert type(fine) is str and fine == good
    assert utf16_digest(fine) == hashlib.sha256(good.encode("utf-16-le")).digest()
    assert utf16_digest(None) is None


def test_datetimeoffset_is_read_as_naive_utc():
    raw = struct.pack("<h5HI2h", 2026, 3, 1, 21, 4, 33, 120_000_000, 1, 0)  # 21:04:33.12 +01:00
    assert decode_datetimeoffset(raw) == datetime(2026, 3, 1, 20, 4, 33, 120_000)
    west = struct.pack("<h5HI2h", 2026, 3, 1, 21, 4, 33, 0, -5, -30)
    assert decode_datetimeoffset(west) == datetime(2026, 3, 2, 2, 34, 33)
    assert decode_datetimeoffset("2026-03-01 21:04:33 +01:00".encode("ascii")) == datetime(2026, 3, 1, 20, 4, 33)


# ---------------------------------------------------------------------------
# Issue 23.2: a driver's message may quote a value from a row; what the tool shows never does
# ---------------------------------------------------------------------------

PLANTED = "Bront\u00e9 O'Brien LEAKUPN000023"


@pytest.mark.parametrize(
    ("state", "message", "kept"),
    [
        (  # SQL Server 245
            "22018",
            f"[22018] {MS18}[SQL Server]Conversion failed when converting the nvarchar value '{PLANTED}' to data type "
            "int. (245) (SQLExecDirectW)",
            "converting the nvarchar value '…' to data type int",
        ),
        (  # SQL Server 2627: the key's value
            "23000",
            f"[23000] {MS18}[SQL Server]Violation of PRIMARY KEY constraint 'PK_ledger'. Cannot insert duplicate key "
            f"in object 'dbo.ssd_api_data_staging_ledger'. The duplicate key value is ({PLANTED}). (2627)",
            "Cannot insert duplicate key in object 'dbo.ssd_api_data_staging_ledger'",
        ),
        (  # SQL Server 13609, JSON_VALUE on a record that is not JSON
            "42000",
            f"[42000] {MS18}[SQL Server]JSON text is not properly formatted. Unexpected character '{PLANTED[0]}' is "
            "found at position 12. (13609) (SQLExecDirectW)",
            "Unexpected character '…' is found at position 12",
        ),
        (  # PostgreSQL 22P02
            "22P02",
            f'[22P02] ERROR: invalid input syntax for type integer: "{PLANTED}";\nError while executing the query (1)',
            'invalid input syntax for type integer: "…"',
        ),
        (  # PostgreSQL 22021, as psqlODBC gave it for a SQL_ASCII database (test_postgres.py): the bytes around
            "22021",
            '[22021] ERROR: invalid byte sequence for encoding "UTF8": 0xe9 0x20 0x4f;\nError while executing the '
            "query (1) (SQLExecDirectW)",
            'invalid byte sequence for encoding "UTF8"',
        ),
        (  # PostgreSQL's JSON errors: the token, and the record itself in CONTEXT
            "22P02",
            f'[22P02] ERROR: invalid input syntax for type json\nDETAIL:  Token "{PLANTED}" is invalid.\nCONTEXT:  '
            f'JSON data, line 1: {{"la_child_id": "{PLANTED}";\nError while executing the query (1)',
            "invalid input syntax for type json",
        ),
    ],
)
def test_a_drivers_message_never_shows_a_value_it_quotes(state, message, kept):
    text = explain(state, message)
    assert kept in text
    for part in (*PLANTED.split(), "0xe9", "0x4f", "Brien", "la_child_id"):
        assert part not in text


def test_driver_messages_lose_their_values_and_keep_the_names_that_say_what_to_fix():
    assert without_values(
        'Could not decode to UTF-8 column \'json_payload\' with text \'{"la_child_id": "C1", "first_name": "Bront'
    ) == ("Could not decode to UTF-8 column 'json_payload'")
    assert without_values('character with byte sequence 0x81 in encoding "WIN1252" has no equivalent') == (
        'character with byte sequence (bytes not shown) in encoding "WIN1252" has no equivalent'
    )
    for message in (
        'relation "ssd_development.ssd_api_data_staging" does not exist',
        "Invalid object name 'dbo.ssd_api_data_staging'.",
        "UNIQUE constraint failed: ssd_api_data_staging_ledger.la_child_id",
        'near "SELEC": syntax error',
        'connection to server at "db01", port 5432 failed',
        'The INSERT statement conflicted with the CHECK constraint "CK_status". The conflict occurred in database '
        '"HDM", table "dbo.t", column \'submission_status\'.',
    ):
        assert without_values(message) == message
    assert without_values("a value 'cut short") == "a value '…"


@pytest.mark.parametrize(
    ("given", "freetds_reads"),
    [
        ("DRIVER={FreeTDS};SERVER=s;UID={u};PWD={plain};", "DRIVER={FreeTDS};SERVER=s;UID={u};PWD={plain};"),
        ("DRIVER={FreeTDS};SERVER=s;UID={u};PWD={a}}b=c};", "DRIVER=FreeTDS;SERVER=s;UID=u;PWD=a}b=c;"),
        (
            "DRIVER={FreeTDS};SERVER=s;UID={u};PWD={a;b};TDS_Version=7.4;",
            "DRIVER={FreeTDS};SERVER=s;UID={u};PWD={a;b};TDS_Version=7.4;",
        ),
        ("DRIVER={FreeTDS};PWD={x}}};UID={p;q};", "DRIVER=FreeTDS;PWD=x};UID={p;q};"),
    ],
)
def test_values_with_a_closing_brace_are_given_to_freetds_as_every_version_reads_them(given, freetds_reads):
    """FreeTDS before 1.4 keeps '}}' as it is; unbraced, a value without ';' reads alike everywhere."""
    assert for_freetds(given) == freetds_reads
    assert dict(parse_odbc_string(for_freetds(given))) == dict(parse_odbc_string(given))


def test_a_value_freetds_versions_read_differently_is_refused_without_showing_it():
    with pytest.raises(DatabaseError) as refused:
        for_freetds("DRIVER={FreeTDS};SERVER=s;UID=u;PWD={se;cr}}et};")
    assert "PWD value" in str(refused.value) and "se;cr" not in str(refused.value)
