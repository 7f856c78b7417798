"""Microsoft SQL Server (and Babelfish for PostgreSQL, which speaks its dialect): the dialect.

T-SQL where it differs from standard SQL (``TOP``, ``IF OBJECT_ID ... CREATE``, ``LTRIM(RTRIM())``),
how parameters are bound through each ODBC driver, collations that keep keys exact, and the
session settings a run needs beside the council's own SQL.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from api_pipeline.errors import DatabaseError
from api_pipeline.store.columns import BINARY, HASH_BYTES, LONG_TEXT, Column, ColumnInfo, Kinds
from api_pipeline.store.dialect import ServerDialect, Session
from api_pipeline.store.odbc import (
    SQL_WLONGVARCHAR,
    SQL_WVARCHAR,
    is_freetds_driver,
    is_microsoft_sql_driver,
    utf16_digest,
)

log = logging.getLogger(__name__)

# SQL Server compares text by the column's collation, usually case-insensitive (Latin1_General_CI_AS):
# the keys the tool keeps (a child's id, the run lock's name) are given this one, which compares
# character for character, so ids that differ only in case are two keys, as they are in Python.
BINARY_COLLATION = "Latin1_General_100_BIN2"

SQL_VARBINARY = -3  # ODBC's SQL type code (pyodbc's constant has this value)


class SqlServer(ServerDialect):
    """Microsoft SQL Server, 2016 and later, through ODBC."""

    name = "mssql"
    label = "Microsoft SQL Server"
    text = "NVARCHAR(MAX)"
    short_text = "NVARCHAR({n})"
    identity_pk = "INT IDENTITY(1,1) NOT NULL PRIMARY KEY"
    binary32 = "BINARY(32)"
    timestamp = "DATETIME"
    flag = "BIT"
    integer = "INT"
    whoami_sql = "SELECT SUSER_SNAME(), DB_NAME()"
    max_identifier = 128
    type_families = {
        "text": frozenset({"nvarchar", "varchar", "nchar", "char"}),
        "long_text": frozenset({"nvarchar", "varchar"}),
        "hash": frozenset({"binary", "varbinary"}),
        "timestamp": frozenset({"datetime", "datetime2", "smalldatetime", "datetimeoffset"}),
        "id": frozenset({"int", "bigint"}),
        "int": frozenset({"int", "bigint"}),
        "flag": frozenset({"bit", "tinyint", "smallint", "int", "bigint"}),
    }
    deprecated_text_types = frozenset({"ntext", "text"})
    key_collation = f"COLLATE {BINARY_COLLATION}"
    upserts = False
    # Not unique: a unique index allows one NULL only, and the filtered index that allows more
    # (``WHERE person_id IS NOT NULL``) obliges every session that writes the table to run with
    # QUOTED_IDENTIFIER and ANSI_NULLS on. SQL Agent T-SQL steps and procedures created with them
    # off would then fail with error 1934. The tool finds two rows for one child itself and skips them.
    person_index_unique = False

    # -- queries ---------------------------------------------------------------

    def select_top(self, columns: str, rest: str) -> str:
        return f"SELECT TOP (?) {columns} {rest}"

    def limit_first(self) -> bool:
        return True

    def same_text(self, column: str) -> str:
        """SQL Server compares with the column's collation, usually case-insensitive: ``"Zoe"`` would
        equal ``"ZOE"`` and a council's case-only edit would slip past the optimistic check. A binary
        collation makes it exact."""
        return f"{column} = ? COLLATE Latin1_General_BIN2"

    def same_columns(self, a: str, b: str) -> str:
        return f"{a} = {b} COLLATE Latin1_General_BIN2"

    def exact(self, expression: str) -> str:
        """Also what keeps a council's case-insensitive column from meeting the key's collation in one
        comparison, which SQL Server refuses."""
        return f"{expression} COLLATE {BINARY_COLLATION}"

    def trim(self, expression: str) -> str:
        """SQL Server 2016 has no ``TRIM``."""
        return f"LTRIM(RTRIM({expression}))"

    def input_sizes(self, kinds: Kinds | None, driver_file: str = "") -> list[Any] | None:
        """pyodbc binds a string over 4,000 characters as ``ntext``, and ``NVARCHAR(MAX) = ntext`` is an
        error, so long JSON is bound as ``NVARCHAR(MAX)`` (streamed, never truncated).

        How to ask for that depends on the ODBC driver (``driver_file``): Microsoft's send
        ``SQL_WVARCHAR`` with size 0 as ``NVARCHAR(MAX)``; FreeTDS refuses a long string bound so
        ("Invalid string or buffer length", HY090: found running the SQL Server path on a real T-SQL
        server) and sends ``SQL_WLONGVARCHAR`` as ``NVARCHAR(MAX)`` from TDS 7.2 on. Binary parameters
        are bound as ``VARBINARY``, so a NULL hash is a binary NULL: a NULL bound as text is refused
        by a ``BINARY(32)`` column ("implicit conversion from varchar").
        """
        if not kinds or not any(kinds):
            return None
        long_text = SQL_WLONGVARCHAR if is_freetds_driver(driver_file) else SQL_WVARCHAR
        sizes: list[Any] = []
        for kind in kinds:
            if kind == LONG_TEXT:
                sizes.append((long_text, 0, 0))
            elif kind == BINARY:
                sizes.append((SQL_VARBINARY, HASH_BYTES, 0))
            else:
                sizes.append(None)
        return sizes

    def same_stored_text(self, column: str) -> str:
        """The parameter is the SHA-256 of the text as NVARCHAR (``HASHBYTES``), so no payload is sent
        back to the server (issue 18.8), and the comparison is exact whatever the column's collation."""
        return f"{self.stored_text(column)} = ?"

    def stored_text(self, column: str) -> str:
        # CAST: a VARCHAR column hashes as the NVARCHAR text the driver reads, not its code-page bytes.
        return f"HASHBYTES('SHA2_256', CAST({column} AS NVARCHAR(MAX)))"

    def expected_text(self, text: str | None) -> Any:
        """SQL Server hashes NVARCHAR text as its UTF-16LE code units; Babelfish, which keeps text as
        PostgreSQL does, hashes its UTF-8 bytes (:class:`Babelfish`)."""
        return utf16_digest(text, self.nvarchar_bytes)

    @property
    def expected_kind(self) -> str:
        return BINARY

    def session_sql(self, lock_wait_ms: int) -> tuple[str, ...]:
        """Row counts on (a server's ``user options`` may turn them off, and the run lock and the
        optimistic check count rows); this session gives way in a deadlock, so the council's own SQL
        is not the one rolled back; and lock waits are bounded, so a statement blocked behind the
        staging SQL fails (and is retried) instead of hanging."""
        return ("SET NOCOUNT OFF", "SET DEADLOCK_PRIORITY LOW", f"SET LOCK_TIMEOUT {int(lock_wait_ms)}")

    def uses_microsoft_driver(self, driver_file: str) -> bool:
        """They crash the SQLite ODBC driver, and FreeTDS and psqlODBC gain nothing or misbehave."""
        return is_microsoft_sql_driver(driver_file)

    @property
    def server_utc_now(self) -> str:
        """``SYSUTCDATETIME()`` (DATETIME2), which a DATETIME column rounds to its 1/300 s, so a time just
        written may read up to 2 ms ahead; into a DATETIMEOFFSET column it goes as +00:00."""
        return "SYSUTCDATETIME()"

    def seconds_since(self, column: str) -> str:
        """``DATEDIFF`` in seconds (whole seconds crossed; an ``int`` lasts 68 years), which compares a
        DATETIMEOFFSET in UTC."""
        return f"DATEDIFF(SECOND, {column}, {self.server_utc_now})"

    def select_for_update(self, columns: str, table: str, rest: str) -> str:
        return f"SELECT {columns} FROM {table} WITH (UPDLOCK, ROWLOCK) WHERE {rest}"

    def filtered_indexes_sql(self) -> str | None:
        return "SELECT name FROM sys.indexes WHERE object_id = OBJECT_ID(?) AND has_filter = 1 ORDER BY name"

    # -- DDL -------------------------------------------------------------------

    def create_table_if_missing(self, table: str, body: str) -> str:
        return f"IF OBJECT_ID(N'{table}', N'U') IS NULL CREATE TABLE {table} ({body})"

    def create_index_if_missing(self, index: str, table: str, column: str, *, unique: bool = False) -> str:
        """A unique index is filtered to ignore NULLs, as PostgreSQL's and SQLite's do by themselves."""
        kind = "UNIQUE INDEX" if unique else "INDEX"
        where = f" WHERE {column} IS NOT NULL" if unique else ""
        return (
            f"IF NOT EXISTS (SELECT 1 FROM sys.indexes WHERE name = N'{index}' "
            f"AND object_id = OBJECT_ID(N'{table}')) "
            f"CREATE {kind} {index} ON {table} ({column}){where}"
        )

    def add_column(self, table: str, column: Column) -> str:
        return f"ALTER TABLE {table} ADD {self.column_definition(column, for_add=True)}"

    def alter_column_type(self, table: str, column: Column, info: ColumnInfo | None = None) -> str:
        """SQL Server's ALTER COLUMN sets nullability too: it keeps what the column has."""
        if column.kind == "id" or (info is not None and info.key):
            return ""
        new_type = self.column_type(column)
        nullable = column.nullable if info is None or info.nullable is None else info.nullable
        return f"ALTER TABLE {table} ALTER COLUMN {column.name} {new_type} {'NULL' if nullable else 'NOT NULL'}"

    # -- the catalogue -----------------------------------------------------------

    def _unqualified_tables(self, select: str, names: str) -> str:
        """Unqualified names resolve to the login's default schema, then dbo."""
        return (
            select + f"c.TABLE_SCHEMA IN (SCHEMA_NAME(), 'dbo') AND c.TABLE_NAME IN {names} ORDER BY c.TABLE_NAME, "
            "CASE WHEN c.TABLE_SCHEMA = SCHEMA_NAME() THEN 0 ELSE 1 END, c.ORDINAL_POSITION"
        )

    def resolve_table_sql(self) -> str:
        return (
            "SELECT s.name, o.name FROM sys.objects AS o JOIN sys.schemas AS s ON s.schema_id = o.schema_id "
            "WHERE o.object_id = OBJECT_ID(?)"
        )

    def protocol(self, db: Session) -> str:
        return tds_protocol(db)

    def warning(self, column: Column, info: ColumnInfo) -> str | None:
        """Works, but may damage data: SQL Server's non-Unicode text types, and a key that ignores case."""
        if column.exact and info.collation and not _is_binary_collation(info.collation):
            return (
                f"compares ignoring letter case or accents (collation {info.collation}), so ids that differ only in "
                "case would be one child here (the write-back would fail on the second); the table has to be "
                f"rebuilt with the column COLLATE {BINARY_COLLATION} (ask your DBA; 'init-db --print' shows it)"
            )
        if column.kind == "long_text" and info.data_type in ("varchar", "char"):
            return (
                f"is {info.shown()}: letters outside the server's code page (Łukasz, emoji) are stored as '?'; "
                f"{self.column_type(column)} keeps them"
            )
        return None


class Babelfish(SqlServer):
    """Babelfish for PostgreSQL (Amazon Aurora's, or built from its sources): SQL Server's dialect over
    TDS, told apart by @@VERSION (``db.Database.open_odbc``). Where it differs from SQL Server in what
    the tool relies on: HASHBYTES of NVARCHAR text hashes UTF-8 (SQL Server: UTF-16LE)."""

    label = "Babelfish for PostgreSQL (SQL Server's dialect)"
    nvarchar_bytes = "utf-8"


def _is_binary_collation(name: str) -> bool:
    """A SQL Server collation that compares code points (``…_BIN2``, ``…_BIN``; Babelfish reports
    ``bbf_unicode_bin2``)."""
    return bool(re.search(r"_bin2?$", name, re.IGNORECASE))


# sys.dm_exec_connections.protocol_version's high byte: 0x70 to 0x74 for TDS 7.0 to 7.4, 0x08 for TDS 8.0.
_TDS_VERSION_BYTE = re.compile(r"^(?:7[0-4]|08)$")


def tds_version(protocol_version: int) -> str | None:
    """``7.4`` for 0x74000004 (SQL Server's number for the TDS version of a connection), or None."""
    high = f"{(int(protocol_version) >> 24) & 0xFF:02x}"
    if not _TDS_VERSION_BYTE.match(high):
        return None
    return "8.0" if high == "08" else f"{high[0]}.{high[1]}"


def tds_protocol(db: Session) -> str:
    """The TDS protocol version this SQL Server connection uses, and how that is known.

    The server says, to a login with VIEW SERVER STATE; otherwise only what the connection string
    asks for is known (FreeTDS's ``TDS_Version``; without it, FreeTDS takes freetds.conf's ``tds
    version``, ``auto`` unless set: the newest the server accepts). Microsoft's drivers choose it
    themselves (7.4, or 8.0 with ``Encrypt=strict``).
    """
    try:
        found = db.scalar(
            "SELECT protocol_version FROM sys.dm_exec_connections WHERE session_id = @@SPID"  # noqa: S608
        )
    except DatabaseError as exc:
        log.debug("the TDS version was not read from the server: %s", exc)
        found = None
    version = None if found is None else tds_version(int(found))
    if version is not None:
        return f"TDS {version}"
    asked = db.tds_version_asked
    if not is_freetds_driver(db.driver_file):
        return "TDS: chosen by the driver (the server did not say which: that needs VIEW SERVER STATE)"
    if asked:
        return f"TDS {asked}, as DB_CONNECTION_STRING asks (TDS_Version; the server did not say which it used)"
    return (
        "TDS: not set in DB_CONNECTION_STRING, so FreeTDS's own setting (freetds.conf's 'tds version'; 'auto': "
        "the newest the server accepts); add TDS_Version=7.4 to be sure"
    )
