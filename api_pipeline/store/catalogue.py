"""What tables and columns exist, and the server's name and version: the database's catalogue.

Questions asked of a :class:`~api_pipeline.store.db.Database`. The SQL that differs between the DBMSs
is in ``dialects``; a SQLite file is read with SQLite's own PRAGMAs and catalogue tables.
"""

from __future__ import annotations

import logging
import re
import sys
from dataclasses import dataclass
from typing import Any

from api_pipeline.errors import DatabaseError
from api_pipeline.store.db import SQLITE_VERSION, Database, validate_table_name
from api_pipeline.store.dialect import ColumnInfo, sqlite_column_info
from api_pipeline.store.odbc import is_freetds_driver, process_identity

log = logging.getLogger(__name__)


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


def columns(db: Database, table: str) -> list[ColumnInfo] | None:
    """The table's columns (names in lower case), or None when the table does not exist."""
    return columns_of(db, [table])[table]


def columns_of(db: Database, tables: list[str]) -> dict[str, list[ColumnInfo] | None]:
    """Each table's columns (names in lower case), or None for a table that does not exist; one
    query for them all when they are named alike (all in one schema, or none qualified)."""
    for table in tables:
        validate_table_name(table)
    if db.is_sqlite:
        return {table: _sqlite_columns(db, table) for table in tables}
    schemas = {table.split(".", 1)[0] if "." in table else None for table in tables}
    if len(schemas) > 1:
        return {table: columns_of(db, [table])[table] for table in tables}
    schema_name: str | None = next(iter(schemas))
    wanted = {db.dialect.catalogue_name(table.rsplit(".", 1)[-1]).lower(): table for table in tables}
    params = ([db.dialect.catalogue_name(schema_name)] if schema_name else []) + [
        db.dialect.catalogue_name(table.rsplit(".", 1)[-1]) for table in tables
    ]
    found: dict[str, list[ColumnInfo] | None] = dict.fromkeys(tables)
    schema_seen: dict[str, Any] = {}
    sql = db.dialect.columns_sql(schema_name is not None, len(tables))
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


def _sqlite_columns(db: Database, table: str) -> list[ColumnInfo] | None:
    if "." in table:
        schema, name = table.split(".", 1)
        rows = list(db.query(f"PRAGMA {schema}.table_info({name})"))
    else:
        rows = list(db.query(f"PRAGMA table_info({table})"))
    return [sqlite_column_info(str(r[1]), str(r[2] or ""), nullable=not r[3], key=bool(r[5])) for r in rows] or None


def resolve_table(db: Database, table: str) -> str | None:
    """``schema.table`` as the database resolves ``table`` (its spelling, default schema and
    search order), or None when there is no such table. ``SSD_Staging``, ``dbo.ssd_staging``
    and ``ssd_staging`` can all be one table; this gives each of them the same name."""
    validate_table_name(table)
    if db.is_sqlite:
        return _resolve_sqlite_table(db, table)
    sql = db.dialect.resolve_table_sql()
    for schema, name in db.query(sql or "", (table,)):
        if schema is not None and name is not None:
            return f"{schema}.{name}"
    return None


def _resolve_sqlite_table(db: Database, table: str) -> str | None:
    schemas = [str(row[1]) for row in db.query("PRAGMA database_list")]
    if "." in table:
        wanted, name = table.split(".", 1)
        order = [s for s in schemas if s.lower() == wanted.lower()]
    else:  # temp first, then main, then attached databases in the order they were attached
        name = table
        order = [s for s in schemas if s == "temp"] + [s for s in schemas if s != "temp"]
    for schema in order:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", schema):  # it goes into SQL text
            continue
        catalogue = "sqlite_temp_master" if schema == "temp" else f"{schema}.sqlite_master"
        for (stored,) in db.query(
            f"SELECT name FROM {catalogue} WHERE type IN ('table', 'view') AND name = ? COLLATE NOCASE",  # noqa: S608
            (name,),
        ):
            return f"{schema}.{stored}"
    return None


def column_names(db: Database, table: str) -> list[str] | None:
    """The table's columns in lower case, or None when the table does not exist."""
    found = columns(db, table)
    return None if found is None else [c.name for c in found]


def server_info(db: Database) -> ServerInfo:
    """DBMS, version, driver and who we are logged in as, for test-db."""
    if db.is_sqlite:
        return ServerInfo(
            dbms="SQLite",
            version=SQLITE_VERSION,
            driver="Python sqlite3 module",
            driver_version=sys.version.split()[0],
            login=f"file access as {process_identity()}",
            database=db.path or "",
        )
    login, database = "", ""
    if db.dialect.whoami_sql:
        for row in db.query(db.dialect.whoami_sql):
            login, database = str(row[0] or ""), str(row[1] or "")
    return ServerInfo(
        dbms=db.odbc_info("SQL_DBMS_NAME"),
        version=db.odbc_info("SQL_DBMS_VER"),
        driver=db.odbc_info("SQL_DRIVER_NAME"),
        driver_version=db.odbc_info("SQL_DRIVER_VER"),
        login=login,
        database=database,
        protocol=tds_protocol(db) if db.dialect.name == "mssql" else "",
    )


# sys.dm_exec_connections.protocol_version's high byte: 0x70 to 0x74 for TDS 7.0 to 7.4, 0x08 for TDS 8.0.
_TDS_VERSION_BYTE = re.compile(r"^(?:7[0-4]|08)$")


def tds_version(protocol_version: int) -> str | None:
    """``7.4`` for 0x74000004 (SQL Server's number for the TDS version of a connection), or None."""
    high = f"{(int(protocol_version) >> 24) & 0xFF:02x}"
    if not _TDS_VERSION_BYTE.match(high):
        return None
    return "8.0" if high == "08" else f"{high[0]}.{high[1]}"


def tds_protocol(db: Database) -> str:
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
