"""init-db: creates what is missing (staging table, unique person_id index, ledger, run lock), never alters.

SQLite here; PostgreSQL in test_postgres.py. ``--print`` output is checked by running
it (SQLite) and by parsing it as T-SQL (SQL Server).
"""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

import pytest

from api_pipeline.cli import diagnostics
from api_pipeline.cli.diagnostics import init_db
from api_pipeline.errors import ConfigError, DatabaseError
from api_pipeline.rehearsal.synthetic import make_children
from api_pipeline.settings.config import load_settings
from api_pipeline.store.db import Database
from api_pipeline.store.staging import StagingTable
from conftest import TABLE, ctx, insert


def printed(dialect: str, table: str = TABLE) -> list[str]:
    context = ctx()
    settings = load_settings(command="init-db --print", environ={"TABLE_NAME": table})
    assert init_db(settings, context, True, dialect=dialect) == 0
    script = re.sub(r"(?m)^--.*\n", "", context.out.getvalue())  # type: ignore[attr-defined]
    return [s for s in script.split(";\n") if s.strip()]


def sqlite_settings(path: Path):
    return load_settings(command="init-db", environ={"DB_CONNECTION_STRING": f"sqlite:///{path.as_posix()}"})


def test_init_db_creates_everything_on_a_new_sqlite_database(tmp_path):
    settings = sqlite_settings(tmp_path / "new.db")
    first = ctx()
    assert init_db(settings, first, False) == 0
    text = first.out.getvalue()
    for line in (
        f"staging table {TABLE}: created",
        f"unique index on person_id on {TABLE}: created",
        f"ledger table {TABLE}_ledger: created",
        f"in-flight table {TABLE}_in_flight: created",
        f"in-doubt table {TABLE}_in_doubt: created",
        f"run lock table {TABLE}_run_lock: created",
    ):
        assert line in text
    assert diagnostics.test_schema(settings, ctx()) == 0
    # One row per child.
    children = list(make_children(2, seed=1))
    insert(tmp_path / "new.db", children)
    with pytest.raises(DatabaseError, match="UNIQUE"):
        insert(tmp_path / "new.db", children[:1])
    again = ctx()
    assert init_db(settings, again, False) == 0
    assert again.out.getvalue().count("already exists, left as it is") == 5


def test_init_db_leaves_an_existing_table_exactly_as_it_is(db_path):
    """A council's own table (made by its SQL, here without the index) is not touched."""
    with sqlite3.connect(db_path) as conn:
        before = conn.execute("SELECT sql FROM sqlite_master WHERE name = ?", (TABLE,)).fetchone()
    context = ctx()
    settings = load_settings(command="init-db", environ={"DB_CONNECTION_STRING": f"sqlite:///{db_path.as_posix()}"})
    assert init_db(settings, context, False) == 0
    assert f"staging table {TABLE}: already exists, left as it is" in context.out.getvalue()
    assert "unique index" not in context.out.getvalue()
    with sqlite3.connect(db_path) as conn:
        assert conn.execute("SELECT sql FROM sqlite_master WHERE name = ?", (TABLE,)).fetchone() == before
        assert conn.execute(
            "SELECT COUNT(*) FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL AND tbl_name = ?", (TABLE,)
        ).fetchone() == (0,)
        assert conn.execute(f"SELECT COUNT(*) FROM {TABLE}_ledger").fetchone() == (0,)


def test_printed_sqlite_ddl_runs_and_makes_a_usable_table(tmp_path):
    statements = printed("sqlite")
    assert len(statements) == 8
    with sqlite3.connect(tmp_path / "printed.db") as conn:
        for statement in statements:
            conn.execute(statement)
    with Database.open_sqlite(tmp_path / "printed.db") as db:
        table = StagingTable(db, TABLE)
        assert table.column_issues() == [] and table.ledger_issues() == []


def test_printed_sql_server_ddl_is_valid_tsql():
    from fake_sql_server import assert_tsql

    statements = printed("mssql", "ssd_development.ssd_api_data_staging")
    assert len(statements) == 8
    assert statements[0].startswith("IF OBJECT_ID(N'ssd_development.ssd_api_data_staging', N'U') IS NULL")
    assert "json_payload NVARCHAR(MAX) NOT NULL" in statements[0]
    for statement in statements:
        assert_tsql(statement)


def test_sql_server_person_id_index_is_not_filtered_and_init_db_says_why():
    """Issue 18.6: a filtered index makes every session writing the table need QUOTED_IDENTIFIER and
    ANSI_NULLS on (error 1934 in SQL Agent steps and procedures made with them off)."""
    from sqlglot import exp, parse_one

    statements = printed("mssql", "ssd_development.ssd_api_data_staging")
    index = parse_one(statements[1], read="tsql").find(exp.Create)
    assert index is not None and index.kind == "INDEX"
    assert not index.args.get("unique")
    assert index.find(exp.Where) is None  # no filter
    assert "IS NOT NULL" not in statements[1]
    context = ctx()
    settings = load_settings(command="init-db --print", environ={"TABLE_NAME": TABLE})
    assert init_db(settings, context, True, dialect="mssql") == 0
    text = context.out.getvalue()  # type: ignore[attr-defined]
    assert "-- index on person_id: " in text and "not unique on SQL Server" in text
    assert "QUOTED_IDENTIFIER and ANSI_NULLS" in text and "error 1934" in text
    # PostgreSQL and SQLite keep one row per child in the index: theirs allow NULLs unfiltered.
    for dialect in ("postgresql", "sqlite"):
        assert "CREATE UNIQUE INDEX" in printed(dialect)[1] and "WHERE" not in printed(dialect)[1]


def test_printed_postgresql_ddl_parses():
    sqlglot = pytest.importorskip("sqlglot")
    for statement in printed("postgresql"):
        sqlglot.parse_one(statement, read="postgres", error_level=sqlglot.ErrorLevel.RAISE)


def test_init_db_needs_a_connection_unless_printing_for_a_named_dialect():
    settings = load_settings(command="init-db --print", environ={})
    with pytest.raises(ConfigError, match="--dialect"):
        init_db(settings, ctx(), False)
    with pytest.raises(ConfigError, match="unknown database type"):
        init_db(settings, ctx(), True, dialect="oracle")


def test_dialect_must_match_the_database(db_path):
    settings = load_settings(command="init-db", environ={"DB_CONNECTION_STRING": f"sqlite:///{db_path.as_posix()}"})
    with pytest.raises(ConfigError, match="does not match"):
        init_db(settings, ctx(), False, dialect="mssql")
    context = ctx()
    assert init_db(settings, context, True) == 0  # --print with the connection's own dialect
    assert "CREATE TABLE IF NOT EXISTS" in context.out.getvalue()
