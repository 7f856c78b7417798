"""ODBC connection strings, driver choice and error messages, for SQL Server and PostgreSQL.

Pure text handling: nothing here imports pyodbc (``db.Database`` does, lazily).
The one function that turns ODBC error shapes (SQLSTATE + the driver's message)
into advice is :func:`explain_odbc_error`.
"""

from __future__ import annotations

import getpass
import hashlib
import re
import struct
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from api_pipeline.errors import DatabaseError
from api_pipeline.settings.masking import mask_secrets

FETCH_ROWS = 500  # rows per round trip when psqlODBC streams a result

# DatabaseError.kind: the failures a retry may cure, and the one the run lock needs to tell apart.
CONFLICT = "conflict"  # a deadlock victim or a serialization failure: the transaction was rolled back
LOCK_TIMEOUT = "lock_timeout"  # waited longer than the lock time-out for a lock another session holds
KEY_VIOLATION = "key_violation"  # a duplicate primary or unique key
# The connection worked, then the server ended the session or the network dropped it: whatever was
# not committed is gone, and a commit that was under way may or may not have happened.
CONNECTION_LOST = "connection_lost"
UNREACHABLE = "unreachable"  # no connection could be opened: the server did not answer, or is starting or stopping
# A text value could not be read as text: its bytes are not valid in the encoding they are said to
# be in (PostgreSQL refusing to send it, a driver's bytes that pyodbc cannot decode). The row it is
# in can still be found and read column by column (staging.StagingTable).
UNDECODABLE = "undecodable"

# ODBC SQL type codes of the columns read through output converters (ODBC specification; msodbcsql.h).
SQL_WCHAR, SQL_WVARCHAR, SQL_WLONGVARCHAR = -8, -9, -10
SQL_CHAR = 1  # pyodbc's setdecoding: every non-Unicode text type (CHAR, VARCHAR, LONGVARCHAR)
SQL_SS_TIMESTAMPOFFSET = -155  # SQL Server's datetimeoffset, which pyodbc cannot read by itself


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


def for_freetds(text: str) -> str:
    """The connection string as the FreeTDS ODBC driver reads it, or a DatabaseError when it cannot be.

    ODBC writes ``}`` inside a braced value as ``}}`` (``PWD={a}}b}`` is ``a}b``), and so does
    this tool when it adds DB_USER and DB_PASSWORD. FreeTDS before 1.4 (Debian 12 has 1.3) does
    not: it ends a braced value at the first ``};`` and keeps ``}}`` as it is, so a password with
    a ``}`` was refused as a failed login (found logging in to a real T-SQL server through FreeTDS,
    issue 24), each run one more failed attempt against the account. A value without ``;`` needs
    no braces, and every FreeTDS reads it alike; one with both ``;`` and ``}`` is read differently
    by FreeTDS 1.3 and 1.4, so it is refused before any attempt to log in.
    """
    pairs = parse_odbc_string(text)
    if not any("}" in value for _, value in pairs):
        return text
    parts = []
    for key, value in pairs:
        if "}" not in value:
            parts.append(f"{key}={{{value}}};" if ";" in value or value[:1] == "{" else f"{key}={value};")
        elif ";" not in value and value[:1] != "{" and value == value.strip():
            parts.append(f"{key}={value};")
        else:
            raise DatabaseError(
                f"the {key} value in the connection string holds both ';' and '}}', which the FreeTDS ODBC driver "
                "cannot be given so that every version of it reads the same value (1.3 and 1.4 differ), so the tool "
                "did not try to log in. Use a password without one of those two characters, or Microsoft's "
                "ODBC Driver 18 for SQL Server"
            )
    return "".join(parts)


def is_freetds_driver(driver_file: str) -> bool:
    """FreeTDS's ODBC driver (``libtdsodbc.so``; ``tdsodbc.dll`` on Windows), which Linux hosts use for SQL Server."""
    return "tdsodbc" in driver_file.lower()


# ---------------------------------------------------------------------------
# Reading text as stored. SQL Server's values come through output converters (pyodbc hands them
# the bytes the driver returns for the column read as SQL_C_BINARY: UTF-16LE for
# NCHAR/NVARCHAR/NTEXT, and SQL_SS_TIMESTAMPOFFSET_STRUCT for datetimeoffset); SQLite's text
# through the connection's text factory (db.Database), which gets the bytes the file holds.
# ---------------------------------------------------------------------------

UTF8, UTF16 = "UTF-8", "UTF-16"


class UnreadableText(str):
    """Text a column holds that is not valid in the encoding it is stored in, made readable.

    Each bad part reads as U+FFFD, so the value prints, logs and encodes, and nothing that reads
    it stops. It is never sent, nor bound back as text: ``raw`` is the bytes as stored (UTF-16LE
    as SQL Server's NVARCHAR holds them; on SQLite, what should have been UTF-8), which SQLite
    compares as they are, and ``digest`` their SHA-256, which is what
    ``HASHBYTES('SHA2_256', column)`` gives on SQL Server. ``position`` is where the first bad
    part starts, from 0: a character as SQL Server's SUBSTRING() counts them (UTF-16), or a byte
    (UTF-8).
    """

    raw: bytes
    position: int
    encoding: str

    @classmethod
    def of(cls, raw: bytes, encoding: str, error: UnicodeDecodeError) -> UnreadableText:
        codec = "utf-16-le" if encoding == UTF16 else "utf-8"
        text = cls(raw.decode(codec, "replace"))
        text.raw = raw
        text.encoding = encoding
        text.position = error.start // 2 if encoding == UTF16 else error.start
        return text

    @property
    def digest(self) -> bytes:
        return hashlib.sha256(self.raw).digest()


def decode_wide_text(raw: bytes) -> str:
    """NCHAR/NVARCHAR/NTEXT: pyodbc decodes strictly and stops the run on one lone surrogate."""
    try:
        return raw.decode("utf-16-le")
    except UnicodeDecodeError as exc:
        return UnreadableText.of(raw, UTF16, exc)


def decode_utf8_text(raw: bytes) -> str:
    """SQLite's TEXT: Python's sqlite3 decodes strictly, and one value that is not UTF-8 (a name
    saved as Windows-1252) fails the whole query, with the start of the value in its message."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return UnreadableText.of(raw, UTF8, exc)


def utf16_digest(text: str | None, encoding: str = "utf-16-le") -> bytes | None:
    """SHA-256 of ``text`` as SQL Server holds an NVARCHAR value: ``HASHBYTES('SHA2_256', ...)`` of it.

    ``encoding``: the bytes the server hashes (Babelfish hashes UTF-8; see ``Dialect.expected_text``).
    """
    if text is None:
        return None
    if isinstance(text, UnreadableText):
        return text.digest
    return hashlib.sha256(text.encode(encoding, "surrogatepass")).digest()


_OFFSET_STRUCT = struct.Struct("<h5HI2h")  # year, month, day, hour, minute, second, ns, tz hours, tz minutes


def decode_datetimeoffset(raw: bytes) -> datetime | str:
    """SQL Server's datetimeoffset as the naive UTC time the tool works in (pyodbc cannot read it)."""
    if len(raw) == _OFFSET_STRUCT.size:
        year, month, day, hour, minute, second, nanoseconds, tz_hours, tz_minutes = _OFFSET_STRUCT.unpack(raw)
        local = datetime(year, month, day, hour, minute, second, nanoseconds // 1000)
        return local - timedelta(hours=tz_hours, minutes=tz_minutes)
    text = raw.decode("utf-16-le" if b"\0" in raw else "ascii", "replace").strip()
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return text
    return parsed if parsed.tzinfo is None else parsed.astimezone(timezone.utc).replace(tzinfo=None)


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
    """Windows authentication as Microsoft's ODBC drivers understand it.

    ``Integrated Security=SSPI`` is not one of their keywords (it belongs to .NET and OLE DB
    connection strings): the driver ignores it and tries a SQL Server login with no user.
    """
    trusted = (odbc_value(pairs, "Trusted_Connection") or "").lower() in ("yes", "true")
    return trusted or (odbc_value(pairs, "Authentication") or "").lower() == "activedirectoryintegrated"


def _odbc_text(pairs: Sequence[tuple[str, str]]) -> str:
    """Pairs back into a connection string, the password replaced by a placeholder."""
    parts = []
    for key, value in pairs:
        if key.lower() in ("pwd", "password"):
            value = "<your password>"
        elif key.lower() == "driver" or any(c in value for c in ";{}") or value != value.strip():
            value = "{" + value.replace("}", "}}") + "}"
        parts.append(f"{key}={value};")
    return "".join(parts)


def process_identity() -> str:
    """The account this process runs as (``DOMAIN\\user`` on Windows): what integrated security logs in as."""
    if sys.platform == "win32":
        try:
            import ctypes  # Windows only

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
    server: str | None = None
    # "Integrated Security=..." without Trusted_Connection: a keyword the ODBC driver ignores.
    foreign_integrated: bool = False
    # The tool chose the driver (the string named none, as in the USER_SERVER + USER_DATABASE
    # form): the connection string it used, password hidden, to print as the line to put in .env.
    chosen_string: str | None = None
    # The setting the connection string came from: DB_CONNECTION_STRING, SQL_CONN_STR, or
    # USER_SERVER (with USER_DATABASE; see config.ConnectionString). Messages name it.
    setting: str = "DB_CONNECTION_STRING"

    @property
    def from_server_and_database(self) -> bool:
        """Built from the earlier tool's USER_SERVER and USER_DATABASE."""
        return self.setting == "USER_SERVER"

    def check(self, key: str, part: str) -> str:
        """Where to check ``key`` (SERVER=, DATABASE=): in the setting used, or its own setting ``part``."""
        return part if self.from_server_and_database else f"{key} in {self.setting}"

    # FreeTDS: the TDS protocol version the string asks for (TDS_Version=7.4), for test-db.
    tds_version: str | None = None

    @classmethod
    def from_string(
        cls,
        text: str,
        installed_drivers: Callable[[], Sequence[str]] | None = None,
        *,
        driver_chosen: bool = False,
        setting: str = "DB_CONNECTION_STRING",
    ) -> OdbcContext:
        pairs = parse_odbc_string(text)
        password = odbc_value(pairs, "PWD", "Password")
        integrated = uses_integrated_security(pairs)
        return cls(
            driver=odbc_value(pairs, "DRIVER"),
            dsn=odbc_value(pairs, "DSN", "FILEDSN"),
            user=odbc_value(pairs, "UID", "User ID", "User", "Username"),
            integrated=integrated,
            secrets=(password,) if password else (),
            installed_drivers=installed_drivers,
            server=odbc_value(pairs, "SERVER", "Address", "Addr"),
            foreign_integrated=not integrated and odbc_value(pairs, "Integrated Security") is not None,
            chosen_string=_odbc_text(pairs) if driver_chosen else None,
            setting=setting,
            tds_version=odbc_value(pairs, "TDS_Version"),
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
    return without_values(first)[:300]


# Where a driver's message goes on to quote a value it read or was given: everything from here
# on is dropped. Python's sqlite3 ("Could not decode to UTF-8 column 'x' with text '...'"), SQL
# Server's 2628 ("Truncated value: '...'") and 2627/2601 ("The duplicate key value is (...)"),
# PostgreSQL's DETAIL and CONTEXT lines ("Key (x)=(...)", "JSON data, line 1: ...") and JSON
# errors ('Token "..." is invalid').
_VALUE_FOLLOWS = re.compile(
    r"(?i)\s*(?:\bwith text\s*['\"]|\btruncated value\s*:|\bthe duplicate key value is\b|\bdetail:|\bcontext:"
    r"|\bjson data, line\b|\btoken\s*['\"]).*",
    re.DOTALL,
)
# Bytes quoted in hexadecimal: PostgreSQL's 'invalid byte sequence for encoding "UTF8": 0xe9 0x6e'
# shows the bytes around the bad one, which may be the letters of a name.
_BYTES = re.compile(r"\b0x[0-9A-Fa-f]{2}(?:\s+0x[0-9A-Fa-f]{2})*")
# The words after which a quoted name is an object's, not a value: 'column "x"', "table 'dbo.t'",
# 'for encoding "UTF8"', "Invalid object name 'x'", 'connection to server at "db"', "syntax error
# at or near "SELECT"" (the tool's own SQL, which holds no values).
_NAME_BEFORE = re.compile(
    r"(?i)\b(?:column|table|relation|database|schema|constraint|index|name|user|login|role|function|type|"
    r"encoding|sequence|trigger|view|procedure|statement|collation|operator|file|server|savepoint|cursor|"
    r"parameter|option|object|host|at|near)\s*$"
)


def without_values(message: str) -> str:
    """A database driver's message with any value it quotes from a row taken out.

    A driver may quote what it read or was given: SQL Server's "Conversion failed when converting
    the nvarchar value 'Smith' to data type int", PostgreSQL's 'invalid input syntax for type
    integer: "Smith"', Python's sqlite3 quoting the start of a record it cannot decode. Names of
    tables, columns, constraints and encodings stay (they say what to fix); anything else in
    quotes becomes '…', from its opening quote to the last quote of that kind in the message (a
    value may hold the quote itself: 'O'Brien'); hexadecimal bytes go too.
    """
    text = _BYTES.sub("(bytes not shown)", _VALUE_FOLLOWS.sub("", message))
    out: list[str] = []
    i = 0
    while i < len(text):
        quote = text[i]
        if quote not in "'\"":
            out.append(quote)
            i += 1
            continue
        closing = text.find(quote, i + 1)
        if closing < 0:  # an unpaired quote: what follows may be a value cut short
            out.append(quote + "…")
            break
        if _NAME_BEFORE.search("".join(out)):
            out.append(text[i : closing + 1])
            i = closing + 1
            continue
        last = text.rfind(quote)
        out.append(quote + "…" + quote)
        i = last + 1
    return "".join(out).rstrip(" :;,")


_SQLSTATE = re.compile(r"^[0-9A-Z]{5}$")
# Windows' Schannel codes for the two certificate checks Driver 18 makes (SEC_E_UNTRUSTED_ROOT,
# SEC_E_WRONG_PRINCIPAL), which the driver reports as the native error.
_UNTRUSTED_ROOT, _WRONG_PRINCIPAL = -2146893019, -2146893022
_RISK = (
    "TrustServerCertificate=yes (the connection is still encrypted, but the server's identity is not checked, so a "
    "machine able to intercept the traffic could pose as the server and receive the login and the records: agree "
    "it with your security officer)"
)


def _certificate_advice(message: str, lower: str, natives: frozenset[int], context: OdbcContext) -> str | None:
    """Driver 18's certificate checks: the chain is not trusted, or the certificate names another server."""
    mismatch = (
        _WRONG_PRINCIPAL in natives
        or "target principal name is incorrect" in lower
        or "does not match host name" in lower
        or "hostname mismatch" in lower
    )
    untrusted = (
        _UNTRUSTED_ROOT in natives
        or ("certificate" in lower and ("verify failed" in lower or "not trusted" in lower or "ssl provider" in lower))
        or ("ssl provider" in lower and "self" in lower and "signed" in lower)
    )
    if not (mismatch or untrusted):
        return None
    driver = context.driver or "ODBC Driver 18 for SQL Server"
    server = context.server or "the server"
    why = (
        f"{driver} encrypts the connection and checks the server's certificate by default (ODBC Driver 17, "
        "which earlier tools used, did not)"
    )
    if mismatch:
        text = (
            f"the SQL Server's TLS certificate does not name the server as SERVER= gives it ({server}). {why}, "
            "and the name must match exactly. Fix, best first: set SERVER= to the server's full name as its "
            "certificate has it (e.g. sql01.council.local rather than sql01, an IP address or an alias); or, when "
            "you connect through an alias or listener, add HostnameInCertificate=<the name on the certificate>; "
            f"or add {_RISK}."
        )
        extra = "TrustServerCertificate=yes;"
    else:
        text = (
            f"the SQL Server's TLS certificate is not trusted by this machine (often SQL Server's own self-signed "
            f"certificate). {why}. Fix, best first: have the server use a certificate from an authority this "
            "machine trusts, or install the authority that issued it in this machine's Trusted Root store (ask your "
            f"DBA or IT); or add {_RISK}."
        )
        extra = "TrustServerCertificate=yes;"
    if context.chosen_string:
        named = "USER_SERVER and USER_DATABASE" if context.from_server_and_database else context.setting
        text += (
            f" {named} named no driver, so the tool chose {driver}. For the last fix, put this line in .env in "
            f"place of {named}: DB_CONNECTION_STRING={context.chosen_string}{extra}"
        )
    else:
        text += f" Each of these goes in {context.setting}."
    return text


# A session that worked and then went, told by the failure of a statement on it (never by a failed
# connect, which means the server could not be reached at all). ODBC's class 08 (08S01 communication
# link failure, 08003 connection does not exist, 08007 connection failure during a transaction);
# IMC01-IMC06, Microsoft's drivers giving up restoring a broken idle connection ("connection
# resiliency"); PostgreSQL ending the session (57P01 administrator command or server shutdown, 57P02
# crash of another server process, 57P03 cannot connect now); SQL Server's 596 (the session was
# KILLed) and Windows' socket errors 10053/10054 (connection aborted, reset); and the words psqlODBC
# (passing libpq's on) and Microsoft's drivers use when the socket went. psqlODBC reports the first
# statement of a transaction on a connection the server has ended as "internal SAVEPOINT failed"
# (HY000): it sends its statement-rollback SAVEPOINT first. Nothing else makes that fail in the
# tool's transactions, and were it ever something else, the transaction is rolled back either way
# and doing it again on a new connection is what the tool would do for a lost one.
_LOST_STATE_PREFIXES = ("08", "IMC")
_LOST_STATES = frozenset({"57P01", "57P02", "57P03"})
_LOST_NATIVES = frozenset({596, 10053, 10054})
_LOST_WORDS = (
    "server closed the connection unexpectedly",
    "could not send data to server",
    "could not receive data from server",
    "connection has been lost",
    "the connection lost",
    "no connection to the server",
    "communication link failure",
    "terminating connection",
    "connection reset",
    "broken pipe",
    "forcibly closed",
    "ssl syscall error",
    "session is in the kill state",
    "internal savepoint failed",
)
# PostgreSQL refusing connections while it starts, stops or recovers (psqlODBC reports them as 08001).
_STARTING_OR_STOPPING = ("database system is starting up", "database system is shutting down", "in recovery mode")
LOST_CONNECTION = (
    "the connection to the database server was lost while the run was working: the server ended the session "
    "(it was restarted or failed over, or an administrator or a time-out ended it) or the network dropped it. "
    "Nothing was marked wrongly: the rows not yet written back stay pending and are sent again next run"
)


@dataclass(frozen=True)
class _Diagnosis:
    """A pyodbc error taken apart: SQLSTATE, the driver's message and the native error numbers in it."""

    state: str
    message: str
    natives: frozenset[int]

    @classmethod
    def of(cls, exc: BaseException) -> _Diagnosis:
        args: tuple[Any, ...] = tuple(getattr(exc, "args", ()) or ())
        if len(args) >= 2:
            state, message = str(args[0]), str(args[1])
            if _SQLSTATE.match(message) and not _SQLSTATE.match(state):
                state, message = message, state  # pyodbc's own errors are (message, SQLSTATE)
        else:
            message = str(args[0]) if args else str(exc)
            found = re.match(r"\s*\[(\w{5})\]", message)
            state = found.group(1) if found else ""
        return cls(state, message, frozenset(int(code) for code in _NATIVE_CODE.findall(message)))

    @property
    def said(self) -> str:
        """``the driver said: <its first line>; SQLSTATE <state>, native error <n>``."""
        numbers = "/".join(str(n) for n in sorted(self.natives - {0}))
        code = (f"SQLSTATE {self.state}" if self.state else "") + (
            f", native error {numbers}" if self.state and numbers else ""
        )
        return f"the driver said: {_driver_detail(self.message)}{'; ' + code if code else ''}"

    @property
    def lost(self) -> bool:
        """Whether this says the connection itself is gone (see _LOST_STATES)."""
        lower = self.message.lower()
        return (
            self.state.startswith(_LOST_STATE_PREFIXES)
            or self.state in _LOST_STATES
            or bool(self.natives & _LOST_NATIVES)
            or any(words in lower for words in _LOST_WORDS)
        )


def driver_said(exc: BaseException, context: OdbcContext | None = None) -> str:
    """The driver's words in short (first line and codes), passwords masked, for a message of the caller's own."""
    return mask_secrets(_Diagnosis.of(exc).said, (context or OdbcContext()).secrets)


def explain_odbc_error(
    exc: BaseException, context: OdbcContext | None = None, *, connected: bool = False
) -> DatabaseError:
    """Turn a pyodbc error (SQLSTATE + the driver's message) into something a council officer can act on.

    The one place ODBC error shapes are recognised, for SQL Server's drivers and
    psqlODBC alike (psqlODBC reports every connection failure as 08001, so the
    server's words decide). Passwords are masked; record values never appear.
    ``connected``: the error came from a connection that was open (a statement, a commit), not
    from opening one, so the server was reached and a connection failure means it was lost.
    The returned error's ``kind`` marks deadlocks, lock time-outs, duplicate keys, a connection
    lost during the run and a server that could not be reached.
    """
    context = context or OdbcContext()
    diagnosis = _Diagnosis.of(exc)
    state, message, natives = diagnosis.state, diagnosis.message, diagnosis.natives
    lower = message.lower()
    said = f" ({diagnosis.said})"
    kind = None

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
                f"the ODBC data source (DSN) {context.dsn!r} named in {context.setting} does not exist on this "
                "machine. Create it in 'ODBC Data Sources (64-bit)', or give DRIVER={...} and SERVER=... instead."
            )
        else:
            installed = ", ".join(context.installed_drivers()) if context.installed_drivers else ""
            text = (
                f"the ODBC driver {context.driver or '(none named)'!r} is not installed on this machine. "
                f"Installed ODBC drivers: {installed or 'none'}. Install Microsoft 'ODBC Driver 18 for SQL Server' "
                f"(or psqlODBC for PostgreSQL), or name an installed one with DRIVER={{...}} in {context.setting}."
            )
    elif (certificate := _certificate_advice(message, lower, natives, context)) is not None:
        text = certificate
    elif connected and diagnosis.lost:
        kind = CONNECTION_LOST
        text = LOST_CONNECTION
    elif 1205 in natives or state in ("40001", "40P01"):
        kind = CONFLICT
        text = (
            "the database chose this work as the victim of a deadlock with another session (usually the council's "
            "staging SQL, e.g. its MERGE, running at the same time) and rolled it back: none of it was kept. "
            "Schedule the run so that it does not overlap the staging SQL."
        )
    # SQL Server's lock time-out is 1222; PostgreSQL's 55P03. Babelfish (SQL Server's dialect on
    # PostgreSQL) reports it as error 33557097 with PostgreSQL's words ("canceling statement due to
    # lock timeout"): 33557097 is its number for every error it has no SQL Server number for (a
    # missing permission, a missing table), so the words decide there, never that number.
    elif 1222 in natives or state == "55P03" or "lock timeout" in lower or "lock request time out" in lower:
        kind = LOCK_TIMEOUT
        text = (
            "waited longer than the lock time-out for rows or a table that another session holds locked (usually "
            "the council's staging SQL, e.g. its MERGE, running at the same time): that statement did nothing. "
            "Schedule the run after the staging SQL has finished."
        )
    elif 4060 in natives or state == "3D000" or re.search(r'database "[^"]*" does not exist', message):
        text = (
            f"the database {named('database')}was not found, or this login may not open it. Check "
            f"{context.check('DATABASE=', 'USER_DATABASE')}, and that the login is a user in that database."
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
        if context.foreign_integrated and not user:
            text = (
                f"{context.setting} says Integrated Security=..., a setting of .NET and OLE DB connection strings "
                "that Microsoft's ODBC driver does not know: it ignored it and tried a SQL Server login with no user "
                "name. For Windows authentication, replace it with Trusted_Connection=yes."
            )
        elif context.integrated or "\\" in user:
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
                f"the database refused the login for user {user!r}: check "
                f"{context.check('UID and PWD', 'DB_USER and DB_PASSWORD')} (the password is not shown here), "
                "and that the login is enabled and allowed to connect "
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
            "SELECT, INSERT, UPDATE and DELETE on the tables beside it (ledger, in-flight, in-doubt, run lock), and "
            "CREATE TABLE only to create them (or a DBA runs 'init-db --print')."
        )
    elif state in ("22021", "22P05"):
        kind = UNDECODABLE
        text = (
            "a text value in the table could not be read: its bytes are not valid in the database's encoding, or "
            "have no equivalent in UTF-8 (for example a name saved as Windows-1252 in a SQL_ASCII database)"
        )
    elif state == "22001" or natives & {2628, 8152}:
        text = "a value is too long for its column in the database. Run test-schema to see which column is too small."
    elif unsupported := re.search(r"ODBC SQL type (-?\d+) is not yet supported", message):
        sql_type = int(unsupported.group(1))
        what = " (SQL Server's datetimeoffset)" if sql_type == SQL_SS_TIMESTAMPOFFSET else ""
        text = (
            f"a column the tool reads has a type that pyodbc cannot read: ODBC SQL type {sql_type}{what}. Run "
            "test-schema, and change that column to a type the tool uses (DATETIME2 or DATETIME for times); "
            "Microsoft's ODBC Driver 17 or 18 reads datetimeoffset."
        )
    elif natives & {2627, 2601} or state == "23505":
        kind = KEY_VIOLATION
        text = "the database refused a duplicate key"
    elif not connected and (state == "57P03" or any(words in lower for words in _STARTING_OR_STOPPING)):
        kind = UNREACHABLE
        text = (
            "the database server is starting up or shutting down (a restart or a failover is under way): "
            "run again once it is back"
        )
    elif not connected and (
        state in ("08001", "08S01", "HYT00", "08004")
        or "connection refused" in lower
        or "could not translate host name" in lower
        or "timeout expired" in lower
        or "server was not found" in lower
    ):
        kind = UNREACHABLE
        text = (
            f"cannot reach the database server. Check {context.check('SERVER= (and port)', 'USER_SERVER')}, that "
            "the server is running and accepts TCP/IP connections, and that no firewall is in the way."
        )
    else:
        text = "the database reported an error"
    return DatabaseError(mask_secrets(text + said, context.secrets), kind=kind)
