"""The dialects as a module: one class per database, each answering every question the base class asks,
and no switch on a dialect's name left where a method should answer."""

from __future__ import annotations

import ast
import inspect
from datetime import datetime, timezone
from pathlib import Path

import pytest

from api_pipeline.store import dialect as dialect_module
from api_pipeline.store.columns import BINARY, LEDGER_SPEC, LONG_TEXT, STAGING_SPEC
from api_pipeline.store.db import Database
from api_pipeline.store.dialect import Dialect, ServerDialect
from api_pipeline.store.dialects import BABELFISH, DIALECTS, MSSQL, POSTGRES, SQLITE, dialect_for_dbms, dialect_named
from api_pipeline.store.sqlite import SQLite
from api_pipeline.store.staging import StagingTable
from api_pipeline.store.tables import check_columns, ledger_ddl, lock_ddl, staging_ddl

PACKAGE = Path(dialect_module.__file__).resolve().parents[1]
EVERY_DIALECT = [*DIALECTS.values(), BABELFISH]
# What a DBMS must say about itself: a subclass that leaves one out is not a dialect.
DECLARED = ("name", "label", "text", "short_text", "identity_pk", "binary32", "timestamp", "flag", "integer")


def test_the_registry_has_one_instance_of_each_dialect_class_under_its_own_name() -> None:
    assert list(DIALECTS) == ["mssql", "postgresql", "sqlite"]
    assert [type(d).__name__ for d in DIALECTS.values()] == ["SqlServer", "PostgreSQL", "SQLite"]
    for name, dialect in DIALECTS.items():
        assert dialect.name == name and dialect_named(name) is dialect
    assert dialect_named("sqlserver") is MSSQL and dialect_named("postgres") is POSTGRES
    assert dialect_for_dbms("Microsoft SQL Server") is MSSQL and dialect_for_dbms("PostgreSQL") is POSTGRES
    assert isinstance(BABELFISH, type(MSSQL)) and BABELFISH.name == "mssql" and BABELFISH.nvarchar_bytes == "utf-8"


@pytest.mark.parametrize("dialect", EVERY_DIALECT, ids=lambda d: d.label)
def test_each_dialect_answers_every_question_the_base_class_asks(dialect: Dialect) -> None:
    assert not getattr(type(dialect), "__abstractmethods__", None)
    for name in DECLARED:
        assert isinstance(getattr(dialect, name), str) and getattr(dialect, name), name
    asked = {name for name, _ in inspect.getmembers(Dialect) if not name.startswith("_")}
    for name in sorted(asked):
        assert getattr(dialect, name) is not None or name in ("whoami_sql", "max_identifier", "type_families"), name
    when = datetime(2025, 3, 1, 12, 0, 0, 123000, tzinfo=timezone.utc)
    # The SQL forms, each a statement or part of one (their exact text is checked per DBMS elsewhere).
    assert dialect.select_top("id", "FROM t").startswith("SELECT ")
    assert "?" in dialect.same_text("c") and "?" in dialect.same_stored_text("c")
    assert "c" in dialect.stored_text("c") and "c" in dialect.exact("c") and "c" in dialect.trim("c")
    assert "a" in dialect.same_columns("a", "b") and "b" in dialect.same_columns("a", "b")
    assert dialect.select_for_update("id", "t", "id = ?").startswith("SELECT id FROM t")
    assert "c" in dialect.seconds_since("c") and dialect.server_utc_now
    assert all(isinstance(sql, str) for sql in dialect.session_sql(1000))
    assert dialect.timestamp_param(None) is None and dialect.timestamp_param(when) is not None
    assert dialect.expected_kind in (LONG_TEXT, BINARY)
    assert dialect.expected_text("abc") == dialect.comparable(dialect.expected_text("abc"))
    assert isinstance(dialect.limit_first(), bool)
    # The DDL, derived from the one declaration of each table's columns.
    for ddl in (staging_ddl(dialect, "t"), ledger_ddl(dialect, "t_ledger"), lock_ddl(dialect, "t_run_lock")):
        assert "CREATE TABLE" in ddl
    for column in STAGING_SPEC:
        assert dialect.column_definition(column).startswith(column.name)
        assert dialect.add_column("t", column).startswith("ALTER TABLE t ADD")
        assert isinstance(dialect.alter_column_type("t", column), str)
    issues = check_columns(dialect, "t_ledger", LEDGER_SPEC, [])
    assert [(i.column, i.reason) for i in issues] == [(c.name, "is missing") for c in LEDGER_SPEC if c.required]
    assert all(i.fix.startswith("ALTER TABLE t_ledger ADD") for i in issues)


@pytest.mark.parametrize("dialect", [MSSQL, POSTGRES], ids=lambda d: d.label)
def test_a_server_dialect_reads_the_information_schema(dialect: Dialect) -> None:
    assert isinstance(dialect, ServerDialect)
    assert "INFORMATION_SCHEMA.COLUMNS" in dialect.columns_sql(qualified=False, tables=2)
    assert dialect.resolve_table_sql().count("?") == 1


def test_adding_a_dialect_is_one_class_and_an_unfinished_one_is_refused() -> None:
    class Unfinished(Dialect):
        name = "unfinished"

    with pytest.raises(TypeError, match="abstract"):
        Unfinished()  # type: ignore[abstract]

    class Quoted(SQLite):
        """A DBMS like SQLite that wants its own CREATE guard: one class, nothing else to touch."""

        name = "quoted"
        label = "Quoted"

        def create_table_if_missing(self, table: str, body: str) -> str:
            return f'CREATE TABLE IF NOT EXISTS "{table}" ({body})'

    assert staging_ddl(Quoted(), "t").startswith('CREATE TABLE IF NOT EXISTS "t" (id INTEGER PRIMARY KEY')


def _name_switches(path: Path) -> list[str]:
    """``x.name == "..."``, ``x.name != ...``, ``x.name in (...)`` where ``x`` is a dialect (or ``self``
    in a dialect module), and ``is_sqlite`` read outside ``db.Database``."""
    found = []
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            for side in (node.left, *node.comparators):
                if (
                    isinstance(side, ast.Attribute)
                    and side.attr == "name"
                    and isinstance(side.value, (ast.Name, ast.Attribute))
                    and (
                        getattr(side.value, "attr", None) == "dialect"
                        or getattr(side.value, "id", "") in ("self", "dialect")
                    )
                    and any(isinstance(c, (ast.Constant, ast.Tuple, ast.List)) for c in node.comparators)
                ):
                    found.append(f"{path.name}:{node.lineno}")
        if isinstance(node, ast.Attribute) and node.attr == "is_sqlite" and path.name != "db.py":
            found.append(f"{path.name}:{node.lineno} (is_sqlite)")
    return found


def test_no_switch_on_a_dialect_name_remains_where_a_method_should_answer() -> None:
    found = [hit for path in sorted(PACKAGE.rglob("*.py")) for hit in _name_switches(path)]
    assert found == []


def test_the_switch_finder_finds_a_switch(tmp_path: Path) -> None:
    sample = tmp_path / "staging.py"
    sample.write_text('def f(db):\n    return db.dialect.name == "mssql" or db.is_sqlite\n', encoding="utf-8")
    assert _name_switches(sample) == ["staging.py:2", "staging.py:2 (is_sqlite)"]


def test_the_sqlite_catalogue_is_read_by_its_dialect(tmp_path: Path) -> None:
    with Database.open_sqlite(tmp_path / "s.db") as db:
        StagingTable(db, "Staging").create_staging_table()
        assert SQLITE.resolve_table(db, "staging") == "main.Staging"
        assert SQLITE.resolve_table(db, "nowhere") is None
        found = SQLITE.columns_of(db, ["Staging", "nowhere"])
        assert [c.name for c in found["Staging"] or []] == [c.name for c in STAGING_SPEC]
        assert found["nowhere"] is None
        assert SQLITE.server_info(db).dbms == "SQLite"


def test_the_rows_a_stopped_run_did_not_reach_are_counted_by_the_staging_table(tmp_path: Path) -> None:
    with Database.open_sqlite(tmp_path / "s.db") as db:
        table = StagingTable(db, "staging")
        table.create_staging_table()
        table.ensure_ledger()
        for status in ("Pending", "Pending", "invalid", "Pending"):
            db.execute(
                "INSERT INTO staging (person_id, json_payload, submission_status) VALUES ('p', '{}', ?)", (status,)
            )
        assert table.count_candidates_after(0) == 3
        assert table.count_candidates_after(1) == 2
        assert table.count_candidates_after(3) == 1
        assert table.count_candidates_after(1, all_rows=True) == 3
        assert table.count_candidates_after(1, held_back=True) == 3
