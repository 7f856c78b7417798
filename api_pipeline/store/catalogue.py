"""What tables and columns exist, and the server's name and version: the database's catalogue.

Questions asked of a :class:`~api_pipeline.store.db.Database`; each dialect answers them its own way
(SQLite with its PRAGMAs and ``sqlite_master``, the servers with ``INFORMATION_SCHEMA``).
"""

from __future__ import annotations

from api_pipeline.store.columns import ColumnInfo
from api_pipeline.store.db import Database, validate_table_name
from api_pipeline.store.dialect import ServerInfo


def columns(db: Database, table: str) -> list[ColumnInfo] | None:
    """The table's columns (names in lower case), or None when the table does not exist."""
    return columns_of(db, [table])[table]


def columns_of(db: Database, tables: list[str]) -> dict[str, list[ColumnInfo] | None]:
    """Each table's columns (names in lower case), or None for a table that does not exist; one
    query for them all when they are named alike (all in one schema, or none qualified)."""
    for table in tables:
        validate_table_name(table)
    return db.dialect.columns_of(db, tables)


def resolve_table(db: Database, table: str) -> str | None:
    """``schema.table`` as the database resolves ``table`` (its spelling, default schema and
    search order), or None when there is no such table. ``SSD_Staging``, ``dbo.ssd_staging``
    and ``ssd_staging`` can all be one table; this gives each of them the same name."""
    validate_table_name(table)
    return db.dialect.resolve_table(db, table)


def column_names(db: Database, table: str) -> list[str] | None:
    """The table's columns in lower case, or None when the table does not exist."""
    found = columns(db, table)
    return None if found is None else [c.name for c in found]


def server_info(db: Database) -> ServerInfo:
    """DBMS, version, driver and who we are logged in as, for test-db."""
    return db.dialect.server_info(db)
