"""The dialects the tool speaks, one instance of each, and how one is chosen.

A new DBMS is a new subclass of :class:`~api_pipeline.store.dialect.Dialect` in a module of its own,
and its line here.
"""

from __future__ import annotations

from api_pipeline.errors import ConfigError, DatabaseError
from api_pipeline.store.dialect import Dialect
from api_pipeline.store.postgresql import PostgreSQL
from api_pipeline.store.sql_server import Babelfish, SqlServer
from api_pipeline.store.sqlite import SQLite

SQLITE = SQLite()
MSSQL = SqlServer()
BABELFISH = Babelfish()  # told apart from SQL Server by @@VERSION, once connected
POSTGRES = PostgreSQL()
DIALECTS: dict[str, Dialect] = {d.name: d for d in (MSSQL, POSTGRES, SQLITE)}  # in the order the docs list them


def dialect_named(name: str) -> Dialect:
    """``mssql`` / ``sqlserver``, ``postgresql`` / ``postgres``, ``sqlite``."""
    key = {"sqlserver": "mssql", "postgres": "postgresql", "pg": "postgresql"}.get(name.lower(), name.lower())
    if key not in DIALECTS:
        raise ConfigError(f"unknown database type {name!r}: use mssql, postgresql or sqlite")
    return DIALECTS[key]


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
