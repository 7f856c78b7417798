"""ODBC connection strings, driver choice and error messages, for SQL Server and PostgreSQL.

Pure text handling: nothing here imports pyodbc (``db.Database`` does, lazily).
The one function that turns ODBC error shapes (SQLSTATE + the driver's message)
into advice is :func:`explain_odbc_error`.
"""

from __future__ import annotations

import getpass
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from api_pipeline.errors import DatabaseError
from api_pipeline.logs import mask_text

FETCH_ROWS = 500  # rows per round trip when psqlODBC streams a result


def parse_odbc_string(text: str) -> list[tuple[str, str]]:
    """``KEY=value;KEY={va;lue}`` → [(key, value)]. A braced value may hold ``;``; ``}}`` is a ``}``."""
    pairs: list[tuple[str, str]] = []
    i, n = 0, len(text)
    while i < n:
        while i < n and text[i] in "; \t\r\n":
            i += 1
        if i >= n:
            break
        eq = text.find("=", i)
        if eq < 0:
            pairs.append((text[i:].strip(), ""))
            break
        key, j = text[i:eq].strip(), eq + 1
        while j < n and text[j] in " \t":
            j += 1
        if j < n and text[j] == "{":
            chars, k = [], j + 1
            while k < n:
                if text[k] == "}":
                    if text[k + 1 : k + 2] == "}":
                        chars.append("}")
                        k += 2
                        continue
                    break
                chars.append(text[k])
                k += 1
            value = "".join(chars)
            semi = text.find(";", k)
            i = n if semi < 0 else semi + 1
        else:
            semi = text.find(";", j)
            end = n if semi < 0 else semi
            value, i = text[j:end].strip(), end + 1
        pairs.append((key, value))
    return pairs


def odbc_value(pairs: Sequence[tuple[str, str]], *names: str) -> str | None:
    """The value of the first of ``names`` present (keys compare case-insensitively)."""
    wanted = {name.lower() for name in names}
    for key, value in pairs:
        if key.lower() in wanted:
            return value
    return None


def _append_odbc(text: str, extra: Sequence[tuple[str, str]]) -> str:
    return text.rstrip().rstrip(";") + ";" + "".join(f"{key}={value};" for key, value in extra)


SQL_SERVER_DRIVER_PREFERENCE = ("ODBC Driver 18 for SQL Server", "ODBC Driver 17 for SQL Server", "FreeTDS")
_MS_DRIVER = re.compile(r"^ODBC Driver (\d+) for SQL Server$", re.IGNORECASE)


def choose_sql_server_driver(installed: Sequence[str]) -> str | None:
    """The newest Microsoft ODBC driver (18, then 17, or newer), else FreeTDS; None when there is none."""
    microsoft = sorted(
        (int(m.group(1)), name) for name in installed if (m := _MS_DRIVER.match(name)) and int(m.group(1)) >= 17
    )
    if microsoft:
        return microsoft[-1][1]
    return next((name for name in installed if "freetds" in name.lower()), None)


def is_microsoft_sql_driver(driver_file: str) -> bool:
    """Microsoft's SQL Server drivers (msodbcsql17/18 files) are the ones proven with ``fast_executemany``."""
    return "msodbcsql" in driver_file.lower()


# psqlODBC settings applied when the connection string does not set them itself.
# pyodbc reads long values piecewise (SQLGetData), so TEXT and BYTEA come back whole
# whatever the driver says about them: tests/test_postgres.py proves 200 KB records and
# non-ASCII names round-trip, and that results stream. What each one is for:
PSQLODBC_DEFAULTS: tuple[tuple[str, str], ...] = (
    # Read results through a server-side cursor, Fetch rows at a time (inside the
    # implicit transaction that autocommit-off gives every read). Without it psqlODBC
    # loads the whole result into memory when the query runs: measured, 406 MB for the
    # first 10 rows of a 200 MB table, against 36 MB with it.
    ("UseDeclareFetch", "1"),
    ("Fetch", str(FETCH_ROWS)),
    # Describe TEXT as SQL_LONGVARCHAR (psqlODBC's default, pinned so a DSN that turned it
    # off cannot make TEXT a 255-character VARCHAR to anything that trusts descriptions) ...
    ("TextAsLongVarchar", "1"),
    # ... of up to 1 GB, TEXT's own limit, instead of 8190 characters: the size a caller
    # that allocates buffers from the description would cut a record to.
    ("MaxLongVarcharSize", "1073741823"),
    # Describe BYTEA (the hash columns) as long binary, like TEXT above. The 32-byte hashes
    # round-trip as bytes either way; this keeps a DSN's choice from changing that.
    ("ByteaAsLongVarBinary", "1"),
)
# Not set: UnknownSizes only changes the sizes described for expressions of unknown
# length, which nothing here reads.


def is_psqlodbc(driver: str | None) -> bool:
    name = (driver or "").lower()
    return "postgres" in name or "psqlodbc" in name


def with_psqlodbc_defaults(text: str) -> str:
    pairs = parse_odbc_string(text)
    missing = [(k, v) for k, v in PSQLODBC_DEFAULTS if odbc_value(pairs, k) is None]
    return _append_odbc(text, missing) if missing else text


def uses_integrated_security(pairs: Sequence[tuple[str, str]]) -> bool:
    trusted = (odbc_value(pairs, "Trusted_Connection") or "").lower() in ("yes", "true")
    integrated = (odbc_value(pairs, "Integrated Security") or "").lower() in ("sspi", "true", "yes")
    return trusted or integrated or (odbc_value(pairs, "Authentication") or "").lower() == "activedirectoryintegrated"


def process_identity() -> str:
    """The account this process runs as (``DOMAIN\\user`` on Windows): what integrated security logs in as."""
    if sys.platform == "win32":
        try:
            import ctypes

            secur32 = ctypes.windll.secur32  # type: ignore[attr-defined]
            size = ctypes.c_ulong(0)
            name_sam_compatible = 2
            secur32.GetUserNameExW(name_sam_compatible, None, ctypes.byref(size))
            buffer = ctypes.create_unicode_buffer(size.value or 256)
            if secur32.GetUserNameExW(name_sam_compatible, buffer, ctypes.byref(size)):
                return str(buffer.value)
        except (OSError, AttributeError, ValueError):
            pass
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no user name is not worth failing over
        return "(unknown account)"


@dataclass(frozen=True)
class OdbcContext:
    """What the error explanations may mention: never the password itself."""

    driver: str | None = None
    dsn: str | None = None
    user: str | None = None
    integrated: bool = False
    secrets: tuple[str, ...] = ()
    installed_drivers: Callable[[], Sequence[str]] | None = None

    @classmethod
    def from_string(cls, text: str, installed_drivers: Callable[[], Sequence[str]] | None = None) -> OdbcContext:
        pairs = parse_odbc_string(text)
        password = odbc_value(pairs, "PWD", "Password")
        return cls(
            driver=odbc_value(pairs, "DRIVER"),
            dsn=odbc_value(pairs, "DSN", "FILEDSN"),
            user=odbc_value(pairs, "UID", "User ID", "User", "Username"),
            integrated=uses_integrated_security(pairs),
            secrets=(password,) if password else (),
            installed_drivers=installed_drivers,
        )


_NATIVE_CODE = re.compile(r"\((-?\d+)\)")
_DIAG_PREFIX = re.compile(r"^\s*(?:\[[^\]]*\]\s*)+")
_DIAG_SUFFIX = re.compile(r"\s*(?:\(-?\d+\)\s*)?(?:\(SQL\w+\)\s*)?$")


def _driver_detail(message: str) -> str:
    """The driver's own words, first diagnostic record and line only, without prefixes or values."""
    first = message.split("; [", 1)[0]
    first = _DIAG_PREFIX.sub("", first)
    first = re.sub(r"^(?:ERROR|FATAL):\s+", "", first.strip())
    first = first.split("\n", 1)[0].strip().rstrip(";")
    first = _DIAG_SUFFIX.sub("", first)
    first = re.sub(r"(?i)truncated value: '.*", "", first)  # SQL Server 2628 quotes the (personal) value
    return first[:300]


def explain_odbc_error(exc: BaseException, context: OdbcContext | None = None) -> DatabaseError:
    """Turn a pyodbc error (SQLSTATE + the driver's message) into something a council officer can act on.

    The one place ODBC error shapes are recognised, for SQL Server's drivers and
    psqlODBC alike (psqlODBC reports every connection failure as 08001, so the
    server's words decide). Passwords are masked; record values never appear.
    """
    context = context or OdbcContext()
    args: tuple[Any, ...] = tuple(getattr(exc, "args", ()) or ())
    if len(args) >= 2:
        state, message = str(args[0]), str(args[1])
    else:
        message = str(args[0]) if args else str(exc)
        found = re.match(r"\s*\[(\w{5})\]", message)
        state = found.group(1) if found else ""
    natives = {int(code) for code in _NATIVE_CODE.findall(message)}
    lower = message.lower()
    detail = _driver_detail(message)
    numbers = "/".join(str(n) for n in sorted(natives - {0}))
    code = (f"SQLSTATE {state}" if state else "") + (f", native error {numbers}" if state and numbers else "")
    said = f" (the driver said: {detail}{'; ' + code if code else ''})"

    def named(*words: str) -> str:
        """The name the server put in quotes after one of ``words``: 'database "x"', "object name 'x'"."""
        for word in words:
            hit = re.search(word + r"""\s+["']([^"']+)["']""", message, re.IGNORECASE)
            if hit:
                return hit.group(1) + " "
        return ""

    if state == "IM002" or "can't open lib" in lower or "data source name not found" in lower:
        if context.dsn and not context.driver:
            text = (
                f"the ODBC data source (DSN) {context.dsn!r} named in DB_CONNECTION_STRING does not exist on this "
                "machine. Create it in 'ODBC Data Sources (64-bit)', or give DRIVER={...} and SERVER=... instead."
            )
        else:
            installed = ", ".join(context.installed_drivers()) if context.installed_drivers else ""
            text = (
                f"the ODBC driver {context.driver or '(none named)'!r} is not installed on this machine. "
                f"Installed ODBC drivers: {installed or 'none'}. Install Microsoft 'ODBC Driver 18 for SQL Server' "
                "(or psqlODBC for PostgreSQL), or name an installed one with DRIVER={...} in DB_CONNECTION_STRING."
            )
    elif "certificate" in lower and (
        "verify failed" in lower or "not trusted" in lower or "ssl provider" in lower or "principal name" in lower
    ):
        text = (
            "the SQL Server's TLS certificate is not trusted by this machine. ODBC Driver 18 encrypts connections "
            "and checks the server's certificate by default (Driver 17 did not). Either install the certificate "
            "authority that issued the server's certificate in this machine's Trusted Root store (recommended: "
            "ask your DBA or IT), or add TrustServerCertificate=yes to DB_CONNECTION_STRING (still encrypted, but "
            "the server's identity is not checked)."
        )
    elif 4060 in natives or state == "3D000" or re.search(r'database "[^"]*" does not exist', message):
        text = (
            f"the database {named('database')}was not found, or this login may not open it. Check DATABASE= in "
            "DB_CONNECTION_STRING (or USER_DATABASE), and that the login is a user in that database."
        )
    elif (
        state in ("28000", "28P01")
        or 18456 in natives
        or "login failed" in lower
        or "password authentication failed" in lower
        or "no pg_hba.conf entry" in lower
    ):
        login = re.search(r"(?i)(?:login failed for user|for user) ['\"]([^'\"]*)['\"]", message)
        user = login.group(1) if login else context.user or ""
        if context.integrated or "\\" in user:
            text = (
                f"the database refused the Windows login {user or process_identity()}. With integrated security "
                f"(Trusted_Connection=yes) the tool logs in as the account it runs as: {process_identity()} "
                "(under Task Scheduler, the task's 'Run as' account). Ask your DBA to create a login for that "
                "account with access to the database, or run the task as an account that has one."
            )
            if "anonymous logon" in lower:
                text += " 'ANONYMOUS LOGON' means Windows could not pass the account on (Kerberos delegation)."
        else:
            text = (
                f"the database refused the login for user {user!r}: check UID and PWD in DB_CONNECTION_STRING "
                "(the password is not shown here), and that the login is enabled and allowed to connect "
                "from this machine."
            )
    elif state == "3F000" or 2760 in natives or re.search(r'schema "[^"]*" does not exist', message):
        text = (
            f"the schema {named('schema', 'schema name')}does not exist (or this login may not use it). "
            "Check the part of TABLE_NAME before the dot, e.g. ssd_development.ssd_api_data_staging."
        )
    elif state in ("42S02", "42P01") or 208 in natives or "invalid object name" in lower:
        text = (
            f"the table {named('relation', 'object name')}was not found. Check TABLE_NAME (schema-qualify it if "
            "it is not in the login's default schema, e.g. ssd_development.ssd_api_data_staging), or create it: "
            "init-db."
        )
    elif (
        state == "42501"
        or natives & {229, 230, 262, 297, 300, 1088}
        or "permission denied" in lower
        or "permission was denied" in lower
    ):
        text = (
            "the login lacks a permission the tool needs. It needs SELECT and UPDATE on the staging table and "
            "SELECT, INSERT, UPDATE and DELETE on the tables beside it (ledger, run lock), and CREATE TABLE only "
            "to create them (or a DBA runs 'init-db --print')."
        )
    elif state == "22001" or natives & {2628, 8152}:
        text = "a value is too long for its column in the database. Run test-schema to see which column is too small."
    elif (
        state in ("08001", "08S01", "HYT00", "08004")
        or "connection refused" in lower
        or "could not translate host name" in lower
        or "timeout expired" in lower
        or "server was not found" in lower
    ):
        text = (
            "cannot reach the database server. Check SERVER= (and port) in DB_CONNECTION_STRING, that the "
            "server is running and accepts TCP/IP connections, and that no firewall is in the way."
        )
    else:
        text = "the database reported an error"
    return DatabaseError(mask_text(text + said, context.secrets))
