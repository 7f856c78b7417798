"""ODBC connection strings, driver choice, text and time decoding, for SQL Server and PostgreSQL.

Pure text handling: nothing here imports pyodbc (``db.Database`` does, lazily). What an ODBC
error means, in words, is ``odbc_errors``; the kinds of failure it tells apart are declared here.
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

from api_pipeline.errors import DatabaseError

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
