"""What every database dialect answers: the base class :class:`Dialect`, one subclass per DBMS.

Every difference between the DBMSs the tool supports lives in a subclass (``sqlite``,
``sql_server``, ``postgresql``): column types, the SQL forms that differ, the catalogue
queries, session settings and tuning. The base class asks the questions, and answers with
standard SQL where the DBMSs mostly agree; :class:`ServerDialect` adds what the two
client-server DBMSs share (their ``INFORMATION_SCHEMA``). The rest of the package asks
``db.dialect`` and never tests which DBMS it is.
"""

from __future__ import annotations

import functools
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, ClassVar, Protocol

from api_pipeline.store.columns import HASH_BYTES, LONG_TEXT, Column, ColumnInfo, Kinds
from api_pipeline.store.odbc import UnreadableText


class Session(Protocol):
    """What a dialect's catalogue questions need of a connection (``db.Database`` is one)."""

    @property
    def path(self) -> str | None: ...

    @property
    def driver_file(self) -> str: ...

    @property
    def tds_version_asked(self) -> str | None: ...

    def query(self, sql: str, params: Sequence[Any] = ()) -> Iterator[tuple[Any, ...]]: ...

    def scalar(self, sql: str, params: Sequence[Any] = ()) -> Any: ...

    def odbc_info(self, name: str) -> str: ...


@dataclass(frozen=True)
class ServerInfo:
    """What test-db reports."""

    dbms: str
    version: str
    driver: str
    driver_version: str
    login: str
    database: str
    # SQL Server: the TDS protocol version of this connection, and where that was learnt ("" elsewhere).
    protocol: str = ""


class Dialect(ABC):
    """What differs between the DBMSs: types, row limiting, DDL guards, catalogue queries, sessions.

    One instance per DBMS (``dialects.DIALECTS``). A new DBMS is one new subclass: the abstract
    methods are the questions with no common answer; the others may be overridden where it differs.
    """

    name: ClassVar[str]  # as DB_DIALECT and init-db --dialect name it
    label: ClassVar[str]
    # Column types.
    text: ClassVar[str]
    short_text: ClassVar[str]  # with {n}, the length
    identity_pk: ClassVar[str]
    binary32: ClassVar[str]
    timestamp: ClassVar[str]
    flag: ClassVar[str]
    integer: ClassVar[str]
    # Login and database, for test-db (None: the DBMS has neither).
    whoami_sql: ClassVar[str | None] = None
    # The longest name the DBMS keeps whole (PostgreSQL silently cuts longer ones); None: no limit.
    max_identifier: ClassVar[int | None] = None
    # Which declared types the DBMS can use for each kind of column; None: any (SQLite).
    type_families: ClassVar[dict[str, frozenset[str]] | None] = None
    # Types a JSON column may also have (PostgreSQL's JSON and JSONB).
    json_types: ClassVar[frozenset[str]] = frozenset()
    # Long text types that work but cannot be compared with '=' (SQL Server's NTEXT and TEXT).
    deprecated_text_types: ClassVar[frozenset[str]] = frozenset()
    # What keeps a key column (Column.exact) compared character for character, in its DDL ("": nothing needed).
    key_collation: ClassVar[str] = ""
    # SQL Server's dialect: the bytes ``HASHBYTES`` hashes for NVARCHAR text (see ``SqlServer.expected_text``).
    nvarchar_bytes: ClassVar[str] = "utf-16-le"
    # ``INSERT ... ON CONFLICT (key) DO UPDATE`` (SQLite, PostgreSQL); SQL Server deletes and inserts.
    upserts: ClassVar[bool] = True
    # Many rows' updates in one ``UPDATE ... FROM (VALUES ...)`` (PostgreSQL: psqlODBC's executemany
    # makes one round trip per row).
    set_based_updates: ClassVar[bool] = False
    # SQLite's CURRENT_TIMESTAMP is UTC (and the demo writes UTC); elsewhere a naive DATETIME is
    # the server's local time (GETDATE(), now()).
    naive_timestamps_are_utc: ClassVar[bool] = False
    # Whether init-db's person_id index enforces one row per child (see SqlServer for why not there).
    person_index_unique: ClassVar[bool] = True

    def __repr__(self) -> str:
        return f"<{type(self).__name__} dialect {self.name!r}>"

    # -- queries ---------------------------------------------------------------

    def select_top(self, columns: str, rest: str) -> str:
        """``SELECT <columns> <rest>`` limited to ``?`` rows (see :meth:`limit_first` for where ``?`` goes)."""
        return f"SELECT {columns} {rest} LIMIT ?"

    def limit_first(self) -> bool:
        """True when the row limit parameter comes before the others (T-SQL ``TOP``)."""
        return False

    def same_text(self, column: str) -> str:
        """``column = ?`` compared exactly, character for character (the optimistic check must see a
        council's case-only edit)."""
        return f"{column} = ?"

    def same_columns(self, a: str, b: str) -> str:
        """Two text columns equal character for character (see :meth:`same_text`)."""
        return f"{a} = {b}"

    def exact(self, expression: str) -> str:
        """A text ``expression`` compared character for character with a key column (see
        :attr:`key_collation`)."""
        return expression

    def trim(self, expression: str) -> str:
        """Leading and trailing spaces removed."""
        return f"TRIM({expression})"

    def input_sizes(self, kinds: Kinds | None, driver_file: str = "") -> list[Any] | None:
        """``cursor.setinputsizes`` for these parameters, or None when the driver's guesses are right."""
        return None

    def timestamp_param(self, value: datetime | None) -> Any:
        """A time as a parameter, in the form the tool stores times in (naive UTC)."""
        return None if value is None else naive_utc(value)

    def same_stored_text(self, column: str) -> str:
        """``column`` compared exactly with one parameter, :meth:`expected_text` (the optimistic check)."""
        return self.same_text(column)

    def stored_text(self, column: str) -> str:
        """What to read of a long text column to compare it with :meth:`expected_text`."""
        return column

    def expected_text(self, text: str | None) -> Any:
        """The value :meth:`stored_text` has when the column holds ``text``. Got wrong, no row would
        ever pass the optimistic check: every row would stay pending and be sent again each night."""
        return self.comparable(text)

    def comparable(self, stored: Any) -> Any:
        """A value :meth:`stored_text` read, as :meth:`expected_text` gives it (drivers return bytearray;
        text that is not valid as stored compares as its bytes)."""
        if isinstance(stored, UnreadableText):
            return stored.raw
        return bytes(stored) if isinstance(stored, (bytes, bytearray, memoryview)) else stored

    @property
    def expected_kind(self) -> str:
        """The parameter kind of :meth:`expected_text`."""
        return LONG_TEXT

    @abstractmethod
    def session_sql(self, lock_wait_ms: int) -> tuple[str, ...]:
        """Run once after connecting (``lock_wait_ms``: how long one statement waits for a lock)."""

    def uses_microsoft_driver(self, driver_file: str) -> bool:
        """SQL Server through one of Microsoft's own ODBC drivers: their output converters and
        ``fast_executemany`` (a whole parameter array at once) are proven there only."""
        return False

    @property
    @abstractmethod
    def server_utc_now(self) -> str:
        """SQL for the database server's time now, in UTC, in the form the tool stores times in.

        For the run lock, whose ages must not depend on any one machine's clock (DESIGN §7).
        """

    @abstractmethod
    def seconds_since(self, column: str) -> str:
        """SQL for the seconds from the time in ``column`` to :attr:`server_utc_now`: negative when it
        is ahead of the server's clock. Worked out by the server, so nothing depends on how a driver
        returns the column's type."""

    def select_for_update(self, columns: str, table: str, rest: str) -> str:
        """``SELECT <columns> FROM <table> WHERE <rest>`` that locks the rows read until the transaction ends."""
        return f"SELECT {columns} FROM {table} WHERE {rest}"

    def filtered_indexes_sql(self) -> str | None:
        """Names of a table's filtered indexes (the table name is the parameter), or None: the DBMS has none."""
        return None

    # -- DDL -------------------------------------------------------------------

    def create_table_if_missing(self, table: str, body: str) -> str:
        return f"CREATE TABLE IF NOT EXISTS {table} ({body})"

    def create_index_if_missing(self, index: str, table: str, column: str, *, unique: bool = False) -> str:
        """An index on one column. A unique one ignores NULLs (PostgreSQL's and SQLite's do by themselves)."""
        kind = "UNIQUE INDEX" if unique else "INDEX"
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
        if column.exact and self.key_collation:
            parts.append(self.key_collation)
        parts.append("NULL" if nullable else "NOT NULL")
        if column.default is not None:
            parts.append(f"DEFAULT {column.default}")
        return " ".join(parts)

    def add_column(self, table: str, column: Column) -> str:
        return f"ALTER TABLE {table} ADD COLUMN {self.column_definition(column, for_add=True)}"

    @abstractmethod
    def alter_column_type(self, table: str, column: Column, info: ColumnInfo | None = None) -> str:
        """The DDL that gives ``column`` the type the tool needs, keeping its nullability ("": none).

        Never for a key column: ALTER COLUMN cannot change a column a primary key uses.
        """

    # -- the catalogue -----------------------------------------------------------

    @abstractmethod
    def columns_of(self, db: Session, tables: Sequence[str]) -> dict[str, list[ColumnInfo] | None]:
        """Each table's columns (names in lower case), or None for a table that does not exist."""

    @abstractmethod
    def resolve_table(self, db: Session, table: str) -> str | None:
        """``schema.table`` as the database resolves ``table``, or None when there is no such table."""

    @abstractmethod
    def server_info(self, db: Session) -> ServerInfo:
        """DBMS, version, driver and who we are logged in as, for test-db."""

    def catalogue_name(self, name: str) -> str:
        """A name as the catalogue spells it."""
        return name

    def problem(self, column: Column, info: ColumnInfo) -> str | None:
        """Why the tool cannot use this column as it is, or None."""
        families = self.type_families
        if families is None:  # the DBMS stores any value in any column
            return None
        kind = column.kind
        data_type = info.data_type
        if column.json and data_type in self.json_types:
            return None
        if data_type not in families[kind]:
            if kind == "long_text" and data_type in self.deprecated_text_types:
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
        """Works, but may damage data (None: nothing to say)."""
        return None

    # -- a run's connections -------------------------------------------------------

    def tune_for_bulk_writes(self, connection: Any) -> bool:
        """Before a run's write-backs, on the run's connection; True when the run should then also
        have a background checkpointer and a reading connection (SQLite in WAL mode)."""
        return False


class ServerDialect(Dialect):
    """A client-server DBMS reached through ODBC: its catalogue is ``INFORMATION_SCHEMA``."""

    @abstractmethod
    def _unqualified_tables(self, select: str, names: str) -> str:
        """``select`` completed for table names without a schema, resolved as the DBMS resolves them."""

    @abstractmethod
    def resolve_table_sql(self) -> str:
        """``(schema, table)`` as the database resolves a table name, with the name as the one parameter."""

    def protocol(self, db: Session) -> str:
        """The wire protocol's version, for test-db ("": nothing worth saying)."""
        return ""

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
        return self._unqualified_tables(select, names)

    def columns_of(self, db: Session, tables: Sequence[str]) -> dict[str, list[ColumnInfo] | None]:
        """One query for them all when they are named alike (all in one schema, or none qualified)."""
        schemas = {table.split(".", 1)[0] if "." in table else None for table in tables}
        if len(schemas) > 1:
            return {table: self.columns_of(db, [table])[table] for table in tables}
        schema_name: str | None = next(iter(schemas))
        wanted = {self.catalogue_name(table.rsplit(".", 1)[-1]).lower(): table for table in tables}
        params = ([self.catalogue_name(schema_name)] if schema_name else []) + [
            self.catalogue_name(table.rsplit(".", 1)[-1]) for table in tables
        ]
        found: dict[str, list[ColumnInfo] | None] = dict.fromkeys(tables)
        schema_seen: dict[str, Any] = {}
        sql = self.columns_sql(schema_name is not None, len(tables))
        for table_name, schema, name, data_type, length, nullable, collation, key in db.query(sql, params):
            owner = wanted.get(str(table_name).lower())
            if owner is None:
                continue
            if schema_seen.setdefault(owner, schema) != schema:  # the same name in a schema further down the search
                continue
            size = None if length is None or int(length) < 0 else int(length)
            if str(data_type).lower() in ("text", "ntext", "bytea"):
                size = None
            info = ColumnInfo(
                str(name).lower(),
                str(data_type).lower(),
                size,
                nullable=None if nullable is None else str(nullable).upper() == "YES",
                key=bool(key),
                collation=None if collation is None else str(collation),
            )
            found[owner] = [*(found[owner] or []), info]
        return found

    def resolve_table(self, db: Session, table: str) -> str | None:
        for schema, name in db.query(self.resolve_table_sql(), (table,)):
            if schema is not None and name is not None:
                return f"{schema}.{name}"
        return None

    def server_info(self, db: Session) -> ServerInfo:
        login, database = "", ""
        if self.whoami_sql:
            for row in db.query(self.whoami_sql):
                login, database = str(row[0] or ""), str(row[1] or "")
        return ServerInfo(
            dbms=db.odbc_info("SQL_DBMS_NAME"),
            version=db.odbc_info("SQL_DBMS_VER"),
            driver=db.odbc_info("SQL_DRIVER_NAME"),
            driver_version=db.odbc_info("SQL_DRIVER_VER"),
            login=login,
            database=database,
            protocol=self.protocol(db),
        )


def naive_utc(value: datetime) -> datetime:
    """Stored as naive UTC, as DATETIME columns expect."""
    if value.tzinfo is not None:
        return value.astimezone(timezone.utc).replace(tzinfo=None)
    return value


@functools.lru_cache(maxsize=256)  # a batch's rows share a handful of receipt times
def text_timestamp(value: datetime) -> str:
    """A time as the text ``YYYY-MM-DD HH:MM:SS.SSS`` (naive UTC), for a DBMS that keeps times as text."""
    return naive_utc(value).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
