"""What an ODBC error means, in words a council's DBA can act on, and which failures a retry may cure.

:func:`explain_odbc_error` turns an ODBC error's shape (SQLSTATE, native code and the driver's
message) into a :class:`~api_pipeline.errors.DatabaseError` with advice and a ``kind``; no value
from a row is ever quoted (:func:`without_values`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from api_pipeline.errors import DatabaseError
from api_pipeline.settings.masking import mask_secrets
from api_pipeline.store.odbc import (
    CONFLICT,
    CONNECTION_LOST,
    KEY_VIOLATION,
    LOCK_TIMEOUT,
    SQL_SS_TIMESTAMPOFFSET,
    UNDECODABLE,
    UNREACHABLE,
    OdbcContext,
    process_identity,
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
