"""SQL dialects and table definitions: every difference between SQLite, SQL Server and PostgreSQL.

The columns of the staging table and of the tables the tool keeps beside it are declared once
(:data:`STAGING_SPEC`, :data:`LEDGER_SPEC`, :data:`IN_FLIGHT_SPEC`, :data:`IN_DOUBT_SPEC`); the
DDL that creates them, the checks that say whether an existing table can be used and the DDL
that fixes one are all derived from that.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import Any

from api_pipeline.errors import ConfigError, DatabaseError
from api_pipeline.settings.config import MAX_RECEIPT_LENGTH
from api_pipeline.store.odbc import UnreadableText, is_freetds_driver, is_microsoft_sql_driver, utf16_digest

HASH_BYTES = 32  # SHA-256
# SQL Server compares text by the column's collation, usually case-insensitive (Latin1_General_CI_AS):
# the keys the tool keeps (a child's id, the run lock's name) are given this one, which compares
# character for character, so ids that differ only in case are two keys, as they are in Python.
BINARY_COLLATION = "Latin1_General_100_BIN2"
MAX_NOTE_LENGTH = 4000  # api_response: what this tool writes there is cut to this; the column holds at least as much

# Parameter kinds: the few parameters a driver cannot bind well by guessing from the Python value.
LONG_TEXT = "long_text"  # stored in, or compared with, an NVARCHAR(MAX) / TEXT column
BINARY = "binary"  # bytes (or None) for a BINARY(32) / BYTEA column
Kinds = Sequence[str | None]

# ODBC SQL type codes, fixed by the ODBC specification (pyodbc's constants have these values).
SQL_WVARCHAR = -9
SQL_WLONGVARCHAR = -10
SQL_VARBINARY = -3


# ---------------------------------------------------------------------------
# The columns the tool works with (DESIGN §4)
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Column:
    """One column the tool reads or writes, and the least it can work with.

    ``kind`` is one of: id, text, long_text, hash, timestamp, int, flag. For
    ``text``, ``size`` is the length councils' DDL gives it and ``min_size`` the
    shortest that holds every value the tool writes. ``long_text`` must be
    unlimited (NVARCHAR(MAX), TEXT) unless ``min_size`` says a length is enough.
    """

    name: str
    kind: str
    size: int = 0
    min_size: int = 0
    nullable: bool = True
    default: str | None = None
    required: bool = True
    # A JSON column: PostgreSQL's JSON and JSONB types also do (the earlier PostgreSQL builder's DDL).
    json: bool = False
    # A key compared character for character: a child's id, whose letter case matters (DfE may take
    # AB12 and ab12 for two children). SQL Server gives it a binary collation (BINARY_COLLATION).
    exact: bool = False


STAGING_SPEC = (
    Column("id", "id", nullable=False),
    Column("person_id", "text", 20, min_size=20),
    Column("legacy_id", "text", 36, required=False),
    Column("json_payload", "long_text", nullable=False, json=True),
    Column("previous_json_payload", "long_text", json=True),
    Column("partial_json_payload", "long_text", json=True),
    Column("current_hash", "hash", required=False),
    Column("previous_hash", "hash"),
    Column("submission_status", "text", 50, min_size=7, default="'Pending'"),
    Column("submission_timestamp", "timestamp"),
    Column("api_response", "long_text", min_size=MAX_NOTE_LENGTH),
    Column("row_state", "text", 10, min_size=9, default="'New'"),
    Column("last_updated", "timestamp", required=False, default="CURRENT_TIMESTAMP"),
)
LEDGER_SPEC = (
    Column("la_child_id", "text", 36, min_size=20, nullable=False, exact=True),
    Column("mis_child_id", "text", 36, min_size=36),
    Column("staging_id", "int"),
    Column("record_json", "long_text"),
    Column("record_hash", "hash"),
    Column("receipt", "text", MAX_RECEIPT_LENGTH, min_size=MAX_RECEIPT_LENGTH),
    Column("acknowledged_at", "timestamp"),
    Column("purged", "flag", nullable=False, default="0"),
)
# A batch about to be sent, or sent and not yet written back (DESIGN §7): one row, written before
# the batch goes and deleted with its write-back; ``children_json`` is each child's id, staging row
# and outline. A row left behind is a batch in doubt: the next run moves its children to the
# in-doubt table.
IN_FLIGHT_SPEC = (
    Column("batch_id", "text", 64, min_size=40, nullable=False),
    Column("recorded_at", "timestamp"),
    Column("children_json", "long_text", nullable=False),
)
# Children whose copy at DfE is in doubt: DfE holds the ledger's record, or what a batch whose
# answer was never recorded made of it, which the outline bounds (its ids and blocks).
IN_DOUBT_SPEC = (
    Column("la_child_id", "text", 36, min_size=20, nullable=False, exact=True),
    Column("staging_id", "int"),
    Column("outline_json", "long_text", nullable=False),
    Column("batch_id", "text", 64, min_size=40),
    Column("recorded_at", "timestamp"),
)
STAGING_COLUMNS = tuple(c.name for c in STAGING_SPEC)
# Columns the tool cannot work without; legacy_id, current_hash and last_updated are optional.
REQUIRED_COLUMNS = tuple(c.name for c in STAGING_SPEC if c.required)


@dataclass(frozen=True)
class ColumnInfo:
    """A column as the database describes it. ``length`` None: unlimited (MAX, TEXT) or not a string."""

    name: str
    data_type: str
    length: int | None = None
    nullable: bool | None = None  # None: not known
    key: bool = False  # part of the table's primary key
    collation: str | None = None  # None: not text, not known, or the database's default (SQLite)

    def shown(self) -> str:
        if self.data_type in _SIZED_TYPES:
            return f"{self.data_type.upper()}({'MAX' if self.length is None else self.length})"
        return self.data_type.upper()


_SIZED_TYPES = frozenset(
    {"nvarchar", "varchar", "nchar", "char", "binary", "varbinary", "character varying", "character"}
)

# Which declared types each DBMS can use for each kind of column. SQLite accepts any.
_TYPE_FAMILIES: dict[str, dict[str, frozenset[str]]] = {
    "mssql": {
        "text": frozenset({"nvarchar", "varchar", "nchar", "char"}),
        "long_text": frozenset({"nvarchar", "varchar"}),
        "hash": frozenset({"binary", "varbinary"}),
        "timestamp": frozenset({"datetime", "datetime2", "smalldatetime", "datetimeoffset"}),
        "id": frozenset({"int", "bigint"}),
        "int": frozenset({"int", "bigint"}),
        "flag": frozenset({"bit", "tinyint", "smallint", "int", "bigint"}),
    },
    "postgresql": {
        "text": frozenset({"text", "character varying", "character"}),
        "long_text": frozenset({"text", "character varying"}),
        "hash": frozenset({"bytea"}),
        "timestamp": frozenset({"timestamp without time zone", "timestamp with time zone"}),
        "id": frozenset({"integer", "bigint"}),
        "int": frozenset({"integer", "bigint"}),
        "flag": frozenset({"smallint", "integer", "bigint"}),
    },
}


# ---------------------------------------------------------------------------
# Dialects: every difference between SQLite, SQL Server and PostgreSQL lives here.
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Dialect:
    """What differs between the DBMSs: types, row limiting, DDL guards, catalogue queries."""

    name: str
    label: str
    text: str
    short_text: str
    identity_pk: str
    binary32: str
    timestamp: str
    flag: str
    integer: str
    # Login and database, for test-db (None: SQLite has neither).
    whoami_sql: str | None = None
    # The longest name the DBMS keeps whole (PostgreSQL silently cuts longer ones); None: no limit.
    max_identifier: int | None = None
    # SQL Server's dialect: the bytes ``HASHBYTES`` hashes for NVARCHAR text (see :meth:`expected_text`).
    nvarchar_bytes: str = "utf-16-le"

    # -- queries ---------------------------------------------------------------

    def select_top(self, columns: str, rest: str) -> str:
        """``SELECT <columns> <rest>`` limited to ``?`` rows (see :meth:`limit_first` for where ``?`` goes)."""
        if self.name == "mssql":
            return f"SELECT TOP (?) {columns} {rest}"
        return f"SELECT {columns} {rest} LIMIT ?"

    def limit_first(self) -> bool:
        """True when the row limit parameter comes before the others (T-SQL ``TOP``)."""
        return self.name == "mssql"

    def same_text(self, column: str) -> str:
        """``column = ?`` compared exactly, character for character.

        SQL Server compares with the column's collation, usually case-insensitive:
        ``"Zoe"`` would equal ``"ZOE"`` and a council's case-only edit would slip
        past the optimistic check. A binary collation makes it exact. PostgreSQL compares
        as text, so a JSON column (which has no ``=``) or JSONB (whose ``=`` ignores
        spacing and key order) is compared as the text it gave when read.
        """
        if self.name == "mssql":
            return f"{column} = ? COLLATE Latin1_General_BIN2"
        if self.name == "postgresql":
            return f"CAST({column} AS TEXT) = ?"
        return f"{column} = ?"

    def same_columns(self, a: str, b: str) -> str:
        """Two text columns equal character for character (see :meth:`same_text`)."""
        if self.name == "mssql":
            return f"{a} = {b} COLLATE Latin1_General_BIN2"
        if self.name == "postgresql":
            return f"CAST({a} AS TEXT) = CAST({b} AS TEXT)"
        return f"{a} = {b}"

    def exact(self, expression: str) -> str:
        """A text ``expression`` compared character for character with a key column that is
        (:data:`BINARY_COLLATION`): on SQL Server, also what keeps a council's case-insensitive
        column from meeting the key's collation in one comparison, which SQL Server refuses."""
        if self.name == "mssql":
            return f"{expression} COLLATE {BINARY_COLLATION}"
        return expression

    def trim(self, expression: str) -> str:
        """Leading and trailing spaces removed (SQL Server 2016 has no ``TRIM``)."""
        if self.name == "mssql":
            return f"LTRIM(RTRIM({expression}))"
        return f"TRIM({expression})"

    def input_sizes(self, kinds: Kinds | None, driver_file: str = "") -> list[Any] | None:
        """``cursor.setinputsizes`` for these parameters, or None when the driver's guesses are right.

        SQL Server: pyodbc binds a string over 4,000 characters as ``ntext``, and
        ``NVARCHAR(MAX) = ntext`` is an error, so long JSON is bound as ``NVARCHAR(MAX)``
        (streamed, never truncated). How to ask for that depends on the ODBC driver
        (``driver_file``): Microsoft's send ``SQL_WVARCHAR`` with size 0 as ``NVARCHAR(MAX)``;
        FreeTDS refuses a long string bound so ("Invalid string or buffer length", HY090:
        found running the SQL Server path on a real T-SQL server) and sends ``SQL_WLONGVARCHAR``
        as ``NVARCHAR(MAX)`` from TDS 7.2 on. Binary parameters are bound
        as ``VARBINARY``, so a NULL hash is a binary NULL: a NULL bound as text is
        refused by a ``BINARY(32)`` column ("implicit conversion from varchar").
        PostgreSQL (psqlODBC) types parameters from the statement: nothing to do.
        """
        if self.name != "mssql" or not kinds or not any(kinds):
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

    def timestamp_param(self, value: datetime | None) -> Any:
        if value is None:
            return None
        if self.name == "sqlite":
            return _sqlite_timestamp(value)
        return _naive_utc(value)

    def same_stored_text(self, column: str) -> str:
        """``column`` compared exactly with one parameter, :meth:`expected_text` (the optimistic check).

        SQL Server: the parameter is the SHA-256 of the text as NVARCHAR (``HASHBYTES``), so no
        payload is sent back to the server (issue 18.8), and the comparison is exact whatever the
        column's collation. Elsewhere the text itself, as :meth:`same_text` compares it; on
        SQLite, or the bytes of text that is not UTF-8 as stored (:class:`UnreadableText`),
        which ``CAST`` makes text again, byte for byte.
        """
        if self.name == "mssql":
            return f"{self.stored_text(column)} = ?"
        if self.name == "sqlite":
            return f"{column} = CAST(? AS TEXT)"
        return self.same_text(column)

    def stored_text(self, column: str) -> str:
        """What to read of a long text column to compare it with :meth:`expected_text`."""
        if self.name == "mssql":
            # CAST: a VARCHAR column hashes as the NVARCHAR text the driver reads, not its code-page bytes.
            return f"HASHBYTES('SHA2_256', CAST({column} AS NVARCHAR(MAX)))"
        return column

    def expected_text(self, text: str | None) -> Any:
        """The value :meth:`stored_text` has when the column holds ``text`` (see :meth:`same_text`).

        SQL Server hashes NVARCHAR text as its UTF-16LE code units; Babelfish, which keeps text as
        PostgreSQL does, hashes its UTF-8 bytes (:data:`BABELFISH`). Hashed any other way, no
        row would ever pass the optimistic check: every row would stay pending and be sent again
        each night.
        """
        return utf16_digest(text, self.nvarchar_bytes) if self.name == "mssql" else self.comparable(text)

    def comparable(self, stored: Any) -> Any:
        """A value :meth:`stored_text` read, as :meth:`expected_text` gives it (drivers return bytearray;
        text that is not valid as stored compares as its bytes)."""
        if isinstance(stored, UnreadableText):
            return stored.raw
        return bytes(stored) if isinstance(stored, (bytes, bytearray, memoryview)) else stored

    @property
    def expected_kind(self) -> str:
        """The parameter kind of :meth:`expected_text`."""
        return BINARY if self.name == "mssql" else LONG_TEXT

    def session_sql(self, lock_wait_ms: int) -> tuple[str, ...]:
        """Run once after connecting.

        SQL Server: row counts on (a server's ``user options`` may turn them off, and the
        run lock and the optimistic check count rows); this session gives way in a deadlock,
        so the council's own SQL is not the one rolled back; and lock waits are bounded, so
        a statement blocked behind the staging SQL fails (and is retried) instead of hanging.
        PostgreSQL: the same bound. SQLite waits for its busy time-out.
        """
        if self.name == "mssql":
            return ("SET NOCOUNT OFF", "SET DEADLOCK_PRIORITY LOW", f"SET LOCK_TIMEOUT {int(lock_wait_ms)}")
        if self.name == "postgresql":
            return (f"SET lock_timeout = {int(lock_wait_ms)}",)
        return ()

    def uses_microsoft_driver(self, driver_file: str) -> bool:
        """SQL Server through one of Microsoft's own ODBC drivers: their output converters and
        ``fast_executemany`` (a whole parameter array at once) are proven there only; they crash
        the SQLite ODBC driver, and FreeTDS and psqlODBC gain nothing or misbehave."""
        return self.name == "mssql" and is_microsoft_sql_driver(driver_file)

    @property
    def naive_timestamps_are_utc(self) -> bool:
        """SQLite's CURRENT_TIMESTAMP is UTC (and the demo writes UTC); elsewhere a naive DATETIME is
        the server's local time (GETDATE(), now())."""
        return self.name == "sqlite"

    @property
    def server_utc_now(self) -> str:
        """SQL for the database server's time now, in UTC, in the form the tool stores times in.

        For the run lock, whose ages must not depend on any one machine's clock (DESIGN §7).
        SQL Server: ``SYSUTCDATETIME()`` (DATETIME2), which a DATETIME column rounds to its
        1/300 s, so a time just written may read up to 2 ms ahead; into a DATETIMEOFFSET column
        it goes as +00:00. PostgreSQL: ``clock_timestamp()``, the time the statement runs (``now()``
        is when the transaction began), as UTC wall-clock time for a TIMESTAMP column. SQLite
        has no server: the time of the machine running the tool, which is where its file is,
        as the text ``YYYY-MM-DD HH:MM:SS.SSS`` that :meth:`timestamp_param` writes.
        """
        if self.name == "mssql":
            return "SYSUTCDATETIME()"
        if self.name == "postgresql":
            return "(clock_timestamp() AT TIME ZONE 'UTC')"
        return "strftime('%Y-%m-%d %H:%M:%f', 'now')"

    def seconds_since(self, column: str) -> str:
        """SQL for the seconds from the time in ``column`` to :attr:`server_utc_now`: negative when it
        is ahead of the server's clock; NULL when SQLite cannot read it as a time.

        Worked out by the server, so nothing depends on how a driver returns the column's type.
        SQL Server: ``DATEDIFF`` in seconds (whole seconds crossed; an ``int`` lasts 68 years),
        which compares a DATETIMEOFFSET in UTC. PostgreSQL: a TIMESTAMP WITH TIME ZONE column
        gets the UTC time through the session's time zone when written and again here, so the
        two agree. SQLite: ``julianday`` reads the text the tool writes, with or without
        fractions of a second.
        """
        if self.name == "mssql":
            return f"DATEDIFF(SECOND, {column}, {self.server_utc_now})"
        if self.name == "postgresql":
            return f"CAST(EXTRACT(EPOCH FROM {self.server_utc_now} - {column}) AS DOUBLE PRECISION)"
        return f"(julianday('now') - julianday({column})) * 86400.0"

    @property
    def upserts(self) -> bool:
        """``INSERT ... ON CONFLICT (key) DO UPDATE`` (SQLite, PostgreSQL); SQL Server deletes and inserts."""
        return self.name in ("sqlite", "postgresql")

    @property
    def set_based_updates(self) -> bool:
        """Many rows' updates in one ``UPDATE ... FROM (VALUES ...)`` (PostgreSQL: psqlODBC's executemany
        makes one round trip per row)."""
        return self.name == "postgresql"

    def select_for_update(self, columns: str, table: str, rest: str) -> str:
        """``SELECT <columns> FROM <table> WHERE <rest>`` that locks the rows read until the transaction
        ends. SQLite's ``BEGIN IMMEDIATE`` already holds the write lock."""
        hint = " WITH (UPDLOCK, ROWLOCK)" if self.name == "mssql" else ""
        tail = " FOR UPDATE" if self.name == "postgresql" else ""
        return f"SELECT {columns} FROM {table}{hint} WHERE {rest}{tail}"

    @property
    def person_index_unique(self) -> bool:
        """Whether init-db's person_id index enforces one row per child.

        Not on SQL Server: a unique index there allows one NULL only, and the filtered
        index that allows more (``WHERE person_id IS NOT NULL``) obliges every session that
        writes the table to run with QUOTED_IDENTIFIER and ANSI_NULLS on. SQL Agent T-SQL
        steps and procedures created with them off would then fail with error 1934. The
        tool finds two rows for one child itself and skips them.
        """
        return self.name != "mssql"

    def filtered_indexes_sql(self) -> str | None:
        """Names of a table's filtered indexes (SQL Server; the table name is the parameter), else None."""
        if self.name == "mssql":
            return "SELECT name FROM sys.indexes WHERE object_id = OBJECT_ID(?) AND has_filter = 1 ORDER BY name"
        return None

    def resolve_table_sql(self) -> str | None:
        """``(schema, table)`` as the database resolves a table name, with the name as the one parameter.

        SQLite has no such function (``catalogue.resolve_table`` reads its catalogue instead).
        """
        if self.name == "mssql":
            return (
                "SELECT s.name, o.name FROM sys.objects AS o JOIN sys.schemas AS s ON s.schema_id = o.schema_id "
                "WHERE o.object_id = OBJECT_ID(?)"
            )
        if self.name == "postgresql":
            return (
                "SELECT n.nspname, c.relname FROM pg_catalog.pg_class AS c "
                "JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace "
                "WHERE c.oid = to_regclass(CAST(? AS TEXT))"
            )
        return None

    # -- DDL -------------------------------------------------------------------

    def create_table_if_missing(self, table: str, body: str) -> str:
        if self.name == "mssql":
            return f"IF OBJECT_ID(N'{table}', N'U') IS NULL CREATE TABLE {table} ({body})"
        return f"CREATE TABLE IF NOT EXISTS {table} ({body})"

    def create_index_if_missing(self, index: str, table: str, column: str, *, unique: bool = False) -> str:
        """An index on one column. A unique one ignores NULLs: SQL Server's is filtered to, as PostgreSQL's
        and SQLite's do by themselves."""
        kind = "UNIQUE INDEX" if unique else "INDEX"
        if self.name == "mssql":
            where = f" WHERE {column} IS NOT NULL" if unique else ""
            return (
                f"IF NOT EXISTS (SELECT 1 FROM sys.indexes WHERE name = N'{index}' "
                f"AND object_id = OBJECT_ID(N'{table}')) "
                f"CREATE {kind} {index} ON {table} ({column}){where}"
            )
        if self.name == "sqlite" and "." in table:
            schema, name = table.split(".", 1)
            return f"CREATE {kind} IF NOT EXISTS {schema}.{index} ON {name} ({column})"
        return f"CREATE {kind} IF NOT EXISTS {index} ON {table} ({column})"

    def column_type(self, column: Column) -> str:
        return {
            "id": self.integer,
            "text": self.short_text.format(n=column.size),
            "long_text": self.text,
            "hash": self.binary32,
            "timestamp": self.timestamp,
            "int": self.integer,
            "flag": self.flag,
        }[column.kind]

    def column_definition(self, column: Column, *, for_add: bool = False) -> str:
        """``name TYPE [DEFAULT x] NULL|NOT NULL``; an added column is NULL unless it has a default."""
        if column.kind == "id":
            return f"{column.name} {self.identity_pk}"
        nullable = column.nullable or (for_add and column.default is None)
        parts = [column.name, self.column_type(column)]
        if column.exact and self.name == "mssql":
            parts.append(f"COLLATE {BINARY_COLLATION}")
        parts.append("NULL" if nullable else "NOT NULL")
        if column.default is not None:
            parts.append(f"DEFAULT {column.default}")
        return " ".join(parts)

    def add_column(self, table: str, column: Column) -> str:
        keyword = "ADD" if self.name == "mssql" else "ADD COLUMN"
        return f"ALTER TABLE {table} {keyword} {self.column_definition(column, for_add=True)}"

    def alter_column_type(self, table: str, column: Column, info: ColumnInfo | None = None) -> str:
        """The DDL that gives ``column`` the type the tool needs, keeping its nullability.

        Never for a key column: ALTER COLUMN cannot change a column a primary key uses.
        """
        if column.kind == "id" or (info is not None and info.key):
            return ""
        new_type = self.column_type(column)
        if self.name == "mssql":
            # SQL Server's ALTER COLUMN sets nullability too: keep what the column has.
            nullable = column.nullable if info is None or info.nullable is None else info.nullable
            return f"ALTER TABLE {table} ALTER COLUMN {column.name} {new_type} {'NULL' if nullable else 'NOT NULL'}"
        if self.name == "postgresql":  # TYPE leaves NOT NULL as it is
            return f"ALTER TABLE {table} ALTER COLUMN {column.name} TYPE {new_type} USING {column.name}::{new_type}"
        # SQLite columns take any value whatever their declared type; there is nothing to change.
        return ""

    # -- catalogue ---------------------------------------------------------------

    def columns_sql(self, qualified: bool, tables: int = 1) -> str:
        """Columns of ``tables`` tables (of one schema when ``qualified``), table by table, each in
        order: (table, schema, name, type, max length, nullable YES/NO, collation, in the primary key 1/0);
        parameters (schema?, table, table, ...)."""
        names = "(" + ", ".join("?" * tables) + ")"
        select = (
            "SELECT c.TABLE_NAME, c.TABLE_SCHEMA, c.COLUMN_NAME, c.DATA_TYPE, c.CHARACTER_MAXIMUM_LENGTH, "
            "c.IS_NULLABLE, c.COLLATION_NAME, "
            "CASE WHEN EXISTS (SELECT 1 FROM INFORMATION_SCHEMA.TABLE_CONSTRAINTS tc "
            "JOIN INFORMATION_SCHEMA.KEY_COLUMN_USAGE k ON k.CONSTRAINT_SCHEMA = tc.CONSTRAINT_SCHEMA "
            "AND k.CONSTRAINT_NAME = tc.CONSTRAINT_NAME "
            "WHERE tc.CONSTRAINT_TYPE = 'PRIMARY KEY' AND tc.TABLE_SCHEMA = c.TABLE_SCHEMA "
            "AND tc.TABLE_NAME = c.TABLE_NAME AND k.COLUMN_NAME = c.COLUMN_NAME) THEN 1 ELSE 0 END "
            "FROM INFORMATION_SCHEMA.COLUMNS c WHERE "
        )
        if qualified:
            return select + f"c.TABLE_SCHEMA = ? AND c.TABLE_NAME IN {names} ORDER BY c.TABLE_NAME, c.ORDINAL_POSITION"
        if self.name == "mssql":
            # Unqualified names resolve to the login's default schema, then dbo.
            return (
                select + f"c.TABLE_SCHEMA IN (SCHEMA_NAME(), 'dbo') AND c.TABLE_NAME IN {names} ORDER BY c.TABLE_NAME, "
                "CASE WHEN c.TABLE_SCHEMA = SCHEMA_NAME() THEN 0 ELSE 1 END, c.ORDINAL_POSITION"
            )
        # PostgreSQL: the first schema on the search_path that has the table.
        return (
            select + f"c.TABLE_SCHEMA = ANY (current_schemas(false)) AND c.TABLE_NAME IN {names} ORDER BY "
            "c.TABLE_NAME, array_position(current_schemas(false), c.TABLE_SCHEMA::name), c.ORDINAL_POSITION"
        )

    def catalogue_name(self, name: str) -> str:
        """PostgreSQL folds unquoted identifiers to lower case, and so does its catalogue."""
        return name.lower() if self.name == "postgresql" else name

    def problem(self, column: Column, info: ColumnInfo) -> str | None:
        """Why the tool cannot use this column as it is, or None."""
        families = _TYPE_FAMILIES.get(self.name)
        if families is None:  # SQLite stores any value in any column
            return None
        kind = column.kind
        data_type = info.data_type
        if column.json and self.name == "postgresql" and data_type in ("json", "jsonb"):
            return None
        if data_type not in families[kind]:
            if kind == "long_text" and data_type in ("ntext", "text") and self.name == "mssql":
                return f"is {info.shown()}, a deprecated type that cannot be compared with '=', which the tool needs"
            if kind == "flag" and data_type == "boolean":
                return "is BOOLEAN; the tool stores 0 and 1"
            return f"is {info.shown()}; the tool needs {self.column_type(column)}"
        if kind in ("text", "long_text") and info.length is not None:
            need = column.min_size
            if kind == "long_text" and need == 0:
                return f"is {info.shown()}: records longer than {info.length} characters would be refused or cut"
            if info.length < need:
                return f"is {info.shown()}: too short, the tool writes values up to {need} characters"
        if kind == "hash" and info.length is not None and info.length < HASH_BYTES:
            return f"is {info.shown()}: too short for a {HASH_BYTES}-byte SHA-256 hash"
        return None

    def warning(self, column: Column, info: ColumnInfo) -> str | None:
        """Works, but may damage data: SQL Server's non-Unicode text types, and a key that ignores case."""
        if self.name == "mssql" and column.exact and info.collation and not _is_binary_collation(info.collation):
            return (
                f"compares ignoring letter case or accents (collation {info.collation}), so ids that differ only in "
                "case would be one child here (the write-back would fail on the second); the table has to be "
                f"rebuilt with the column COLLATE {BINARY_COLLATION} (ask your DBA; 'init-db --print' shows it)"
            )
        if self.name == "mssql" and column.kind == "long_text" and info.data_type in ("varchar", "char"):
            return (
                f"is {info.shown()}: letters outside the server's code page (Łukasz, emoji) are stored as '?'; "
                f"{self.column_type(column)} keeps them"
            )
        return None


SQLITE = Dialect(
    name="sqlite",
    label="SQLite",
    text="TEXT",
    short_text="TEXT",
    identity_pk="INTEGER PRIMARY KEY AUTOINCREMENT",
    binary32="BLOB",
    timestamp="TEXT",
    flag="INTEGER",
    integer="INTEGER",
)
MSSQL = Dialect(
    name="mssql",
    label="Microsoft SQL Server",
    text="NVARCHAR(MAX)",
    short_text="NVARCHAR({n})",
    identity_pk="INT IDENTITY(1,1) NOT NULL PRIMARY KEY",
    binary32="BINARY(32)",
    timestamp="DATETIME",
    flag="BIT",
    integer="INT",
    whoami_sql="SELECT SUSER_SNAME(), DB_NAME()",
    max_identifier=128,
)
# Babelfish for PostgreSQL (Amazon Aurora's, or built from its sources): SQL Server's dialect over
# TDS, told apart by @@VERSION (Database.open_odbc). Where it differs from SQL Server in what the
# tool relies on: HASHBYTES of NVARCHAR text hashes UTF-8 (SQL Server: UTF-16LE).
BABELFISH = replace(MSSQL, label="Babelfish for PostgreSQL (SQL Server's dialect)", nvarchar_bytes="utf-8")
POSTGRES = Dialect(
    name="postgresql",
    label="PostgreSQL",
    text="TEXT",
    short_text="VARCHAR({n})",
    identity_pk="INTEGER GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY",
    binary32="BYTEA",
    timestamp="TIMESTAMP",
    flag="SMALLINT",
    integer="INTEGER",
    whoami_sql="SELECT current_user, current_database()",
    max_identifier=63,  # bytes; the table name is ASCII
)
DIALECTS = {d.name: d for d in (MSSQL, POSTGRES, SQLITE)}  # in the order the docs and --dialect list them


def _is_binary_collation(name: str) -> bool:
    """A SQL Server collation that compares code points (``…_BIN2``, ``…_BIN``; Babelfish reports
    ``bbf_unicode_bin2``)."""
    return bool(re.search(r"_bin2?$", name, re.IGNORECASE))


def dialect_named(name: str) -> Dialect:
    """``mssql`` / ``sqlserver``, ``postgresql`` / ``postgres``, ``sqlite``."""
    key = {"sqlserver": "mssql", "postgres": "postgresql", "pg": "postgresql"}.get(name.lower(), name.lower())
    if key not in DIALECTS:
        raise ConfigError(f"unknown database type {name!r}: use mssql, postgresql or sqlite")
    return DIALECTS[key]


def staging_ddl(dialect: Dialect, table: str) -> str:
    """The staging table as councils' SQL Server DDL creates it (DESIGN §4)."""
    body = ", ".join(dialect.column_definition(c) for c in STAGING_SPEC)
    return dialect.create_table_if_missing(table, body)


# ---------------------------------------------------------------------------
# What the tool makes beside the staging table, named after it: the one place those names are made.
# ---------------------------------------------------------------------------


def ledger_name(table: str) -> str:
    """The submission ledger lives beside the staging table: ``<table>_ledger``."""
    return f"{table}_ledger"


def in_flight_name(table: str) -> str:
    """Batches being sent: ``<table>_in_flight``."""
    return f"{table}_in_flight"


def in_doubt_name(table: str) -> str:
    """Children whose copy at DfE is in doubt: ``<table>_in_doubt``."""
    return f"{table}_in_doubt"


def in_doubt_index_name(in_doubt: str) -> str:
    return f"ix_{in_doubt.rsplit('.', 1)[-1]}_row"


def lock_table_name(table: str) -> str:
    """The run lock table beside the staging table: ``<table>_run_lock``."""
    return f"{table}_run_lock"


def person_index_name(table: str, *, unique: bool = True) -> str:
    return f"{'ux' if unique else 'ix'}_{table.rsplit('.', 1)[-1]}_person_id"


def ledger_index_name(ledger: str) -> str:
    return f"ix_{ledger.rsplit('.', 1)[-1]}_staging_id"


# The longest of those names adds this much to the staging table's own name.
DERIVED_NAME_EXTRA = max(
    len(ledger_name("")),
    len(lock_table_name("")),
    len(person_index_name("")),
    len(ledger_index_name(ledger_name(""))),
    len(in_flight_name("")),
    len(in_doubt_index_name(in_doubt_name(""))),
)


def check_table_name_length(dialect: Dialect, table: str) -> None:
    """Refuse a TABLE_NAME whose derived names the DBMS would cut, onto each other or onto the table itself."""
    limit = dialect.max_identifier
    if limit is None:
        return
    schema, _, name = table.rpartition(".")
    longest = limit - DERIVED_NAME_EXTRA
    if len(name) > longest or len(schema) > limit:
        raise ConfigError(
            f"TABLE_NAME: {table} is too long for {dialect.label}, which keeps names of at most {limit} "
            "characters: the tables and indexes the tool makes beside the staging table are named after it "
            f"(..._ledger, ..._in_doubt, ..._run_lock, ix_..._ledger_staging_id), so its name may have at most "
            f"{longest} characters (this one has {max(len(name), len(schema))}). Use a shorter name for the staging "
            "table"
        )


def staging_index_ddl(dialect: Dialect, table: str) -> str:
    """An index on person_id: unique (one row per child; NULLs allowed, as rows being built have none)
    where the DBMS allows that without conditions on the sessions that write the table."""
    if dialect.person_index_unique:
        return dialect.create_index_if_missing(person_index_name(table), table, "person_id", unique=True)
    return dialect.create_index_if_missing(person_index_name(table, unique=False), table, "person_id")


def _keyed_table_ddl(dialect: Dialect, table: str, spec: Sequence[Column]) -> str:
    """A table of ``spec`` whose first column is its primary key (created only if missing)."""
    columns = [dialect.column_definition(c) for c in spec]
    columns[0] += " PRIMARY KEY"
    return dialect.create_table_if_missing(table, ", ".join(columns))


def ledger_ddl(dialect: Dialect, ledger: str) -> str:
    """The submission ledger: per child, what DfE last acknowledged (DESIGN §4)."""
    return _keyed_table_ddl(dialect, ledger, LEDGER_SPEC)


def ledger_index_ddl(dialect: Dialect, ledger: str) -> str:
    """The ledger by staging row: how a run knows a row whose person_id is not its child's
    la_child_id already has its entry, without reading the row's record."""
    return dialect.create_index_if_missing(ledger_index_name(ledger), ledger, "staging_id")


def in_flight_ddl(dialect: Dialect, in_flight: str) -> str:
    """Batches sent and not yet written back (DESIGN §7, batches in doubt)."""
    return _keyed_table_ddl(dialect, in_flight, IN_FLIGHT_SPEC)


def in_doubt_ddl(dialect: Dialect, in_doubt: str) -> str:
    """Children whose copy at DfE is in doubt (DESIGN §7)."""
    return _keyed_table_ddl(dialect, in_doubt, IN_DOUBT_SPEC)


def in_doubt_index_ddl(dialect: Dialect, in_doubt: str) -> str:
    """The children in doubt by staging row, for a row whose person_id is not its child's la_child_id."""
    return dialect.create_index_if_missing(in_doubt_index_name(in_doubt), in_doubt, "staging_id")


LOCK_NAME_SIZE = 128  # the run lock table's lock_name column
LOCK_HOLDER_SIZE = 200


def lock_ddl(dialect: Dialect, lock_table: str) -> str:
    """The run lock table: one row per staging table being worked on (see ``lock.RunLock``)."""
    collate = f" COLLATE {BINARY_COLLATION}" if dialect.name == "mssql" else ""
    body = (
        f"lock_name {dialect.short_text.format(n=LOCK_NAME_SIZE)}{collate} NOT NULL PRIMARY KEY, "
        f"holder {dialect.short_text.format(n=LOCK_HOLDER_SIZE)} NOT NULL, "
        f"acquired_at {dialect.timestamp} NOT NULL, heartbeat_at {dialect.timestamp} NOT NULL"
    )
    return dialect.create_table_if_missing(lock_table, body)


@dataclass(frozen=True)
class ColumnIssue:
    """A column the tool cannot use (``fix`` is the DDL to run) or should warn about."""

    column: str
    reason: str
    fix: str
    blocking: bool = True


def check_columns(
    dialect: Dialect, table: str, spec: Sequence[Column], present: Sequence[ColumnInfo]
) -> list[ColumnIssue]:
    """Missing and unusable columns of ``table`` against ``spec``, each with the DDL that fixes it."""
    by_name = {c.name: c for c in present}
    issues: list[ColumnIssue] = []
    for column in spec:
        info = by_name.get(column.name)
        if info is None:
            if column.required:
                issues.append(ColumnIssue(column.name, "is missing", dialect.add_column(table, column)))
            continue
        problem = dialect.problem(column, info)
        fix = dialect.alter_column_type(table, column, info)
        if problem and not fix and dialect.name != "sqlite":
            problem += (
                "; it is the table's key, which ALTER COLUMN cannot change: the table has to be rebuilt with the "
                "column as the tool needs it (ask your DBA; 'init-db --print' shows the whole table)"
            )
        if problem:
            issues.append(ColumnIssue(column.name, problem, fix))
            continue
        warning = dialect.warning(column, info)
        if warning:
            issues.append(ColumnIssue(column.name, warning, fix, blocking=False))
    return issues


def sqlite_column_info(name: str, declared: str, *, nullable: bool | None = None, key: bool = False) -> ColumnInfo:
    match = re.match(r"^\s*([A-Za-z ]+?)\s*(?:\(\s*(\d+|max)\s*\))?\s*$", declared, re.IGNORECASE)
    if not match:
        return ColumnInfo(name.lower(), declared.lower(), nullable=nullable, key=key)
    size = match.group(2)
    length = int(size) if size and size.isdigit() else None
    return ColumnInfo(name.lower(), match.group(1).lower(), length, nullable=nullable, key=key)


def dialect_for_dbms(dbms: str) -> Dialect:
    """The dialect for what the connection says it is (``SQL_DBMS_NAME``)."""
    name = dbms.lower()
    if "sql server" in name:
        return MSSQL
    if "postgres" in name:
        return POSTGRES
    raise DatabaseError(
        f"the ODBC connection is to {dbms or 'an unknown database'}; this tool supports Microsoft SQL Server and "
        "PostgreSQL through ODBC, and SQLite as sqlite:///path/to/file.db"
    )


def _naive_utc(value: datetime) -> datetime:
    """Stored as naive UTC, as DATETIME columns expect."""
    if value.tzinfo is not None:
        return value.astimezone(timezone.utc).replace(tzinfo=None)
    return value


@functools.lru_cache(maxsize=256)  # a batch's rows share a handful of receipt times
def _sqlite_timestamp(value: datetime) -> str:
    return _naive_utc(value).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
